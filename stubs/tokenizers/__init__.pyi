# Partial stub: covers only what agentfly_min calls (training a tiny BPE tokenizer).
from collections.abc import Iterable, Sequence

from . import decoders as decoders
from . import models as models
from . import pre_tokenizers as pre_tokenizers
from . import trainers as trainers

class AddedToken:
    def __init__(
        self, content: str, single_word: bool = ..., lstrip: bool = ..., rstrip: bool = ..., normalized: bool = ..., special: bool = ...
    ) -> None: ...

class Tokenizer:
    pre_tokenizer: pre_tokenizers.PreTokenizer
    decoder: decoders.Decoder
    def __init__(self, model: models.Model) -> None: ...
    def train_from_iterator(self, iterator: Iterable[str], trainer: trainers.Trainer | None = ..., length: int | None = ...) -> None: ...
    def add_tokens(self, tokens: Sequence[str | AddedToken]) -> int: ...
