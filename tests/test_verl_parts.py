"""The verl transport's abort, version and error handling against a scripted
verl client, and the conversion to verl's AgentLoopOutput. The real stack
(Ray, verl's server actor, its trainer path) is in test_verl.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentfly_min import (
    AsyncVerlConfig,
    ConfigError,
    ContextLengthError,
    Generate,
    Message,
    PermanentError,
    Request,
    TransientError,
    TransportClosedError,
    Trajectory,
)
from agentfly_min.transports._bridge import AsyncioThread
from agentfly_min.transports.verl import open_verl, verl_generate

pytestmark = pytest.mark.anyio

EOS = 2


@dataclass
class Answer:
    token_ids: list[int]
    stop_reason: str | None = "completed"
    global_steps: int | None = 1
    log_probs: list[float] | None = None
    extra_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.log_probs is None:
            self.log_probs = [-0.5] * len(self.token_ids)
        if self.global_steps is not None:
            self.extra_fields["global_steps"] = self.global_steps


class ScriptedVerl:
    """verl's client as a script: each call takes the next answer (or raises
    the next exception) and records what it was sent."""

    def __init__(self, script: Sequence[Answer | Exception]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, list[int], dict[str, Any]]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]) -> Answer:
        self.calls.append((request_id, list(prompt_ids), dict(sampling_params)))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class Tok:
    eos_token_id: int | None = EOS

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool) -> str:
        return " ".join(map(str, token_ids))

    def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> Any:
        return [1, 2, 3]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


REQUEST = Request(prompt_ids=(7, 8), max_new_tokens=8, request_id="session-1")


Bridge = Callable[[], AsyncioThread]


@pytest.fixture(scope="module")
def bridge() -> Iterator[Callable[[], AsyncioThread]]:
    """The asyncio thread a trio caller hops to (verl's client lives on asyncio)."""
    thread = AsyncioThread("test-verl")
    yield lambda: thread
    thread.stop()


def scripted(config: AsyncVerlConfig, server: ScriptedVerl, bridge: Bridge, **options: Any) -> Generate:
    return verl_generate(config, server, Tok(), asyncio_thread=bridge, **options)


@pytest.mark.parametrize("word", ["aborted", "abort"])  # vLLM's server, SGLang's server
async def test_aborts_back_off_and_resume_with_per_token_versions(word: str, bridge: Bridge) -> None:
    server = ScriptedVerl([Answer([10, 11], word, 3), Answer([], word, 3), Answer([12], word, 4), Answer([13, EOS], "completed", 4)])
    sleeps = Sleeps()
    config = AsyncVerlConfig(abort_backoff=0.5, abort_backoff_max=1.5)
    generate = scripted(config, server, bridge, sleep=sleeps, random=lambda: 0.0)
    completion = await generate(REQUEST)
    (output,) = completion.outputs
    assert output.token_ids == (10, 11, 12, 13, EOS) and output.finish_reason == "stop"
    assert output.weight_versions == (3, 3, 4, 4, 4)
    assert completion.weight_version == 4
    assert sleeps.delays == [0.5, 1.0, 1.5]  # doubling, capped
    # Each resend carries the tokens so far and asks only for what is left, in one session.
    assert [(rid, prompt, params["max_tokens"]) for rid, prompt, params in server.calls] == [
        ("session-1", [7, 8], 8),
        ("session-1", [7, 8, 10, 11], 6),
        ("session-1", [7, 8, 10, 11], 6),
        ("session-1", [7, 8, 10, 11, 12], 5),
    ]


async def test_backoff_has_jitter_of_at_most_a_quarter(bridge: Bridge) -> None:
    server = ScriptedVerl([Answer([], "aborted"), Answer([5])])
    sleeps = Sleeps()
    generate = scripted(AsyncVerlConfig(abort_backoff=2.0), server, bridge, sleep=sleeps, random=lambda: 0.999)
    await generate(REQUEST)
    assert sleeps.delays == [pytest.approx(2.0 * (1 - 0.25 * 0.999))]


async def test_retry_drops_the_old_weights_tokens(bridge: Bridge) -> None:
    server = ScriptedVerl([Answer([10, 11], "aborted", 3), Answer([20, EOS], "completed", 4)])
    generate = scripted(AsyncVerlConfig(on_abort="retry"), server, bridge, sleep=Sleeps())
    (output,) = (await generate(REQUEST)).outputs
    assert output.token_ids == (20, EOS) and output.weight_versions == (4, 4)
    assert server.calls[1][1] == [7, 8]  # started again from the prompt


async def test_too_many_aborts_is_a_transient_error(bridge: Bridge) -> None:
    server = ScriptedVerl([Answer([], "aborted")] * 3)
    generate = scripted(AsyncVerlConfig(max_aborts=2), server, bridge, sleep=Sleeps())
    with pytest.raises(TransientError, match="aborted the request 3 time"):
        await generate(REQUEST)


async def test_logprobs_only_when_asked_and_versions_only_when_known(bridge: Bridge) -> None:
    server = ScriptedVerl([Answer([5, 6], global_steps=None), Answer([5, 6])])
    generate = scripted(AsyncVerlConfig(logprobs=False), server, bridge, sleep=Sleeps())
    (output,) = (await generate(REQUEST)).outputs
    assert output.logprobs is None and output.weight_versions is None
    (output,) = (await generate(Request(prompt_ids=(7,), logprobs=True))).outputs
    assert output.logprobs == (-0.5, -0.5) and output.weight_versions == (1, 1)
    assert server.calls[1][2]["logprobs"] is True and server.calls[0][2]["logprobs"] is False


async def test_a_cut_at_the_context_is_length_though_verl_says_completed(bridge: Bridge) -> None:
    """verl's vLLM server clamps max_tokens to the context left and reports
    the cut as "completed", as it reports a stop (vllm_async_server.py maps
    vLLM's "length" and "stop" both to "completed"); the real server's reply
    is in test_verl.py. Knowing the context, the transport reads the cut."""
    clamped = [Answer([5, 6, 7], "completed"), Answer([5, 6, 7], "completed"), Answer([5, 6, EOS], "completed")]
    server = ScriptedVerl(clamped)
    prompt = Request(prompt_ids=(7, 8), max_new_tokens=8)  # 2 + 3 = 5 tokens fill a context of 5
    (output,) = (await scripted(AsyncVerlConfig(max_model_len=5), server, bridge)(prompt)).outputs
    assert output.finish_reason == "length" and len(output.token_ids or ()) < 8
    (unknown,) = (await scripted(AsyncVerlConfig(), server, bridge)(prompt)).outputs
    assert unknown.finish_reason == "stop"  # without the context, a clamp looks like a stop
    (ended,) = (await scripted(AsyncVerlConfig(max_model_len=5), server, bridge)(prompt)).outputs
    assert ended.finish_reason == "stop"  # the end-of-turn token at the boundary is a stop


async def test_a_fully_async_clients_version_range_is_kept_not_flattened(bridge: Bridge) -> None:
    """verl's FullyAsyncLLMServerClient resumes an aborted request itself and
    reports min_global_steps / max_global_steps for the whole answer (its
    global_steps is the last one's): the tokens' versions are a range whose
    split is unknown, not the newest version on every token."""
    resumed = Answer([10, 11, 12, EOS], "completed", 7, extra_fields={"min_global_steps": 6, "max_global_steps": 7})
    same = Answer([20, EOS], "completed", 7, extra_fields={"min_global_steps": 7, "max_global_steps": 7})
    generate = scripted(AsyncVerlConfig(), ScriptedVerl([resumed, same]), bridge)
    completion = await generate(REQUEST)
    assert completion.outputs[0].weight_versions is None
    assert (completion.min_weight_version, completion.weight_version) == (6, 7)
    completion = await generate(REQUEST)
    assert completion.outputs[0].weight_versions == (7, 7)
    assert (completion.min_weight_version, completion.weight_version) == (7, 7)


async def test_the_prompt_is_the_requests_own_or_the_rendered_one_checked(bridge: Bridge) -> None:
    """A request's prompt ids were checked when it was built: the completion
    carries that tuple, not a copy checked again on every turn. Ids rendered
    from messages are the tokenizer's, and a record checks those."""
    server = ScriptedVerl([Answer([5]), Answer([5]), Answer([5])])
    generate = scripted(AsyncVerlConfig(), server, bridge)
    completion = await generate(REQUEST)
    assert completion.prompt_ids is REQUEST.prompt_ids
    rendered = await generate(Request(messages=(Message(role="user", content="hi"),)))
    assert rendered.prompt_ids == (1, 2, 3) and rendered.usage.prompt_tokens == 3

    class BadTok(Tok):
        def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> Any:
            return [1, "2"]

    bad = verl_generate(AsyncVerlConfig(), server, BadTok(), asyncio_thread=bridge)
    with pytest.raises(ConfigError, match="Completion.prompt_ids"):
        await bad(Request(messages=(Message(role="user", content="hi"),)))


def _ray_task_error(cause: Exception) -> Exception:
    from ray.exceptions import RayTaskError

    coloured = f"\x1b[36mray::vLLMHttpServer.generate()\x1b[39m (pid=1)\n  File \"x.py\", line 3\n{type(cause).__name__}: {cause}"
    wrapped: Exception = RayTaskError("generate", coloured, cause).as_instanceof_cause()  # type: ignore[no-untyped-call]
    return wrapped


async def test_server_refusals_are_typed_one_line_errors(bridge: Bridge) -> None:
    from ray.exceptions import ActorDiedError

    cases: list[tuple[Exception, type[Exception], str]] = [
        (_ray_task_error(ValueError("Prompt length (2000) leaves no room to generate")), ContextLengthError, "leaves no room"),
        (_ray_task_error(ValueError("token id 99999 out of vocabulary")), PermanentError, "out of vocabulary"),
        (_ray_task_error(AssertionError("max_tokens 0 not in valid range")), PermanentError, "not in valid range"),
        (ActorDiedError(), TransientError, "actor died"),
    ]
    for raised, expected, text in cases:
        generate = scripted(AsyncVerlConfig(), ScriptedVerl([raised]), bridge)
        with pytest.raises(expected, match=text) as info:
            await generate(REQUEST)
        message = str(info.value)
        assert "\n" not in message and "\x1b" not in message, message


async def test_a_closed_transport_says_so() -> None:
    async with open_verl(AsyncVerlConfig(), ScriptedVerl([Answer([5])]), Tok()) as generate:
        await generate(REQUEST)
    with pytest.raises(TransportClosedError, match="after its `open_verl` block"):
        await generate(REQUEST)


async def test_trio_callers_are_bridged_and_get_the_same_answers() -> None:
    server = ScriptedVerl([Answer([5, 6, EOS])] * 3)
    async with open_verl(AsyncVerlConfig(), server, Tok()) as generate:
        completion = await generate(Request(prompt_ids=(1,), n=3, max_new_tokens=4))
    assert [o.token_ids for o in completion.outputs] == [(5, 6, EOS)] * 3


# --- verl's AgentLoopOutput ------------------------------------------------------


def _trajectory(**fields: Any) -> Trajectory:
    base: dict[str, Any] = dict(
        task_id="t",
        group_id="t",
        request_id="r",
        messages=(Message(role="user", content="q"),),
        finish_reason="answer",
        num_turns=3,
        tool_rounds=2,
        token_level=True,
        prompt_ids=(1, 2, 3),
        response_ids=(10, 11, 90, 91, 12, 92, 13),
        response_mask=(1, 1, 0, 0, 1, 0, 1),
        response_logprobs=(-0.1, -0.2, 0.0, 0.0, -0.3, 0.0, -0.4),
        response_versions=(4, 4, -1, -1, 5, -1, 5),
        weight_versions=(4, 5, 5),
        reward=1.0,
    )
    base.update(fields)
    return Trajectory(**base)


def test_output_counts_turns_like_verl_and_keeps_versions() -> None:
    from agentfly_min.integrations.verl import agentfly_record, to_agent_loop_output

    out = to_agent_loop_output(_trajectory(), response_length=100, logprobs=True)
    assert out.num_turns == 1 + 3 + 2  # the prompt, three model turns, two rounds of tool results
    assert out.response_logprobs == [-0.1, -0.2, 0.0, 0.0, -0.3, 0.0, -0.4]
    assert out.extra_fields["min_global_steps"] == 4 and out.extra_fields["max_global_steps"] == 5
    record = agentfly_record(out.extra_fields)
    assert record is not None and record["token_versions"] == [4, 4, -1, -1, 5, -1, 5]
    assert record["failed"] is False and out.reward_score == 1.0
    cut = to_agent_loop_output(_trajectory(), response_length=3, logprobs=False)
    assert cut.response_ids == [10, 11, 90] and cut.response_mask == [1, 1, 0] and cut.response_logprobs is None
    assert cut.extra_fields["min_global_steps"] == cut.extra_fields["max_global_steps"] == 4  # only tokens kept count
    # Known only as a range (verl's fully-async client): the range, not the newest on every token.
    ranged = to_agent_loop_output(_trajectory(response_versions=None, min_weight_version=3), response_length=100, logprobs=True)
    assert (ranged.extra_fields["min_global_steps"], ranged.extra_fields["max_global_steps"]) == (3, 5)


def test_our_rows_add_no_column_verls_rows_lack() -> None:
    """verl's legacy _postprocess makes a column of every extra_fields key in
    a chunk and DataProto.concat asserts the chunks' columns agree: a key
    only our rows have breaks a batch whose chunks mix rows differently. Our
    record rides in `extras`, a key verl gives every row, and our rows carry
    the keys of the server's answers."""
    from agentfly_min.integrations.verl import to_agent_loop_output

    server = {"global_steps": 5, "num_cached_tokens": 0, "min_global_steps": 5, "max_global_steps": 5}
    out = to_agent_loop_output(_trajectory(), response_length=100, logprobs=True, server_fields=server)
    verls_row_keys = {*server, "turn_scores", "tool_rewards"}  # single_turn_agent: the server's fields and these
    verls_default_keys = {"turn_scores", "tool_rewards", "min_global_steps", "max_global_steps", "extras"}  # _postprocess
    assert set(out.extra_fields) <= verls_row_keys | verls_default_keys
    assert set(out.extra_fields) >= verls_row_keys
    unsent = to_agent_loop_output(_trajectory(error="ConfigError: x"), response_length=100, logprobs=True)
    assert set(unsent.extra_fields) >= verls_row_keys  # no answer came back: the keys are still there
    scored = to_agent_loop_output(_trajectory(), response_length=100, logprobs=True, reward_extra_info=True)
    assert scored.extra_fields["reward_extra_info"] == {"acc": 1.0}  # verl's naive manager for a float score


def test_a_failed_episode_keeps_its_prompt_trains_nothing_and_says_why() -> None:
    from agentfly_min.integrations.verl import agentfly_record, to_agent_loop_output

    remote = "TransientError: verl aborted\x1b[31m\n  File 'a.py', line 1\n  File 'b.py', line 2\nRayTaskError: boom\x1b[0m"
    failed = _trajectory(error=remote, reward=None, finish_reason="error")
    out = to_agent_loop_output(failed, response_length=100, logprobs=True)
    # An empty response: verl counts it in response/aborted_ratio and keeps it
    # out of its score and length metrics; no token of it trains.
    assert out.prompt_ids == [1, 2, 3] and out.response_ids == [] and out.response_mask == []
    assert out.response_logprobs == []
    assert out.reward_score == 0.0  # keeps the batch's rm_scores
    record = agentfly_record(out.extra_fields)
    assert record is not None and record["failed"] is True and record["response_tokens"] == 7
    error = record["error"]
    assert error.startswith("TransientError: verl aborted") and error.endswith("RayTaskError: boom")
    assert "\n" not in error and "\x1b" not in error
    # With verl's reward manager scoring (no reward of ours), the score is left to it.
    assert to_agent_loop_output(failed, response_length=100, logprobs=False, owns_reward=False).reward_score is None
    raising = to_agent_loop_output(_trajectory(reward=None, reward_error="KeyError: 'answer'"), response_length=100, logprobs=True)
    assert (agentfly_record(raising.extra_fields) or {})["failed"] is True and raising.response_mask == []
    missing = to_agent_loop_output(_trajectory(response_logprobs=None), response_length=100, logprobs=True)
    assert "no logprobs" in (agentfly_record(missing.extra_fields) or {})["error"]


def test_masked_failed_rows_stay_out_of_their_groups_statistics() -> None:
    """Three correct rows and one failed, masked row in one GRPO group. verl's
    own GRPO counts the failed row's 0 in the group's mean and std (+0.5 to
    each correct row); verl's compute_advantage with agentfly_grpo gives the
    correct rows what verl's GRPO gives them without the failed row (0)."""
    import numpy as np
    import torch
    from verl.protocol import DataProto
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import agentfly_min.integrations.verl  # noqa: F401 - registers agentfly_grpo with verl

    def batch(rows: int) -> Any:
        mask = torch.ones(rows, 4, dtype=torch.int64)
        rewards = torch.zeros(rows, 4)
        rewards[:3, 3] = 1.0
        if rows == 4:
            mask[3] = 0  # the failed row: nothing of it trains
        return DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": mask},
            non_tensors={"uid": np.array(["g"] * rows, dtype=object)},
        )

    alone = compute_grpo_outcome_advantage(batch(3).batch["token_level_rewards"], batch(3).batch["response_mask"], batch(3).non_tensor_batch["uid"])[0]
    plain = compute_advantage(batch(4), adv_estimator="grpo").batch["advantages"]
    ours = compute_advantage(batch(4), adv_estimator="agentfly_grpo").batch["advantages"]
    assert plain[:3, 3].tolist() == pytest.approx([0.5] * 3, abs=1e-4)  # the bias
    assert torch.equal(ours[:3], alone) and bool((ours[3] == 0).all())


async def test_a_full_context_ends_the_episode_with_context(bridge: Bridge) -> None:
    """Through the agent loop: an engine whose context is full ends the
    episode with "context", not an error."""
    from agentfly_min import Agent, run_agent

    server = ScriptedVerl([_ray_task_error(ValueError("Prompt length (900) leaves no room to generate"))])
    agent = Agent(model_name_or_path="m", backend="async_verl")
    async with open_verl(AsyncVerlConfig(), server, Tok()) as generate:
        trajectory = await run_agent(agent, generate, {"question": "q"})
    assert trajectory.finish_reason == "context" and trajectory.error is None



@pytest.mark.parametrize("deep", [False, True])
def test_rays_sockets_fit_however_deep_the_checkout(tmp_path: Path, deep: bool) -> None:
    """A clone a few dozen characters deep made ray.init refuse its
    plasma_store socket (AF_UNIX paths stop at 107 bytes). Ray's own check
    judges the longest socket path it would make: the work dir is kept
    exactly when that path fits there."""
    from ray._private.utils import validate_socket_filepath

    from agentfly_min.local.verl_cluster import _ray_temp_dir

    base = tmp_path / ("d" * 60) if deep else Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    work = base / "work"
    session = "session_2026-12-01_23-50-02_123456_4194304/sockets/plasma_store.99"
    chosen, owned = _ray_temp_dir(work)
    try:
        validate_socket_filepath(str(chosen / session))  # raises OSError when too long
        assert chosen.is_dir()
        try:
            validate_socket_filepath(str(work.resolve() / "ray" / session))
            fits = True
        except OSError:
            fits = False
        assert owned == (not fits)
        assert owned == deep
        assert (chosen == work.resolve() / "ray") == fits
    finally:
        if owned:
            chosen.rmdir()
        if not deep:
            shutil.rmtree(base)


def test_a_cluster_gives_back_the_environment_it_changed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """VerlCluster sets TMPDIR, VLLM_HOST_IP, HF_HUB_OFFLINE (and more) for
    Ray and verl's server; closing it, even after a failed start, restores
    them: the caller's process keeps its own temp dir and hub settings."""
    import ray

    from agentfly_min.local.verl_cluster import VerlCluster

    monkeypatch.setenv("TMPDIR", "/callers/own/tmp")
    monkeypatch.setenv("VLLM_HOST_IP", "10.1.2.3")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)

    def no_ray(*args: Any, **kwargs: Any) -> None:
        assert os.environ["VLLM_HOST_IP"] == "127.0.0.1"  # what the cluster runs with
        raise RuntimeError("no Ray in this test")

    monkeypatch.setattr(ray, "init", no_ray)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(RuntimeError, match="no Ray"):
        with VerlCluster(model, work_dir=tmp_path / "work"):
            pass
    assert dict(os.environ) == before


# --- the loop as verl builds it (hydra's keyword arguments), no Ray ------------


def _loop(model: Path, hf_model_type: str | None, *overrides: str, **entry: Any) -> Any:
    """Our loop made as verl's worker makes it: the composed trainer config
    (what main_ppo reads), the model's tokenizer as verl loads it, and the
    YAML entry's keys."""
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.workers.config.model import HFModelConfig

    from agentfly_min.integrations.verl import AgentflyAgentLoop
    from agentfly_min.local.verl_cluster import trainer_config

    config = trainer_config(model, max_model_len=1024, overrides=overrides)
    tokenizer = HFModelConfig(path=str(model)).tokenizer
    return AgentflyAgentLoop(
        trainer_config=DictConfigWrap(config), server_manager=None, tokenizer=tokenizer, processor=None,
        dataset_cls=None, data_config=DictConfigWrap(config.data), hf_model_type=hf_model_type,
        tools=ToolListWrap([]), **entry,
    )  # fmt: skip


@pytest.fixture(scope="module")
def families() -> dict[str, Path]:
    from agentfly_min.testing import tiny_model

    from .conftest import CACHE

    return {family: tiny_model(CACHE, family=family) for family in ("qwen2.5", "qwen3", "llama3", "mistral")}


@pytest.mark.parametrize(
    ("family", "model_type", "expected"),
    [("qwen2.5", "qwen2", "qwen2.5"), ("qwen3", "qwen3", "qwen3"), ("llama3", "llama", "llama3"), ("mistral", "mistral", "mistral")],
)
def test_the_loop_takes_the_models_own_family(families: dict[str, Path], family: str, model_type: str, expected: str) -> None:
    """The loop rendered Qwen2.5 for every model: a Llama 3 tokenizer failed
    every row, a Qwen3 model got Qwen2.5's default system text."""
    assert _loop(families[family], model_type).template.name == expected


def test_verls_chat_template_kwargs_and_the_yaml_choose_the_template(families: dict[str, Path]) -> None:
    nothink = _loop(families["qwen3"], "qwen3", "+data.apply_chat_template_kwargs.enable_thinking=false")
    assert nothink.template.name == "qwen3-nothink"  # verl's data.apply_chat_template_kwargs, no longer ignored
    named = _loop(families["qwen3"], "qwen3", template="qwen3", template_options={"enable_thinking": False})
    assert named.template.name == "qwen3-nothink"
    assert _loop(families["qwen2.5"], "qwen2", template="hf").template.name == "hf"
    with pytest.raises(ConfigError, match="llama3 takes date_string"):
        _loop(families["llama3"], "llama", "+data.apply_chat_template_kwargs.enable_thinking=false")


def test_a_template_not_known_verbatim_goes_to_the_bridge_not_to_a_lookalike(families: dict[str, Path], tmp_path: Path) -> None:
    """A Qwen2.5-Math-like model: Qwen2.5's tokens, another default system
    text. Recognised by likeness it would get Qwen2.5's text; it gets its own
    template through the bridge."""
    from transformers import AutoTokenizer

    from agentfly_min.templates.select import recognise

    tokenizer = AutoTokenizer.from_pretrained(str(families["qwen2.5"]))
    assert recognise(tokenizer) == "qwen2.5"
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "Please reason step by step."
    )
    assert recognise(tokenizer) == "hf"
    assert recognise(tokenizer, model_type="gpt_oss") == "gpt-oss"


def test_unknown_yaml_keys_are_errors_that_name_them(families: dict[str, Path]) -> None:
    """Unknown YAML keys vanished into **kwargs (a typo such as max_turn was
    silently the default)."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_turn, temprature"):
        _loop(families["qwen2.5"], "qwen2", max_turn=3, temprature=0.5)


def test_partial_rollouts_off_means_an_abort_is_not_resumed(families: dict[str, Path]) -> None:
    model = families["qwen2.5"]
    assert _loop(model, "qwen2").abort.on_abort == "resume"
    off = "+async_training.partial_rollout=false"
    assert _loop(model, "qwen2", off).abort.on_abort == "error"  # verl drops such samples; ours fail, not resume
    assert _loop(model, "qwen2", off, on_abort="retry").abort.on_abort == "retry"
    with pytest.raises(ConfigError, match="partial_rollout: false forbids"):
        _loop(model, "qwen2", off, on_abort="resume")
    assert _loop(model, "qwen2").abort.max_model_len == 1024  # verl's server context: its clamps are read
