"""The math reward against the truth and against math-verify (the grader
the field uses: Hugging Face's, on sympy), on a corpus of real benchmark
answer formats (tests/math_corpus.py): it never says equal where the
answers differ, and docs/math-grading.md reports both graders' errors."""

from __future__ import annotations

from math_verify import parse, verify

from agentfly_min.rewards import math_reward_string_equal

from .conftest import ROOT
from .math_corpus import Case, cases
from .test_rewards import finished


def ours(case: Case) -> bool:
    return math_reward_string_equal(finished(case.output), {"answer": case.gold}) == 1.0


def math_verify(case: Case) -> bool:
    return bool(verify(parse(f"${case.gold}$"), parse(case.output)))


def table(corpus: list[Case]) -> str:
    rows = ["| grader | says equal, answers differ | says different, answers equal |", "|---|---|---|"]
    for name, grade in (("`math_reward_string_equal`", ours), ("math-verify 0.9", math_verify)):
        verdicts = [(grade(case), case.equal) for case in corpus]
        false_positive = sum(said and not truth for said, truth in verdicts)
        false_negative = sum(truth and not said for said, truth in verdicts)
        different, equal = sum(not c.equal for c in corpus), sum(c.equal for c in corpus)
        rows.append(f"| {name} | {false_positive} of {different} | {false_negative} of {equal} |")
    return "\n".join(rows)


def test_no_false_positives_on_the_corpus() -> None:
    corpus = cases()
    assert len(corpus) >= 200
    wrong = [case for case in corpus if ours(case) and not case.equal]
    assert wrong == []


def test_the_issue_s_false_positives_are_gone() -> None:
    for text, gold in (("3/4", "4"), ("2^3", "3"), ("\\frac{1}{2}", "2"), ("-\\sqrt{2}", "2")):
        assert math_reward_string_equal(finished(text), {"answer": gold}) == 0.0, text


def test_the_docs_report_both_graders_on_the_corpus() -> None:
    assert table(cases()) in (ROOT / "docs" / "math-grading.md").read_text()
