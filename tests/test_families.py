"""Every built-in chat family, at the text and token level: the loop's
splices are exactly what the template puts between turns, and the golden
cases from bugs the field has hit hold. (Each renderer against its upstream
template: test_upstream_templates.py; the families on real engines:
test_families_engine.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import anyio
import msgspec
import pytest

from agentfly_min import Agent, Completion, FunctionCall, Generate, Message, Output, Request, ToolCall, Usage, run_agent, tool
from agentfly_min.records import TextPart
from agentfly_min.templates import MalformedToolCall, ParsedCall, get_template, template_names
from agentfly_min.tools import calculator
from agentfly_min.templates.chat import prompt_ids, template_messages

from .conftest import CACHE

FAMILY_OF = {"qwen2.5": "qwen2.5", "qwen3": "qwen3", "qwen3-nothink": "qwen3", "llama3": "llama3", "qwen3-coder": "qwen3-coder"}
EOS = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "qwen3-nothink": "<|im_end|>", "llama3": "<|eot_id|>", "qwen3-coder": "<|im_end|>"}
XML_CALL = "<tool_call>\n<function=calculator>\n<parameter=expression>\n2+2\n</parameter>\n</function>\n</tool_call>"


@cache
def tokenizer_for(name: str) -> Any:
    from transformers import AutoTokenizer

    from agentfly_min.testing import tiny_model

    return AutoTokenizer.from_pretrained(str(tiny_model(CACHE, family=FAMILY_OF[name])))  # type: ignore[arg-type]


def call(arguments: str, id: str = "c1", name: str = "calculator") -> ToolCall:
    return ToolCall(id=id, function=FunctionCall(name=name, arguments=arguments))


SHAPES: dict[str, list[Message]] = {
    "plain": [Message(role="user", content="hi")],
    "system": [Message(role="system", content="Be brief."), Message(role="user", content="hi")],
    "answered": [Message(role="user", content="hi"), Message(role="assistant", content="hello"), Message(role="user", content="more")],
    "tool-turn": [
        Message(role="user", content="2+2?"),
        Message(role="assistant", content="", tool_calls=(call('{"expression": "2+2"}'),)),
        Message(role="tool", content="4", tool_call_id="c1", name="calculator"),
    ],
    "reasoning-and-results": [
        Message(role="system", content="Use tools."),
        Message(role="user", content="both"),
        Message(role="assistant", content="", reasoning_content="two sums", tool_calls=(call('{"expression": "1+1"}'), call('{"flag": false,  "a": "é"}', "c2"))),
        Message(role="tool", content="2", tool_call_id="c1"),
        Message(role="tool", content="ok", tool_call_id="c2"),
        Message(role="assistant", content="Both done.", reasoning_content="checked"),
    ],
    "earlier-reasoning": [
        Message(role="user", content="first"),
        Message(role="assistant", content="<think>\nold thought\n</think>\n\none"),
        Message(role="user", content="second"),
    ],
    "developer-and-parts": [
        Message(role="developer", content="Be brief."),
        Message(role="user", content=(TextPart(text="two "), TextPart(text="parts"))),
    ],
}
@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "llama3"])
def test_the_loop_and_the_transports_render_the_same_prompt(name: str) -> None:
    """The loop's prompt (our renderer) and the one a transport builds from
    messages (the tokenizer's own, upstream template) agree, or both refuse
    (Llama 3's template takes one call per turn)."""
    tokenizer = tokenizer_for(name)
    for messages in SHAPES.values():
        request = Request(messages=tuple(messages), tools=(calculator.schema,))
        try:
            expected: object = prompt_ids(tokenizer, request)
        except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError: the template refuses this conversation
            expected = str(exc)
        try:
            ours: object = get_template(name).prompt_ids(tokenizer, messages, (calculator.schema,))
        except ValueError as exc:
            ours = str(exc)
        assert ours == expected


def test_the_registry_lists_every_family() -> None:
    assert {"qwen2.5", "qwen3", "qwen3-nothink", "llama3"} <= set(template_names())


# --- the loop, token for token ------------------------------------------------------

CALL_TEXT = {
    "qwen2.5": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
    "qwen3": '<think>\nadd them\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
    "qwen3-nothink": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
    "llama3": '{"name": "calculator", "parameters": {"expression": "2+2"}}',
}
ANSWER_TEXT = {
    "qwen2.5": "The answer is \\boxed{4}.",
    "qwen3": "<think>\nit is 4\n</think>\n\nThe answer is \\boxed{4}.",
    "qwen3-nothink": "The answer is \\boxed{4}.",
    "llama3": "The answer is \\boxed{4}.",
}


def sampling(name: str, turns: Sequence[str], seen: list[Request]) -> Generate:
    """A token-level transport that samples exactly ``turns`` (each ended
    by the family's end-of-turn token), as an engine would return them."""
    tokenizer = tokenizer_for(name)
    eos = tokenizer.convert_tokens_to_ids(EOS[name])

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        seen.append(request)
        text = turns[len(seen) - 1]
        ids = (*tokenizer.encode(text, add_special_tokens=False), eos)
        return Completion(outputs=(Output(text=text, finish_reason="stop", token_ids=ids, logprobs=(-0.5,) * len(ids)),), usage=Usage())

    return generate


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CALL_TEXT))
async def test_an_episode_is_token_exact_and_equals_a_full_render(name: str) -> None:
    tokenizer = tokenizer_for(name)
    seen: list[Request] = []
    agent = Agent(model_name_or_path="m", tools=[calculator], template=name, max_turns=3)
    trajectory = await run_agent(agent, sampling(name, [CALL_TEXT[name], ANSWER_TEXT[name]], seen), {"question": "2+2?"}, tokenizer=tokenizer)
    assert trajectory.error is None and trajectory.finish_reason == "answer" and trajectory.num_turns == 2
    assert trajectory.messages[2].text == "4"  # the call was read and ran
    ids = [*trajectory.prompt_ids, *trajectory.response_ids]
    # Each prompt is the previous one plus what was sampled plus the splice: nothing re-rendered.
    assert seen[0].prompt_ids is not None and seen[1].prompt_ids is not None
    assert list(seen[1].prompt_ids) == ids[: len(seen[1].prompt_ids)]
    sampled = [i for i, m in zip(trajectory.response_ids, trajectory.response_mask, strict=True) if m]
    eos = tokenizer.convert_tokens_to_ids(EOS[name])
    expected = [t for text in (CALL_TEXT[name], ANSWER_TEXT[name]) for t in (*tokenizer.encode(text, add_special_tokens=False), eos)]
    assert sampled == expected
    template = get_template(name)
    assert template.render is not None
    full = template.render(trajectory.messages, (calculator.schema,))
    full_ids = tokenizer.encode(full, add_special_tokens=False)
    if name == "qwen3-nothink":
        # Qwen3 drops the empty think block of an earlier turn when it re-renders:
        # a re-render is not what the model saw; the trajectory is.
        assert ids != full_ids[: len(ids)]
        assert tokenizer.decode(ids).count("<think>\n\n</think>") == 2
    else:
        # Prefix-stable here: the splices and the template's full render agree token for token.
        assert ids == full_ids[: len(ids)] and len(full_ids) == len(ids) + len(tokenizer.encode(full[len(tokenizer.decode(ids)) :], add_special_tokens=False))


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["qwen2.5", "qwen3"])
async def test_the_newline_after_an_assistant_turn_is_spliced_in(name: str) -> None:
    """One framework dropped the "\\n" between <|im_end|> and the tool turn at
    every boundary (verl #6501)."""
    tokenizer = tokenizer_for(name)
    seen: list[Request] = []
    agent = Agent(model_name_or_path="m", tools=[calculator], template=name)
    trajectory = await run_agent(agent, sampling(name, [CALL_TEXT[name], ANSWER_TEXT[name]], seen), {"question": "q"}, tokenizer=tokenizer)
    spliced = [i for i, m in zip(trajectory.response_ids, trajectory.response_mask, strict=True) if not m]
    assert tokenizer.decode(spliced).startswith("\n<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n")


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CALL_TEXT))
async def test_tool_arguments_are_never_reserialised(name: str) -> None:
    """Re-rendering through Python objects turned `false` into `False` and moved
    spaces and keys; measured to break half of the rollouts in one framework."""
    written = '{"flag": false, "b": 1,  "a": "é"}'
    seen_arguments: list[str] = []

    @tool
    def probe(flag: bool, b: int, a: str) -> str:
        """Records its arguments.

        Args:
            flag: A flag.
            b: A number.
            a: A text.
        """
        seen_arguments.append(f"{flag} {b} {a}")
        return "ok"

    text = CALL_TEXT[name].replace('"calculator"', '"probe"').replace('{"expression": "2+2"}', written)
    tokenizer = tokenizer_for(name)
    seen: list[Request] = []
    agent = Agent(model_name_or_path="m", tools=[probe], template=name)
    trajectory = await run_agent(agent, sampling(name, [text, ANSWER_TEXT[name]], seen), {"question": "q"}, tokenizer=tokenizer)
    assert seen_arguments == ["False 1 é"]
    assert trajectory.messages[1].calls[0].function.arguments == written  # the record keeps it as sampled
    assert seen[1].prompt_ids is not None
    assert written in tokenizer.decode(list(seen[1].prompt_ids))  # and so does the next prompt, byte for byte


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["qwen3", "qwen3-nothink"])
async def test_a_call_written_while_thinking_is_not_run(name: str) -> None:
    """verl #4757: tool calls inside <think> were executed."""
    thinking = "<think>\nmaybe <tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"1+1\"}}\n</tool_call>\n</think>\n\nNo tool needed: 4."
    seen: list[Request] = []
    agent = Agent(model_name_or_path="m", tools=[calculator], template=name)
    trajectory = await run_agent(agent, sampling(name, [thinking], seen), {"question": "q"}, tokenizer=tokenizer_for(name))
    assert trajectory.tool_calls == 0 and trajectory.finish_reason == "answer" and len(seen) == 1
    assert trajectory.messages[-1].text == "No tool needed: 4."
    assert trajectory.messages[-1].reasoning_content is not None and "maybe" in trajectory.messages[-1].reasoning_content


@pytest.mark.anyio
async def test_reasoning_reaches_the_reward() -> None:
    seen_reasoning: list[str | None] = []

    def reward(trajectory: Any, task: Any) -> float:
        seen_reasoning.append(trajectory.messages[-1].reasoning_content)
        return 1.0

    agent = Agent(model_name_or_path="m", template="qwen3", reward_fn=reward)
    await run_agent(agent, sampling("qwen3", [ANSWER_TEXT["qwen3"]], []), {"question": "q"}, tokenizer=tokenizer_for("qwen3"))
    assert seen_reasoning == ["it is 4"]


def test_llama3_reads_one_call_per_turn_as_its_template_writes_them() -> None:
    """Meta's templates write one call per turn and refuse two (we joined two
    with '; '): a second call is a malformed one, told to the model."""
    from agentfly_min.templates.base import MalformedToolCall

    parse = get_template("llama3").parse
    two = parse('<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}')
    first, second = two.calls
    assert isinstance(first, ParsedCall) and (first.name, first.arguments) == ("a", '{"x": 1}')
    assert isinstance(second, MalformedToolCall) and "one function per turn" in second.reason
    assert parse(" Just 4.").content == " Just 4." and parse("Just 4.").calls == ()  # as sampled
    assert parse("{not json at all").calls == ()


def test_a_tokenizer_of_another_family_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="not a Llama 3 tokenizer"):
        get_template("llama3").check(tokenizer_for("qwen2.5"))
    with pytest.raises(ValueError, match="not a Qwen3 tokenizer"):
        get_template("qwen3").check(tokenizer_for("qwen2.5"))


# --- any model's own template ("hf"), and vLLM's parsers ------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("family", ["qwen2.5", "llama3"])
async def test_hf_derives_the_splice_from_the_models_own_template(family: str) -> None:
    """For a prefix-stable template the derived splice equals the built-in one."""
    tokenizer = tokenizer_for(family)
    seen: list[Request] = []
    agent = Agent(model_name_or_path="m", tools=[calculator], template="hf")
    turns = [CALL_TEXT[family], ANSWER_TEXT[family]]
    if family == "llama3":  # hf parses Hermes by default; the llama3 call needs vLLM's parser, so use a Hermes-free answer
        turns = [ANSWER_TEXT[family]]
    trajectory = await run_agent(agent, sampling(family, turns, seen), {"question": "2+2?"}, tokenizer=tokenizer)
    assert trajectory.error is None
    builtin: list[Request] = []
    reference = await run_agent(
        Agent(model_name_or_path="m", tools=[calculator], template=family), sampling(family, turns, builtin), {"question": "2+2?"}, tokenizer=tokenizer
    )
    assert trajectory.prompt_ids == reference.prompt_ids and trajectory.response_ids == reference.response_ids
    assert trajectory.response_mask == reference.response_mask


@pytest.mark.anyio
async def test_hf_splices_the_end_of_turn_after_another_stop_token() -> None:
    """Qwen2.5 stops on <|endoftext|> as well as <|im_end|>. A turn ended on
    <|endoftext|> had the template's <|im_end|>\n dropped from the splice:
    checked on the ids the episode sends, against the tokenizer's own
    template (what follows an assistant turn there)."""
    tokenizer = tokenizer_for("qwen2.5")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    seen: list[Request] = []

    async def generate(request: Request) -> Completion:
        seen.append(request)
        text = [CALL_TEXT["qwen2.5"], ANSWER_TEXT["qwen2.5"]][len(seen) - 1]
        ids = (*tokenizer.encode(text, add_special_tokens=False), end_of_text)
        return Completion(outputs=(Output(text=text, finish_reason="stop", token_ids=ids),))

    agent = Agent(model_name_or_path="m", tools=[calculator], template="hf")
    trajectory = await run_agent(agent, generate, {"question": "2+2?"}, tokenizer=tokenizer)
    assert trajectory.error is None and len(seen) == 2
    history = template_messages(trajectory.messages[:2])
    schemas = [msgspec.to_builtins(calculator.schema)]
    before = tokenizer.apply_chat_template(history, tools=schemas, tokenize=False)
    after = tokenizer.apply_chat_template(template_messages(trajectory.messages[:3]), tools=schemas, tokenize=False, add_generation_prompt=True)
    end_of_turn = before[before.rfind("<|im_end|>") :]  # what the template writes after the assistant's text
    assert seen[1].prompt_ids is not None
    sampled = seen[1].prompt_ids[len(trajectory.prompt_ids) :]
    first_turn = (*tokenizer.encode(CALL_TEXT["qwen2.5"], add_special_tokens=False), end_of_text)
    assert end_of_turn == "<|im_end|>\n"
    assert list(sampled) == [*first_turn, *tokenizer.encode(end_of_turn + after[len(before) :], add_special_tokens=False)]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["qwen2.5", "qwen3-coder"])
async def test_the_messages_are_the_record_of_the_sampled_ids(name: str) -> None:
    """A final answer's leading whitespace was stripped, so the messages did
    not render back to what the model sampled. Rendered by the tokenizer's
    own template, the conversation is the prompt and the response ids.
    (Templates that rewrite history cannot give it back, whatever the
    messages hold: Qwen3 drops earlier reasoning and the empty think block
    of its no-thinking prompt, Llama 3 trims every text.)"""
    tokenizer = tokenizer_for(name)
    seen: list[Request] = []
    turns = [CALL_TEXT.get(name, XML_CALL), "  The answer is \\boxed{4}.\n"]
    trajectory = await run_agent(
        Agent(model_name_or_path="m", tools=[calculator], template=name), sampling(name, turns, seen), {"question": "2+2?"}, tokenizer=tokenizer
    )
    assert trajectory.messages[-1].text == turns[1]
    rendered = tokenizer.apply_chat_template(
        template_messages(trajectory.messages), tools=[msgspec.to_builtins(calculator.schema)], tokenize=True
    )
    ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    recorded = [*trajectory.prompt_ids, *trajectory.response_ids]
    assert ids[: len(recorded)] == recorded and tokenizer.decode(ids[len(recorded) :]) == "\n"  # the template's newline after the turn


@pytest.mark.anyio
async def test_hf_refuses_a_template_that_rewrites_history() -> None:
    """Qwen3's template writes an empty think block into the last assistant
    turn and leaves it out once more turns follow: splicing by re-rendering
    would re-tokenise, so the episode ends with a clear error instead."""
    tokenizer = tokenizer_for("qwen3")
    agent = Agent(model_name_or_path="m", tools=[calculator], template="hf")
    trajectory = await run_agent(agent, sampling("qwen3", [CALL_TEXT["qwen2.5"], "done"], []), {"question": "q"}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "error" and trajectory.error is not None
    assert "TemplateError" in trajectory.error and "not prefix-stable" in trajectory.error


def test_vllm_parsers_read_a_family_we_name() -> None:
    from agentfly_min.templates.vllm_parsers import vllm_reasoning_parsers, vllm_tool_parsers, with_vllm_parsers

    assert {"hermes", "llama3_json", "mistral", "qwen3_coder", "openai"} <= set(vllm_tool_parsers())
    assert "qwen3" in vllm_reasoning_parsers()
    llama = with_vllm_parsers(get_template("llama3"), tokenizer_for("llama3"), tool_parser="llama3_json")
    (found,) = llama.parse('{"name": "calculator", "parameters": {"expression": "2+2"}}').calls
    assert isinstance(found, ParsedCall) and found.name == "calculator" and json_of(found) == {"expression": "2+2"}
    qwen = with_vllm_parsers(get_template("qwen3"), tokenizer_for("qwen3"), tool_parser="hermes", reasoning_parser="qwen3")
    turn = qwen.parse(CALL_TEXT["qwen3"])
    assert turn.reasoning is not None and turn.reasoning.strip() == "add them" and len(turn.calls) == 1
    assert qwen.parse("plain answer").calls == ()


def json_of(call: Any) -> Any:
    import json

    return json.loads(call.arguments)


def test_qwen3_coder_xml_calls() -> None:
    parse = get_template("qwen3-coder").parse
    turn = parse(
        "Let me.\n<tool_call>\n<function=calculator>\n<parameter=expression>\n2 + 2\n</parameter>\n"
        "<parameter=digits>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    assert turn.content == "Let me."
    (found,) = turn.calls
    assert isinstance(found, ParsedCall) and found.name == "calculator"
    assert json_of(found) == {"expression": "2 + 2", "digits": "3"}  # no schema at hand: text, as vLLM reads it
    (bad,) = parse("<tool_call>\n<parameter=x>1</parameter>\n</tool_call>").calls
    assert not isinstance(bad, ParsedCall) and "<function=name>" in bad.reason


def test_qwen3_coder_reads_parameters_as_the_tools_schema_types_them() -> None:
    """The parser made every value JSON where it read as JSON: the string
    "391" became the integer 391 and a calculator, whose expression is a
    string, refused it."""
    from agentfly_min import FunctionSchema, ToolSchema

    @tool
    def scale(value: float, times: int, note: str, flags: list[str] | None = None, exact: bool = False) -> str:
        """Scale a value.

        Args:
            value: The value.
            times: How many times.
            note: A note.
            flags: Labels.
            exact: Exactly.
        """
        return note

    template = get_template("qwen3-coder")
    assert template.parse_with_tools is not None
    turn = template.parse_with_tools(
        "<tool_call>\n<function=calculator>\n<parameter=expression>\n391\n</parameter>\n</function>\n</tool_call>"
        "<tool_call>\n<function=scale>\n<parameter=value>\n2.5\n</parameter>\n<parameter=times>\n3\n</parameter>\n"
        "<parameter=note>\n007\n</parameter>\n<parameter=flags>\n[\"a\"]\n</parameter>\n<parameter=exact>\nTrue\n"
        "</parameter>\n</function>\n</tool_call>",
        (calculator.schema, scale.schema, ToolSchema(function=FunctionSchema(name="free"))),
    )
    first, second = turn.calls
    assert isinstance(first, ParsedCall) and json_of(first) == {"expression": "391"}
    assert isinstance(second, ParsedCall) and json_of(second) == {"value": 2.5, "times": 3, "note": "007", "flags": ["a"], "exact": True}


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<function=f>", "</function>", "<parameter=p>", "</parameter>", "<think>", "</think>",
     "<|python_tag|>", '{"name": "f", "parameters": {', "}", ";", "[", "]", '"', "\\u", "x", "\n", "9" * 5000]
)  # fmt: skip


@given(st.lists(_PIECES, max_size=40).map("".join))
def test_no_family_parser_ever_raises(text: str) -> None:
    for name in ("qwen2.5", "qwen3", "qwen3-coder", "llama3", "hf"):
        turn = get_template(name).parse(text)
        assert isinstance(turn.content, str)


# --- Mistral (mistral_common) and gpt-oss (openai-harmony): their libraries' tokens ---


def mistral_sampling(turns: Sequence[str], seen: list[Request]) -> tuple[Generate, Any]:
    from agentfly_min.templates.mistral import tekken

    tokenizer = tekken()
    inner = tokenizer.instruct_tokenizer.tokenizer
    tool_calls = inner.get_special_token("[TOOL_CALLS]")

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        seen.append(request)
        text = turns[len(seen) - 1]
        if text.startswith("[TOOL_CALLS]"):
            ids = [tool_calls, *inner.encode(text[len("[TOOL_CALLS]") :], bos=False, eos=True)]
        else:
            ids = inner.encode(text, bos=False, eos=True)
        # What a transport's text is for such a turn: the control token is gone.
        return Completion(outputs=(Output(text=text.replace("[TOOL_CALLS]", ""), finish_reason="stop", token_ids=tuple(ids)),))

    return generate, tokenizer


@pytest.mark.anyio
async def test_mistral_episodes_splice_what_mistral_common_renders() -> None:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    from agentfly_min.templates.mistral import _tools, mistral_messages

    seen: list[Request] = []
    written = '{"flag": false,  "a": "é"}'
    turns = [f'[TOOL_CALLS][{{"name": "calculator", "arguments": {{"expression": "2+2"}}, "id": "abcdefghi"}}, {{"name": "calculator", "arguments": {written}}}]', "It is 4."]
    generate, tokenizer = mistral_sampling(turns, seen)
    agent = Agent(model_name_or_path="m", tools=[calculator], template="mistral")
    trajectory = await run_agent(agent, generate, {"question": "2+2?"}, tokenizer=tokenizer)
    assert trajectory.error is None and trajectory.finish_reason == "answer"
    ids = [c.id for c in trajectory.messages[1].calls]
    assert ids[0] == "abcdefghi" and len(ids[1]) == 9 and ids[1].isalnum()  # the model's id kept; a Mistral-shaped one made
    # The second call has no id: its result would name one the model never wrote, so it is malformed and not run.
    second = trajectory.messages[1].calls[1].function
    assert second.name == "invalid_tool_call" and written in second.arguments
    assert trajectory.messages[2].text == "4"
    assert trajectory.messages[3].text.startswith("Error: malformed tool call: a Mistral call needs its 9-character id")
    # The second prompt is exactly what mistral_common renders for the conversation so far.
    request = ChatCompletionRequest(messages=mistral_messages(trajectory.messages[:4]), tools=_tools([calculator.schema]))
    assert seen[1].prompt_ids is not None
    rendered = tokenizer.encode_chat_completion(request).tokens
    assert list(seen[1].prompt_ids)[: len(trajectory.prompt_ids)] == list(trajectory.prompt_ids)
    # mistral_common writes the arguments back through Python objects; we keep the sampled ones: the
    # tokens agree except inside that one call, whose bytes the model wrote.
    assert len(rendered) != len(seen[1].prompt_ids) or rendered != list(seen[1].prompt_ids)
    assert written.encode() in tokenizer.instruct_tokenizer.tokenizer.decode(list(seen[1].prompt_ids)).encode()


@pytest.mark.anyio
async def test_mistral_without_arguments_to_keep_equals_a_full_render() -> None:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    from agentfly_min.templates.mistral import _tools, mistral_messages

    seen: list[Request] = []
    call_text = '[TOOL_CALLS][{"name": "calculator", "arguments": {"expression": "2+2"}, "id": "abcdefghi"}]'
    generate, tokenizer = mistral_sampling([call_text, "It is 4."], seen)
    trajectory = await run_agent(Agent(model_name_or_path="m", tools=[calculator], template="mistral"), generate, {"question": "2+2?"}, tokenizer=tokenizer)
    request = ChatCompletionRequest(messages=mistral_messages(trajectory.messages[:3]), tools=_tools([calculator.schema]))
    assert seen[1].prompt_ids is not None and list(seen[1].prompt_ids) == tokenizer.encode_chat_completion(request).tokens


@pytest.mark.anyio
async def test_gpt_oss_episodes_splice_what_harmony_renders() -> None:
    from openai_harmony import Role

    from agentfly_min.templates.harmony import encoding, harmony_conversation

    enc = encoding()
    turns = [
        "<|channel|>analysis<|message|>Need to add.<|end|><|start|>assistant<|channel|>commentary to=functions.calculator "
        '<|constrain|>json<|message|>{"expression": "2+2"}<|call|>',
        "<|channel|>analysis<|message|>Got 4.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.<|return|>",
    ]
    seen: list[Request] = []

    async def generate(request: Request) -> Completion:
        await anyio.lowlevel.checkpoint()
        seen.append(request)
        ids = enc.encode(turns[len(seen) - 1], allowed_special="all")
        return Completion(outputs=(Output(text="(a transport's text)", finish_reason="stop", token_ids=tuple(ids)),))

    agent = Agent(model_name_or_path="m", tools=[calculator], template="gpt-oss")
    trajectory = await run_agent(agent, generate, {"question": "2+2?"}, tokenizer=enc)
    assert trajectory.error is None and trajectory.finish_reason == "answer"
    assistant = trajectory.messages[1]
    assert assistant.reasoning_content == "Need to add." and assistant.calls[0].function.name == "calculator"
    assert trajectory.messages[2].text == "4" and trajectory.messages[-1].text == "It is 4."
    assert trajectory.messages[-1].reasoning_content == "Got 4."
    expected = enc.render_conversation_for_completion(harmony_conversation(trajectory.messages[:3], [calculator.schema]), Role.ASSISTANT)
    assert seen[1].prompt_ids is not None and list(seen[1].prompt_ids) == list(expected)


def test_harmony_and_mistral_parsers_never_raise_on_hostile_turns() -> None:
    for name in ("gpt-oss", "mistral"):
        parse = get_template(name).parse
        for text in ["", "[TOOL_CALLS]", "[TOOL_CALLS][{", "<|channel|>commentary to=functions.f<|message|>{bad", "[TOOL_CALLS]" + "[" * 5000]:
            turn = parse(text)
            assert isinstance(turn.content, str)


def test_mistral_and_gpt_oss_refuse_a_tokenizer_of_another_kind() -> None:
    with pytest.raises(ValueError, match="mistral_common MistralTokenizer"):
        get_template("mistral").check(tokenizer_for("qwen2.5"))
    with pytest.raises(ValueError, match="openai-harmony's encoding"):
        get_template("gpt-oss").check(tokenizer_for("qwen2.5"))


@pytest.mark.anyio
async def test_each_response_token_says_which_message_it_came_from() -> None:
    tokenizer = tokenizer_for("qwen2.5")
    agent = Agent(model_name_or_path="m", tools=[calculator], template="qwen2.5")
    t = await run_agent(agent, sampling("qwen2.5", [CALL_TEXT["qwen2.5"], ANSWER_TEXT["qwen2.5"]], []), {"question": "q"}, tokenizer=tokenizer)
    assert len(t.response_sources) == len(t.response_ids)
    assert [m.role for m in t.messages] == ["user", "assistant", "tool", "assistant"]
    by_message = {k: [i for i, s in zip(t.response_ids, t.response_sources, strict=True) if s == k] for k in (1, 2, 3)}
    assert tokenizer.decode(by_message[1]) == CALL_TEXT["qwen2.5"] + "<|im_end|>"
    assert tokenizer.decode(by_message[2]) == "\n<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(by_message[3]) == ANSWER_TEXT["qwen2.5"] + "<|im_end|>"
    assert [s for s, m in zip(t.response_sources, t.response_mask, strict=True) if m] == [1] * len(by_message[1]) + [3] * len(by_message[3])


def test_mistral_reads_the_args_format_of_newer_tokenizers() -> None:
    """Tokenizers v11 and later write a call as name[ARGS]{...} after its own
    [TOOL_CALLS] (v13 adds [CALL_ID]id); it was refused as not JSON."""
    parse = get_template("mistral").parse
    turn = parse('Let me.[TOOL_CALLS]calculator[ARGS]{"expression": "2+2"}[TOOL_CALLS]lookup[CALL_ID]a1b2c3d4e[ARGS]{"city": "Zürich"}')
    first, second = turn.calls
    assert turn.content == "Let me."
    assert isinstance(first, ParsedCall) and (first.name, first.arguments, first.id) == ("calculator", '{"expression": "2+2"}', None)
    assert isinstance(second, ParsedCall) and (second.name, second.arguments, second.id) == ("lookup", '{"city": "Zürich"}', "a1b2c3d4e")
    (bad,) = parse("[TOOL_CALLS]calculator{}").calls
    assert not isinstance(bad, ParsedCall) and "[ARGS]" in bad.reason


@settings(deadline=None)  # the first example loads harmony's encoding (0.3 s under load)
@given(st.lists(st.sampled_from(["<|channel|>", "<|message|>", "<|call|>", "<|foo|>", '"', "\\", " ", "a", "é", "<|", "|>"]), max_size=60).map("".join))
def test_harmony_reads_text_in_pieces_that_decode_to_it(text: str) -> None:
    """The parser's input is encoded a piece at a time (linear); the ids
    still decode to the text, markers as their special tokens."""
    from agentfly_min.templates.harmony import _encode, encoding

    enc = encoding()
    ids = _encode(text * 300)  # longer than a piece
    assert enc.decode(ids) == text * 300
    assert [i for i in ids if enc.is_special_token(i)] == [i for i in enc.encode(text * 300, allowed_special="all") if enc.is_special_token(i)]


def test_harmony_hands_its_parser_only_readable_headers() -> None:
    parse = get_template("gpt-oss").parse
    call = "<|channel|>commentary to=functions.calculator <|constrain|>json<|message|>" + '{"expression": "1+1"}' + "<|call|>"
    assert parse(call).calls == (ParsedCall(name="calculator", arguments='{"expression": "1+1"}'),)
    # A header longer than any real one is not given to harmony (whose cost grows with it).
    long_header = "<|channel|>commentary to=functions.calculator" + " " * 5000 + "<|message|>{}<|call|>"
    (malformed,) = parse(long_header).calls
    assert isinstance(malformed, MalformedToolCall)
    assert parse("just text, no header").content == "just text, no header"
