"""Each chat family on real engines: multi-turn tool-calling episodes on a
tiny random model whose tokenizer carries that family's upstream template,
through the in-process vLLM engine and through a vLLM server (token ids over
HTTP, and chat with the server's tool parser), checked token for token and
against a transformers forward pass (every sampled token's logprob; the
models are confident and run in float32). verl's stack runs each family in
tests/verl/test_families.py. One engine at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentfly_min import Agent, Completion, Generate, Request, rollout
from agentfly_min.templates import Turn, get_template
from agentfly_min.testing import tiny_model
from agentfly_min.tools import calculator
from agentfly_min.transports.vllm import VLLMEngine, vllm_generate

from .conftest import CACHE, WORK
from .logprob_oracle import TOLERANCE, worst_difference
from .vllm_support import ENGINE_CONFIG, assert_gone, assert_reaped, engine_children

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# A forced first turn for each family (the model is random): a call to the
# calculator in the family's own format.
FORCED = {
    "qwen2.5": r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>',
    "qwen3": (
        r'<think>\n[a-z]{1,8}\n</think>\n\n<tool_call>\n\{"name": "calculator", '
        r'"arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>'
    ),
    "qwen3-coder": r"<tool_call>\n<function=calculator>\n<parameter=expression>\n[1-9]\+[1-9]\n</parameter>\n</function>\n</tool_call>",
    "llama3": r'\{"name": "calculator", "parameters": \{"expression": "[1-9]\+[1-9]"\}\}',
}
TEMPLATE_OF = {"qwen2.5": "qwen2.5", "qwen3": "qwen3", "qwen3-coder": "qwen3-coder", "llama3": "llama3"}
# float32, for the forward-pass oracle (bfloat16 differs from it by about 1e-2)
FLOAT32 = msgspec.structs.replace(ENGINE_CONFIG, dtype="float32")


def model_of(family: str) -> Path:
    path: Path = tiny_model(CACHE, family=family, peaked=True)  # type: ignore[arg-type]
    return path


def check_logprobs(family: str, trajectories: list[Any], record: dict[str, list[tuple[Request, Completion]]]) -> None:
    """Every token of the freely sampled last turn has the logprob
    transformers gives it on the same ids (the first turn is held to a
    grammar, which vLLM applies before it takes logprobs)."""
    worst = max(
        worst_difference(model_of(family), t, last=len(record[t.request_id][-1][1].outputs[0].token_ids or ())) for t in trajectories
    )
    assert worst < TOLERANCE, worst


def forcing(inner: Generate, family: str, record: dict[str, list[tuple[Request, Completion]]]) -> Generate:
    async def generate(request: Request) -> Completion:
        first = len(request.messages) == 1
        # Room for the grammar: a constrained sampler may spell the call a character at a time.
        sent = msgspec.structs.replace(request, regex=FORCED[family], max_new_tokens=192) if first else request
        completion = await inner(sent)
        assert request.request_id is not None
        record.setdefault(request.request_id, []).append((request, completion))
        return completion

    return generate


def check_token_exact(family: str, tokenizer: Any, trajectories: list[Any], record: dict[str, list[tuple[Request, Completion]]]) -> None:
    template = get_template(TEMPLATE_OF[family])
    assert template.render is not None
    for t in trajectories:
        assert t.error is None, t.error
        assert t.token_level and t.num_turns == 2 and t.tool_calls == 1
        assert t.messages[2].text.isdigit(), t.messages[2].text  # the forced call ran
        turns = record[t.request_id]
        sampled = [list(completion.outputs[0].token_ids or ()) for _, completion in turns]
        # The mask-1 ids are exactly the ids the engine sampled, in order.
        assert [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m] == [i for s in sampled for i in s]
        assert t.response_logprobs is not None and len(t.response_logprobs) == len(t.response_ids)
        # Decoding them gives the text the engine returned.
        assert tokenizer.decode(sampled[0], skip_special_tokens=True) == turns[0][1].outputs[0].text
        # The spliced ids are exactly what the template puts there.
        spliced = t.response_ids[len(sampled[0]) : len(t.response_ids) - len(sampled[1])]
        between = template.between_ids(tokenizer, Turn(history=t.messages[:2], sampled=sampled[0], results=t.messages[2:3], tools=(calculator.schema,)))
        assert list(spliced) == between
        # And, the template being prefix-stable here, the second prompt is a full render: the same
        # text, and the same ids outside what was sampled (a constrained sampler may spell "<think>"
        # in pieces where the tokenizer has one token: the ids it sampled are the ones kept).
        second_prompt = turns[1][0].prompt_ids
        assert second_prompt is not None
        full = template.render(t.messages[:3], (calculator.schema,))
        seen = tokenizer.decode(list(second_prompt))
        # The one liberty a model takes: it may end its turn with another of the family's stop
        # tokens (Llama 3.1 stops on <|end_of_text|> too) where the template writes <|eot_id|>.
        ending = tokenizer.convert_ids_to_tokens(sampled[0][-1])
        if family == "llama3" and ending in ("<|end_of_text|>", "<|eom_id|>"):
            seen = seen.replace(ending, "<|eot_id|>", 1)  # the prompt has neither: this is the turn's end
        if family.startswith("qwen") and ending == "<|endoftext|>":
            # Qwen stops on <|endoftext|> too; the template's <|im_end|> is spliced in after it.
            seen = seen.replace(ending, "", 1)
        assert seen == full
        assert list(second_prompt) == [*t.prompt_ids, *sampled[0], *between]
        assert list(t.prompt_ids) == tokenizer.encode(template.render(t.messages[:1], (calculator.schema,)), add_special_tokens=False)


@pytest.fixture(scope="module", params=["qwen2.5", "qwen3", "qwen3-coder", "llama3"])
def family_engine(request: pytest.FixtureRequest) -> Iterator[tuple[str, VLLMEngine]]:
    family: str = request.param
    before = {p.pid for p in engine_children()}
    engine = VLLMEngine.start(FLOAT32, model_of(family))
    children = [p for p in engine_children() if p.pid not in before]
    yield family, engine
    engine.close()
    assert_gone(children)
    assert_reaped(children)


async def test_family_episodes_on_the_vllm_engine_are_token_exact(family_engine: tuple[str, VLLMEngine]) -> None:
    family, engine = family_engine
    record: dict[str, list[tuple[Request, Completion]]] = {}
    agent = Agent(model_name_or_path=family, tools=[calculator], template=TEMPLATE_OF[family], max_turns=2, max_new_tokens=128)
    tasks = [{"id": f"{family}-{i}", "question": f"What is {i}+{i}?"} for i in range(3)]
    trajectories = await rollout(agent, forcing(vllm_generate(engine), family, record), tasks, n=2, tokenizer=engine.tokenizer)
    assert len(trajectories) == 6
    check_token_exact(family, engine.tokenizer, trajectories, record)
    check_logprobs(family, trajectories, record)


def test_models_are_built_per_family() -> None:
    from transformers import AutoConfig

    families = (("qwen2.5", "Qwen2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM"), ("qwen3-coder", "Qwen3ForCausalLM"), ("llama3", "LlamaForCausalLM"))
    for family, architecture in families:
        path: Path = tiny_model(CACHE, family=family)  # type: ignore[arg-type]
        assert AutoConfig.from_pretrained(str(path)).architectures == [architecture]


# --- the OpenAI client transport, against a vLLM server with the family's tool parser ---

SERVER_PARSER = {"qwen2.5": "hermes", "qwen3": "hermes", "llama3": "llama3_json"}
FORCED_CALL_ONLY = {
    "qwen2.5": FORCED["qwen2.5"],
    "qwen3": r'<tool_call>\n\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}\}\n</tool_call>',
    "llama3": FORCED["llama3"],
}


@pytest.fixture(scope="module", params=["qwen2.5", "qwen3", "llama3"])
def family_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    from agentfly_min.local import VLLMServer

    family: str = request.param
    before = {p.pid for p in engine_children()}
    float32 = ("--dtype", "float32")  # after the server's own --dtype: the last one counts
    with VLLMServer(model_of(family), work_dir=WORK, max_model_len=1024, tool_parser=SERVER_PARSER[family], extra_args=float32) as server:
        started = [p for p in engine_children() if p.pid not in before]
        yield family, server
    assert_gone(started)


async def test_family_episodes_through_a_vllm_server_and_its_tool_parser(family_server: tuple[str, Any]) -> None:
    from agentfly_min import ClientConfig, open_backend

    family, server = family_server
    config = ClientConfig(base_url=server.base_url, timeout=120, max_retries=0)
    agent = Agent(model_name_or_path=family, tools=[calculator], template=TEMPLATE_OF[family], backend="client", backend_config=config, max_turns=2, max_new_tokens=64)

    def force_first(inner: Generate) -> Generate:
        async def generate(request: Request) -> Completion:
            first = len(request.messages) == 1
            # plain words after the call: a free random model samples a stray call now and then
            return await inner(msgspec.structs.replace(request, regex=FORCED_CALL_ONLY[family] if first else r"[a-z]{1,8}( [a-z]{1,8}){0,4}"))

        return generate

    async with open_backend(config) as generate:
        trajectories = await rollout(agent, force_first(generate), [{"id": f"s{i}", "question": f"{i}+{i}?"} for i in range(2)], n=2)
    for t in trajectories:
        assert t.error is None, t.error
        assert t.num_turns == 2 and t.tool_calls == 1 and not t.token_level
        call = t.messages[1].calls[0]
        assert call.function.name == "calculator" and call.id  # parsed by the server's parser
        assert t.messages[2].role == "tool" and t.messages[2].text.isdigit()


async def test_family_episodes_over_token_ids_are_token_exact(family_server: tuple[str, Any]) -> None:
    """Token ids over HTTP (vLLM's /v1/completions with return_token_ids),
    the client's tokenizer checked against the server's on entry."""
    from transformers import AutoTokenizer

    from agentfly_min import ClientConfig, open_backend

    family, server = family_server
    tokenizer = AutoTokenizer.from_pretrained(str(model_of(family)))
    config = ClientConfig(base_url=server.base_url, timeout=120, max_retries=0, token_ids=True)
    agent = Agent(model_name_or_path=family, tools=[calculator], template=TEMPLATE_OF[family], max_turns=2, max_new_tokens=64)
    record: dict[str, list[tuple[Request, Completion]]] = {}
    async with open_backend(config, tokenizer=tokenizer) as generate:
        tasks = [{"id": f"h{i}", "question": f"What is {i}+{i}?"} for i in range(2)]
        trajectories = await rollout(agent, forcing(generate, family, record), tasks, n=2, tokenizer=tokenizer)
    check_token_exact(family, tokenizer, trajectories, record)
    check_logprobs(family, trajectories, record)


# --- Mistral: mistral_common's Tekken tokenizer in vLLM (tokenizer_mode="mistral") ---

MISTRAL_CALL = r'\[\{"name": "calculator", "arguments": \{"expression": "[1-9]\+[1-9]"\}, "id": "[a-z]{9}"\}\]'


@pytest.fixture(scope="module")
def mistral_engine() -> Iterator[VLLMEngine]:
    before = {p.pid for p in engine_children()}
    config = msgspec.structs.replace(FLOAT32, engine_args={**FLOAT32.engine_args, "tokenizer_mode": "mistral"})
    engine = VLLMEngine.start(config, model_of("mistral"))
    children = [p for p in engine_children() if p.pid not in before]
    yield engine
    engine.close()
    assert_gone(children)


async def test_mistral_episodes_on_the_vllm_engine_are_token_exact(mistral_engine: VLLMEngine) -> None:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    from agentfly_min import Output
    from agentfly_min.templates.mistral import _tools, mistral_messages, tekken

    tokenizer = tekken()
    tool_calls_id = tokenizer.instruct_tokenizer.tokenizer.get_special_token("[TOOL_CALLS]")
    inner = vllm_generate(mistral_engine)
    record: dict[str, list[tuple[Request, Completion]]] = {}

    async def forcing_mistral(request: Request) -> Completion:
        """The random model's first turn, forced: the [TOOL_CALLS] control token
        (a logit bias; no regex can name a control token), then the call's JSON
        (a regex), as one turn."""
        assert request.request_id is not None and request.prompt_ids is not None
        if len(request.messages) == 1:
            head = await inner(msgspec.structs.replace(request, max_new_tokens=1, logit_bias={tool_calls_id: 100.0}))
            head_ids = head.outputs[0].token_ids or ()
            body = await inner(msgspec.structs.replace(request, prompt_ids=(*request.prompt_ids, *head_ids), regex=MISTRAL_CALL))
            first, rest = head.outputs[0], body.outputs[0]
            joined = Output(
                text=first.text + rest.text, finish_reason=rest.finish_reason,
                token_ids=(*head_ids, *(rest.token_ids or ())), logprobs=(*(first.logprobs or ()), *(rest.logprobs or ())),
            )  # fmt: skip
            completion = Completion(outputs=(joined,))
        else:
            completion = await inner(request)
        record.setdefault(request.request_id, []).append((request, completion))
        return completion

    agent = Agent(model_name_or_path="mistral", tools=[calculator], template="mistral", max_turns=2, max_new_tokens=64)
    trajectories = await rollout(agent, forcing_mistral, [{"id": f"m{i}", "question": f"{i}+{i}?"} for i in range(2)], n=2, tokenizer=tokenizer)
    for t in trajectories:
        assert t.error is None, t.error
        assert t.token_level and t.num_turns == 2 and t.tool_calls == 1 and t.messages[2].text.isdigit()
        turns = record[t.request_id]
        sampled = [list(c.outputs[0].token_ids or ()) for _, c in turns]
        assert sampled[0][0] == tool_calls_id  # the call's control token, kept though a transport's text drops it
        assert [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m] == [i for s in sampled for i in s]
        assert len(t.messages[1].calls[0].id) == 9  # the id the model wrote
        # The second prompt is what Mistral's renderer writes for the conversation: the same text,
        # and the same ids outside what was sampled (the constrained sampler spells the JSON
        # in other pieces than a fresh encoding would; the sampled ids are the ones kept).
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        request = ChatCompletionRequest(messages=mistral_messages(t.messages[:3]), tools=_tools([calculator.schema]))
        rendered = tokenizer.encode_chat_completion(request).tokens
        second = list(turns[1][0].prompt_ids or ())
        decode = tokenizer.instruct_tokenizer.tokenizer.decode
        assert decode(second, special_token_policy=SpecialTokenPolicy.KEEP) == decode(rendered, special_token_policy=SpecialTokenPolicy.KEEP)
        assert second[: len(t.prompt_ids)] == rendered[: len(t.prompt_ids)] == list(t.prompt_ids)
        between = get_template("mistral").between_ids(tokenizer, Turn(history=t.messages[:2], sampled=sampled[0], results=t.messages[2:3], tools=(calculator.schema,)))
        assert second == [*t.prompt_ids, *sampled[0], *between] and rendered[len(rendered) - len(between) :] == between
    check_logprobs("mistral", trajectories, record)


# --- gpt-oss: harmony's ids in vLLM (no tokenizer file: skip_tokenizer_init) ---


@pytest.fixture(scope="module")
def harmony_engine() -> Iterator[VLLMEngine]:
    before = {p.pid for p in engine_children()}
    config = msgspec.structs.replace(FLOAT32, engine_args={**FLOAT32.engine_args, "skip_tokenizer_init": True})
    engine = VLLMEngine.start(config, model_of("gpt-oss"))
    children = [p for p in engine_children() if p.pid not in before]
    yield engine
    engine.close()
    assert_gone(children)


async def test_gpt_oss_episodes_on_the_vllm_engine_are_token_exact(harmony_engine: VLLMEngine) -> None:
    from openai_harmony import Role

    from agentfly_min import Output
    from agentfly_min.templates.harmony import encoding, harmony_conversation

    enc = encoding()
    call = enc.encode(
        "<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant<|channel|>commentary to=functions.calculator "
        '<|constrain|>json<|message|>{"expression": "3+4"}<|call|>',
        allowed_special="all",
    )
    inner = vllm_generate(harmony_engine)
    record: dict[str, list[tuple[Request, Completion]]] = {}

    async def forcing_harmony(request: Request) -> Completion:
        """The random model's first turn, forced token by token with a logit bias
        (no tokenizer in the engine, so no regex): a harmony call."""
        assert request.request_id is not None and request.prompt_ids is not None
        if len(request.messages) == 1:
            ids: list[int] = []
            logprobs: list[float] = []
            for token in call:
                step = await inner(msgspec.structs.replace(request, prompt_ids=(*request.prompt_ids, *ids), max_new_tokens=1, logit_bias={token: 100.0}))
                ids.extend(step.outputs[0].token_ids or ())
                logprobs.extend(step.outputs[0].logprobs or ())
            completion = Completion(outputs=(Output(text="", finish_reason="stop", token_ids=tuple(ids), logprobs=tuple(logprobs)),))
        else:
            completion = await inner(request)
        record.setdefault(request.request_id, []).append((request, completion))
        return completion

    agent = Agent(model_name_or_path="gpt-oss", tools=[calculator], template="gpt-oss", max_turns=2, max_new_tokens=24)
    trajectories = await rollout(agent, forcing_harmony, [{"id": "h0", "question": "3+4?"}], n=2, tokenizer=enc)
    for t in trajectories:
        assert t.error is None, t.error
        assert t.token_level and t.num_turns == 2 and t.tool_calls >= 1
        assert t.messages[1].reasoning_content == "Add them." and t.messages[2].text == "7"
        turns = record[t.request_id]
        sampled = [list(c.outputs[0].token_ids or ()) for _, c in turns]
        assert sampled[0] == call  # the engine sampled the forced call, read back from its ids
        assert [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m] == [i for s in sampled for i in s]
        expected = enc.render_conversation_for_completion(harmony_conversation(t.messages[:3], [calculator.schema]), Role.ASSISTANT)
        assert turns[1][0].prompt_ids is not None and list(turns[1][0].prompt_ids) == list(expected)  # harmony's own render
    check_logprobs("gpt-oss", trajectories, record)
