"""Every chat family through verl's agent-loop managers, each with a model
and tokenizer of that family served by verl's own vLLM server actor: the
loop recognises the family from the tokenizer (by registered name, on the v1
trainer path) or takes it from the YAML (legacy path), the prompt it sends
is the one the tokenizer's own chat template renders, as verl renders
prompts for its own loops, and every sampled token's logprob verl's server
returned equals a transformers forward pass over the row's ids (confident
models, float32 on both sides)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentfly_min.integrations.verl import agentfly_record
from agentfly_min.local.verl_cluster import VerlCluster
from agentfly_min.testing import tiny_model
from agentfly_min.tools import calculator

from ..conftest import CACHE, WORK
from ..logprob_oracle import TOLERANCE, recompute
from .conftest import Row, group_keys, legacy_batch, v1_batch, wait_for_groups

pytestmark = [pytest.mark.slow]

QUESTION = "What is 2+2?"
# (tiny model family, verl's data.apply_chat_template_kwargs, our template, the server's engine arguments)
FAMILIES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("qwen3", {}, "qwen3", {}),
    ("qwen3", {"enable_thinking": False}, "qwen3-nothink", {}),
    ("qwen3-coder", {}, "qwen3-coder", {}),
    ("llama3", {}, "llama3", {}),
    ("mistral", {}, "mistral", {"tokenizer_mode": "mistral"}),
    ("qwen2.5", {}, "hf", {}),  # the bridge, named in the YAML: the model's own template, rendered by it
]


def _yaml(template: str) -> Path:
    path = WORK / f"family_{template}.yaml"
    path.write_text(
        "- name: agentfly_family\n"
        "  _target_: agentfly_min.integrations.verl.AgentflyAgentLoop\n"
        "  agent_tools: [agentfly_min.tools.calculator]\n"
        "  reward: tests.verl.rewards.answer_over_100\n"
        f"  template: {template}\n"
        "  max_turns: 2\n"
        "  max_new_tokens: 24\n"
    )
    return path


def _own_render(tokenizer: Any, options: dict[str, Any]) -> list[int]:
    """The prompt as the tokenizer's own chat template renders it, with the
    loop's tool (what verl's loops send for the same row)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        tools=[msgspec.to_builtins(calculator.schema)],
        add_generation_prompt=True,
        tokenize=True,
        **options,
    )
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


@pytest.mark.parametrize(("family", "options", "template", "engine"), FAMILIES, ids=[f[2] for f in FAMILIES])
def test_a_family_through_verls_v1_and_legacy_managers(
    stack: VerlCluster, family: str, options: dict[str, Any], template: str, engine: dict[str, Any]
) -> None:
    import transfer_queue as tq
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.workers.config.model import HFModelConfig

    model = tiny_model(CACHE, family=family, peaked=True)  # type: ignore[arg-type]
    if stack.model != str(model):
        stack.serve(model, engine_kwargs=engine)
    tokenizer = HFModelConfig(path=str(model)).tokenizer  # as verl's workers load it
    expected = _own_render(tokenizer, options)
    overrides = tuple(f"+data.apply_chat_template_kwargs.{key}={str(value).lower()}" for key, value in options.items())
    # Room for Qwen3-Coder's prompt, whose tool list is XML (874 tiny-tokenizer tokens; Llama 3's
    # JSON indented by 4 takes 703): a longer prompt is cut on the left, as verl cuts its own.
    config = stack.trainer_config(agent_loop_config_path=_yaml(template), prompt_length=896, response_length=128, overrides=overrides)
    try:
        # v1 (main_ppo's default), by registered name: the family is recognised (hf is only ever named).
        if template != "hf":
            v1 = stack.agent_loop_manager(config, v1=True, reward_workers=False)
            uids = [f"family-{template}"]
            rows: list[Row] = [("agentfly_min", QUESTION, 4)]
            v1.generate_sequences(v1_batch(rows, uids=uids))
            assert wait_for_groups(uids) == dict.fromkeys(uids, "finished")
            keys = group_keys(uids)
            data = tq.kv_batch_get(keys=keys, partition_id="train")
            tq.kv_clear(keys=[*uids, *keys], partition_id="train")
            (prompt,) = data["prompts"].unbind(0)
            (extra,) = list(data["extra_fields"])
            record = agentfly_record(getattr(extra, "data", extra))
            assert record is not None and record["failed"] is False, record
            assert prompt.tolist() == expected
            (responses,) = data["responses"].unbind(0)
            (mask,) = data["response_mask"].unbind(0)
            (logprobs,) = data["rollout_log_probs"].unbind(0)
            assert len(responses) > 0
            recomputed = recompute(model, prompt.tolist(), responses.tolist())
            worst = max(abs(a - b) for a, b, m in zip(logprobs.tolist(), recomputed, mask.tolist(), strict=True) if m)
            assert worst < TOLERANCE, worst
        # legacy, by the YAML entry that names the template (an in-process
        # AgentLoopWorker: the code its Ray actors run, without a process to start)
        worker = AgentLoopWorker(config, stack.client)
        out = asyncio.run(worker.generate_sequences(legacy_batch([("agentfly_family", QUESTION, 4)])))
        (record,) = [agentfly_record(extra) for extra in out.non_tensor_batch["extras"]]
        assert record is not None and record["failed"] is False, record
        prompt_mask = out.batch["attention_mask"][0, : out.batch["prompts"].shape[1]].bool()
        assert out.batch["prompts"][0][prompt_mask].tolist() == expected
        assert int(out.batch["response_mask"][0].sum()) > 0
    finally:
        stack.drop_managers()
