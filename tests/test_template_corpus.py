"""Beyond the built-in families: a corpus of real chat templates through the
recognition and the ``hf`` bridge.

Each template (``tests/fixtures/templates``, copied with its provenance,
and the vendored upstream ones) is put on a tokenizer and run through one
tool-calling episode: the user asks, the model calls a tool, the result
comes back, the model answers. Every template either gives a token-exact
episode (through its built-in family, or the bridge) or is refused with a
reason; none is silently wrong. The outcome of each is the table in
``docs/template-corpus.md``, which this test regenerates and compares.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentfly_min import Agent, Completion, Output, Request, run_agent
from agentfly_min.templates.hf import render_text
from agentfly_min.templates.qwen25 import CHAT_TEMPLATE as QWEN25
from agentfly_min.templates.select import recognise, upstream_template
from agentfly_min.tools import calculator

from .conftest import CACHE, ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "templates"
UPSTREAM = ["qwen3.jinja", "qwen3-coder.jinja", "llama3.2.jinja", "llama3.3.jinja", "gpt-oss.jinja"]
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
ANSWER = "It is 4."


def corpus() -> dict[str, str]:
    """Every template of the corpus, by name."""
    texts = {"qwen2.5 (Qwen2.5-7B-Instruct)": QWEN25}
    texts.update({f"{file[: -len('.jinja')]} (vendored)": upstream_template(file) for file in UPSTREAM})
    texts.update({path.stem: path.read_text() for path in sorted(FIXTURES.glob("*.jinja"))})
    return texts


@cache
def _base() -> Any:
    from transformers import AutoTokenizer

    from agentfly_min.testing import tiny_model

    return AutoTokenizer.from_pretrained(str(tiny_model(CACHE)))


def tokenizer_with(template: str) -> Any:
    """The tiny Qwen2.5 tokenizer carrying ``template`` (tokens of other
    families are spelt in pieces: the episode is checked as text and ids
    of this tokenizer)."""
    import copy

    tokenizer = copy.copy(_base())
    tokenizer.chat_template = template
    return tokenizer


async def _episode(tokenizer: Any, name: str) -> tuple[Any, list[Request]]:
    seen: list[Request] = []
    eos = tokenizer.eos_token_id

    async def generate(request: Request) -> Completion:
        seen.append(request)
        text = CALL if len(seen) == 1 else ANSWER
        ids = (*tokenizer.encode(text, add_special_tokens=False), eos)
        return Completion(outputs=(Output(text=text, finish_reason="stop", token_ids=ids),))

    agent = Agent(model_name_or_path="m", tools=[calculator], template=name, max_turns=2)
    return await run_agent(agent, generate, {"question": "What is 2+2?"}, tokenizer=tokenizer), seen


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def outcome(name: str, template: str) -> tuple[str, str]:
    """(what happens, why) for one template."""
    tokenizer = tokenizer_with(template)
    family = recognise(tokenizer, model_type="gpt_oss" if name.startswith("gpt-oss") else None)
    if family != "hf":
        return f"built-in `{family}`", "recognised; held to this template by test_upstream_templates"
    trajectory, seen = anyio.run(_episode, tokenizer, "hf")
    if trajectory.error is not None:
        kind, _, reason = trajectory.error.partition(": ")
        if reason.startswith("the chat template"):  # the bridge's own refusal
            return "refused", _cell(reason[:150])
        return "refused: the template raises", _cell(reason[:150])
    context = list(seen[-1].prompt_ids or ())
    sent = tokenizer.decode(context)
    full = render_text(tokenizer, trajectory.messages[:3], (calculator.schema,), generation_prompt=True)
    if sent == full:
        return "token-exact (bridge)", "prefix-stable; the second prompt is also the template's own render of the conversation"
    at = next((k for k, (a, b) in enumerate(zip(sent, full, strict=False)) if a != b), min(len(sent), len(full)))
    return "token-exact (bridge)", _cell(
        f"prefix-stable; a re-render would differ from what the model saw at character {at} "
        f"(sampled {sent[at : at + 24]!r}, re-rendered {full[at : at + 24]!r})"
    )


def corpus_table() -> str:
    rows = ["| template | outcome | why |", "|---|---|---|"]
    for name, template in corpus().items():
        what, why = outcome(name, template)
        rows.append(f"| {name} | {what} | {why} |")
    return "\n".join(rows) + "\n"


def test_every_template_works_or_is_refused_with_a_reason() -> None:
    table = corpus_table()
    assert "silently" not in table
    document = (ROOT / "docs" / "template-corpus.md").read_text()
    assert document.endswith(table), "regenerate docs/template-corpus.md (see its first lines)"


@pytest.mark.parametrize("name", ["vllm-hermes", "qwq-32b", "vllm-chatml"])
def test_the_bridge_never_re_tokenises(name: str) -> None:
    """Where the bridge takes a template, the ids sent on the second turn are
    the first prompt, the sampled ids, then the splice the template puts
    there: nothing before is rendered again, whatever a re-render writes."""
    tokenizer = tokenizer_with(corpus()[name])
    trajectory, seen = anyio.run(_episode, tokenizer, "hf")
    assert trajectory.error is None and trajectory.token_level
    second = list(seen[1].prompt_ids or ())
    first_turn = [*tokenizer.encode(CALL, add_special_tokens=False), tokenizer.eos_token_id]
    assert second[: len(trajectory.prompt_ids) + len(first_turn)] == [*trajectory.prompt_ids, *first_turn]
    before = render_text(tokenizer, trajectory.messages[:2], (calculator.schema,), generation_prompt=False)
    after = render_text(tokenizer, trajectory.messages[:3], (calculator.schema,), generation_prompt=True)
    splice = tokenizer.decode(second[len(trajectory.prompt_ids) + len(first_turn) :])
    assert after.endswith(splice) and after[len(before) :] in splice  # what the template adds, and its end of turn


def test_a_template_that_drops_tool_results_is_refused_not_trained_on() -> None:
    """A prefix-stable template without a tool role (it renders user and
    assistant turns only) spliced the next generation prompt and nothing
    else: the model never saw the tool's answer, and the episode went on."""
    no_tools = (
        "{% for m in messages %}{% if m.role in ['user', 'assistant'] %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    trajectory, seen = anyio.run(_episode, tokenizer_with(no_tools), "hf")
    assert len(seen) == 1 and trajectory.error is not None and "drops tool results" in trajectory.error
