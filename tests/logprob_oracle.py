"""The third oracle: a forward pass by transformers.

Every sampled token's logprob, as the engine reported it, against
transformers' log-softmax over ``prompt_ids + response_ids`` up to that
token, in float32. On a confident model (``tiny_model(peaked=True)``) a
token off by one position, a spliced id where a sampled one should be, or a
logprob of another token shows at once; engines run the model in float32
for this, so the two agree to about 1e-6.

Turns held to a grammar (a regex, structured outputs) are not comparable:
vLLM applies the grammar's mask to the logits before it takes logprobs in
every logprobs mode, so their logprobs are of the constrained distribution.
The tests force a first turn that way and compare the turns sampled freely.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

TOLERANCE = 1e-4


@cache
def _model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def recompute(path: Path | str, prompt_ids: list[int] | tuple[int, ...], response_ids: list[int] | tuple[int, ...]) -> list[float]:
    """transformers' logprob of each response token given all before it."""
    import torch

    ids = torch.tensor([[*prompt_ids, *response_ids]])
    with torch.no_grad():
        logits = _model(str(path))(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(list(response_ids)).unsqueeze(-1)).squeeze(-1)
    return [float(x) for x in picked]


def worst_difference(path: Path | str, trajectory: Any, *, last: int | None = None) -> float:
    """The largest |engine logprob - transformers logprob| over the
    trajectory's sampled tokens (mask 1), or over its ``last`` response
    tokens (a turn sampled freely)."""
    assert trajectory.response_logprobs is not None, "the transport returned no logprobs"
    ours = recompute(path, trajectory.prompt_ids, trajectory.response_ids)
    start = 0 if last is None else len(trajectory.response_ids) - last
    rows = list(zip(trajectory.response_logprobs, ours, trajectory.response_mask, strict=True))[start:]
    assert any(m for _, _, m in rows), "no sampled token to compare"
    return float(max(abs(a - b) for a, b, m in rows if m))
