"""Agents verl never imports, written on the openai SDK, that the gateway
loop runs in verl's Ray agent-loop workers (by import path)."""

from __future__ import annotations

from typing import Any

import msgspec
import openai

from agentfly_min.agent import Task
from agentfly_min.tools import calculator

TOOLS = [msgspec.to_builtins(calculator.schema)]


async def sdk_agent(base_url: str, task: Task) -> None:
    """A plain tool-calling agent: at most two model turns."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        messages: list[Any] = list(task["messages"])
        for _ in range(2):
            answer = await client.chat.completions.create(model="policy", messages=messages, tools=TOOLS, max_tokens=48)
            message = answer.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                return
            for call in message.tool_calls:
                assert call.type == "function"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": await calculator.call(call.function.arguments)})


async def rewriting_agent(base_url: str, task: Task) -> None:
    """Asks, then asks again over a rewritten history (its first exchange
    replaced by a summary): two token-exact segments."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        question = task["messages"][-1]["content"]
        first = await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": question}], max_tokens=16)
        summary = f"Earlier you said: {(first.choices[0].message.content or '')[:40]!r}. {question}"
        await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": summary}], max_tokens=16)
