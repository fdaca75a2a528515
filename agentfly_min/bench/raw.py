"""The raw counterparts: the same workload turn, straight to the engine or
client, with none of agentfly_min in between. The bench command runs each
next to ours and reports the ratio."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..transports.vllm import VLLMEngine
from .workload import Conversation, Step

__all__ = ["vllm_raw_step", "openai_raw_step", "openai_token_raw_step", "verl_raw_step"]


def vllm_raw_step(engine: VLLMEngine) -> Step:
    """``AsyncLLM.generate`` called directly; run it on the engine's own loop."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def step(conversation: Conversation, new_tokens: int) -> int:
        params = SamplingParams(
            max_tokens=new_tokens, temperature=1.0, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        request_id = f"{conversation.session}-raw-{time.monotonic_ns()}"
        async for output in engine.engine.generate(TokensPrompt(prompt_token_ids=list(conversation.ids)), params, request_id):
            final = output
        assert final is not None
        choice = final.outputs[0]
        conversation.sampled(list(choice.token_ids), choice.text)
        return len(choice.token_ids)

    return step


def openai_raw_step(client: Any, model: str) -> Step:
    """``openai.AsyncOpenAI.chat.completions.create`` called directly."""

    async def step(conversation: Conversation, new_tokens: int) -> int:
        response = await client.chat.completions.create(
            model=model,
            messages=msgspec.to_builtins(conversation.messages),
            max_tokens=new_tokens,
            temperature=1.0,
            extra_body={"ignore_eos": True},
        )
        text = response.choices[0].message.content or ""
        conversation.sampled([], text)
        return int(response.usage.completion_tokens)

    return step


def openai_token_raw_step(client: Any, model: str, session_header: str = "x-session-id") -> Step:
    """``openai.AsyncOpenAI.completions.create`` with the conversation's ids
    as the prompt and vLLM's ``return_token_ids``, called directly, the
    session in the header a sticky router reads."""

    async def step(conversation: Conversation, new_tokens: int) -> int:
        response = await client.completions.create(
            model=model,
            prompt=list(conversation.ids),
            max_tokens=new_tokens,
            temperature=1.0,
            # No logprobs: ours asks for none in this workload, and the server
            # must do the same work for both sides.
            extra_body={"ignore_eos": True, "return_token_ids": True},
            extra_headers={session_header: conversation.session},
        )
        choice = response.choices[0]
        ids = list(getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids") or [])
        conversation.sampled(ids, choice.text)
        return len(ids)

    return step


def verl_raw_step(client: Any, tokenizer: Any) -> Step:
    """verl's ``LLMServerClient.generate`` called directly."""

    async def step(conversation: Conversation, new_tokens: int) -> int:
        output = await client.generate(
            conversation.session,
            prompt_ids=list(conversation.ids),
            sampling_params={"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": new_tokens, "logprobs": True, "ignore_eos": True},
        )
        conversation.sampled(list(output.token_ids), tokenizer.decode(output.token_ids, skip_special_tokens=True))
        return len(output.token_ids)

    return step
