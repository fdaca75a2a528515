"""Tiny models with random weights, built offline, one per chat family.

:func:`tiny_model` trains a byte-level BPE tokenizer on generated text with
the family's special tokens and upstream chat template (tool calls included), builds
a model of that family's architecture with about 0.8 M parameters and random
bfloat16 weights (``Qwen2ForCausalLM`` for ``"qwen2.5"``,
``Qwen3ForCausalLM`` for ``"qwen3"`` and ``"qwen3-coder"``, ``LlamaForCausalLM`` for
``"llama3"``; for ``"mistral"``, Mistral's real Tekken tokenizer from
``mistral_common`` and a ``MistralForCausalLM``; for ``"gpt-oss"`` a
``LlamaForCausalLM`` over the harmony encoding's ids, with no tokenizer
file), and saves both in the layout vLLM and transformers load from
a path. It is deterministic for a seed and cached: the second call returns
at once.

The weights are random: it measures transports and tests token plumbing, not
model quality. Anything that takes a model path takes a real one instead,
e.g. a downloaded ``Qwen/Qwen2.5-0.5B-Instruct`` folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple, TypeAlias

__all__ = ["tiny_model", "default_cache_dir", "SPECIAL_TOKENS", "TOOL_TOKENS", "FAMILIES", "Family"]

_VERSION = 2  # bump when the recipe changes, so old caches are not reused
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOOL_TOKENS = ("<tool_call>", "</tool_call>")
_VOCAB = 1024
_PEAK = 6.0

Family: TypeAlias = Literal["qwen2.5", "qwen3", "qwen3-coder", "llama3", "mistral", "gpt-oss"]


class _Recipe(NamedTuple):
    folder: str  # the cache folder's name stem
    special: tuple[str, ...]  # special tokens (skipped when decoding)
    added: tuple[str, ...]  # added, non-special tokens (kept when decoding, as the families do)
    eos: str
    stops: tuple[str, ...]  # every token that ends generation
    pad: str
    bos: str | None
    architecture: str


_RECIPES: dict[str, _Recipe] = {
    # Qwen's instruct models stop on <|im_end|> and <|endoftext|> (their generation_config).
    "qwen2.5": _Recipe(
        "tiny-qwen2", SPECIAL_TOKENS, TOOL_TOKENS, "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), "<|endoftext|>", None, "qwen2"
    ),
    "qwen3": _Recipe(
        "tiny-qwen3",
        SPECIAL_TOKENS,
        (*TOOL_TOKENS, "<think>", "</think>", "<tool_response>", "</tool_response>"),
        "<|im_end|>",
        ("<|im_end|>", "<|endoftext|>"),
        "<|endoftext|>",
        None,
        "qwen3",
    ),
    "qwen3-coder": _Recipe(
        "tiny-qwen3-coder",
        SPECIAL_TOKENS,
        (*TOOL_TOKENS, "<think>", "</think>", "<tool_response>", "</tool_response>"),
        "<|im_end|>",
        ("<|im_end|>", "<|endoftext|>"),
        "<|endoftext|>",
        None,
        "qwen3",
    ),
    "llama3": _Recipe(
        "tiny-llama3",
        (
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
        ),
        (),
        "<|eot_id|>",
        ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        "<|finetune_right_pad_id|>",
        "<|begin_of_text|>",
        "llama",
    ),  # fmt: skip
}
FAMILIES: tuple[str, ...] = (*_RECIPES, "mistral", "gpt-oss")


def _build_gpt_oss(folder: Path, seed: int) -> None:
    """A tiny ``LlamaForCausalLM`` over the ids of gpt-oss's harmony
    encoding (``openai-harmony``); there is no tokenizer file: vLLM runs it
    with ``skip_tokenizer_init`` and the gpt-oss template encodes and reads
    every turn with the harmony encoding."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from ..templates.harmony import encoding

    enc = encoding()
    stops = list(enc.stop_tokens_for_assistant_actions())  # <|return|> and <|call|>
    pad = enc.encode("<|endoftext|>", allowed_special="all")[0]
    config = LlamaConfig(
        vocab_size=201088, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=pad, eos_token_id=stops, pad_token_id=pad, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).bfloat16().save_pretrained(str(folder), safe_serialization=True)  # type: ignore[no-untyped-call]
    GenerationConfig(eos_token_id=stops, bos_token_id=pad, pad_token_id=pad).save_pretrained(str(folder))  # type: ignore[no-untyped-call]


def _build_mistral(folder: Path, seed: int) -> None:
    """Mistral's real Tekken tokenizer (shipped with ``mistral_common``) and
    a tiny ``MistralForCausalLM`` over its 131,072 ids; vLLM loads it with
    ``tokenizer_mode="mistral"``."""
    import mistral_common
    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json", folder / "tekken.json")
    config = MistralConfig(
        vocab_size=131072, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True, sliding_window=None,
        bos_token_id=1, eos_token_id=2, pad_token_id=11, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(seed)
    MistralForCausalLM(config).bfloat16().save_pretrained(str(folder), safe_serialization=True)  # type: ignore[no-untyped-call]
    GenerationConfig(eos_token_id=2, bos_token_id=1, pad_token_id=11).save_pretrained(str(folder))  # type: ignore[no-untyped-call]


def default_cache_dir() -> Path:
    """``$AGENTFLY_MIN_CACHE``, else ``~/.cache/agentfly_min``."""
    env = os.environ.get("AGENTFLY_MIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "agentfly_min"


def _chat_template(family: str) -> str:
    """The family's upstream chat template (templates/upstream, with its
    provenance), so a test comparing with the tokenizer's own template
    compares with what the real models carry."""
    from ..templates.qwen25 import CHAT_TEMPLATE as QWEN25
    from ..templates.select import upstream_template

    files = {"qwen3": "qwen3.jinja", "qwen3-coder": "qwen3-coder.jinja", "llama3": "llama3.3.jinja"}
    return upstream_template(files[family]) if family in files else QWEN25


def _corpus(rng: random.Random) -> Iterator[str]:
    from ..templates.qwen25 import DEFAULT_SYSTEM

    words = (
        "the a an of to and in is was for on that with as by it at from this be are or answer question "
        "number sum product result tool call function arguments expression calculator compute what how many "
        "total each then so we get first second step final boxed user assistant system response error"
    ).split()
    yield DEFAULT_SYSTEM
    yield "# Tools\n\nYou may call one or more functions to assist with the user query."
    for _ in range(4000):
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randrange(1000), rng.randrange(1000)
            op = rng.choice("+-*/")
            yield f"What is {a} {op} {b}? The answer is \\boxed{{{a}}}."
        elif kind == 1:
            expr = f"{rng.randrange(100)} {rng.choice('+-*/')} {rng.randrange(100)}"
            yield f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}\n</tool_call>'
        elif kind == 2:
            yield " ".join(rng.choice(words) for _ in range(rng.randrange(3, 15)))
        else:
            yield f"<tool_response>\n{rng.randrange(100000)}\n</tool_response>"


def _build_tokenizer(folder: Path, rng: random.Random, family: str) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    recipe = _RECIPES[family]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB,
        special_tokens=list(recipe.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(_corpus(rng)), trainer)
    # As in Qwen: the tool-call and think tags are added tokens but not
    # special ones, so decoding with skip_special_tokens keeps them.
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in recipe.added])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        eos_token=recipe.eos,
        pad_token=recipe.pad,
        bos_token=recipe.bos,
        chat_template=_chat_template(family),
        model_max_length=32768,
    )
    tokenizer.save_pretrained(str(folder))
    # transformers 5 records "TokenizersBackend", which older loaders and
    # vLLM's tokenizer registry do not know; the fast class loads everywhere.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))
    size: int = len(tokenizer)
    return size


def _build_model(folder: Path, family: str, vocab_size: int, seed: int, stop_ids: list[int], pad_id: int, bos_id: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config, Qwen3Config

    classes = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}
    eos_id = stop_ids[0]
    config = classes[_RECIPES[family].architecture](
        vocab_size=vocab_size,
        hidden_size=128,  # head_dim 32: vLLM's CPU attention needs >= 32
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        head_dim=32,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model = model.bfloat16()
    model.save_pretrained(str(folder), safe_serialization=True)
    # Every token that ends a turn stops generation (Llama 3: eot and eom).
    eos: int | list[int] = stop_ids if len(stop_ids) > 1 else eos_id
    generation = GenerationConfig(eos_token_id=eos, pad_token_id=pad_id, bos_token_id=bos_id)  # type: ignore[no-untyped-call]
    generation.save_pretrained(str(folder))


def _build_family(folder: Path, family: str, seed: int) -> None:
    from transformers import AutoTokenizer

    recipe = _RECIPES[family]
    vocab = _build_tokenizer(folder, random.Random(seed), family)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(found, int), token
        return found

    stop_ids = [token_id(t) for t in recipe.stops]
    _build_model(folder, family, vocab, seed, stop_ids, token_id(recipe.pad), token_id(recipe.bos or recipe.eos))


def _peak(folder: Path) -> None:
    """Scale the final norm so the model is confident: random weights give a
    near-uniform next-token distribution (entropy ln 1024 = 6.9 nats), where
    a token shifted by one position has about the same logprob as the right
    one. Scaled by 6 (the tiny Qwen2.5 model, a chat prompt, temperature 1),
    sampled tokens' logprobs average -1.6 and reach -9.8, and six samples of
    24 tokens all differ; scaled by 8 it repeats one token, which leaves a
    GRPO group nothing to tell apart."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    weights["model.norm.weight"] = weights["model.norm.weight"] * _PEAK
    save_file(weights, str(path), metadata={"format": "pt"})


def tiny_model(
    cache_dir: Path | str | None = None, *, seed: int = 0, family: Family = "qwen2.5", peaked: bool = False
) -> Path:
    """Build (once) and return the folder of a tiny random model of
    ``family`` with that family's special tokens and chat template.
    ``peaked`` makes its next-token distributions confident (see
    :func:`_peak`), for tests that compare logprobs. ``cache_dir``
    defaults to :func:`default_cache_dir`. Needs ``torch``,
    ``transformers`` and ``tokenizers`` (the ``vllm`` extra has them); no
    network."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = f"tiny-{family}" if family in ("mistral", "gpt-oss") else _RECIPES[family].folder
    folder = root / f"{stem}-v{_VERSION}-seed{seed}{'-peaked' if peaked else ''}"
    if (folder / "config.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        if family == "mistral":
            _build_mistral(staging, seed)
        elif family == "gpt-oss":
            _build_gpt_oss(staging, seed)
        else:
            _build_family(staging, family, seed)
        if peaked:
            _peak(staging)
        try:
            staging.rename(folder)  # atomic: a half-built folder is never seen
        except OSError:
            if not (folder / "config.json").exists():  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
