"""Request options as vLLM's ``SamplingParams`` takes them (in process and
under verl, whose server builds ``SamplingParams`` from a dict)."""

from __future__ import annotations

from typing import Any

from ..records import Request

__all__ = ["vllm_options"]


def extra_sampling(request: Request) -> dict[str, Any]:
    """The penalties and cut-offs a request sets; unset ones are left to
    vLLM's defaults."""
    given = {
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "repetition_penalty": request.repetition_penalty,
    }
    return {name: value for name, value in given.items() if value is not None}


def vllm_options(request: Request) -> dict[str, Any]:
    """What a request sets beyond temperature, top_p, the token budget and
    logprobs (which the transports settle each their own way), as vLLM's
    ``SamplingParams`` names them; unset ones are left out."""
    options: dict[str, Any] = {}
    if request.stop:
        options["stop"] = list(request.stop)
    if request.seed is not None:
        options["seed"] = request.seed
    if request.ignore_eos:
        options["ignore_eos"] = True
    if request.logit_bias:
        options["logit_bias"] = dict(request.logit_bias)
    options.update(extra_sampling(request))
    structured = structured_outputs(request)
    if structured is not None:
        options["structured_outputs"] = structured
    return options


def structured_outputs(request: Request) -> Any:
    """vLLM's ``StructuredOutputsParams`` for a regex or a JSON
    ``response_format`` (already checked when the request was built), or
    None when the output is free."""
    fields: dict[str, Any]
    if request.regex is not None:
        fields = {"regex": request.regex}
    elif request.response_format is None or request.response_format["type"] == "text":
        return None
    elif request.response_format["type"] == "json_object":
        fields = {"json_object": True}
    else:
        fields = {"json": request.response_format["json_schema"]["schema"]}
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**fields)
