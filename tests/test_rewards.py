"""math_reward_string_equal: the exact rule, edge cases included."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfly_min import Message, Trajectory
from agentfly_min.rewards import extract_answer, math_reward_string_equal, normalize_answer
from agentfly_min.rewards.math import as_number


def finished(*texts: str) -> Trajectory:
    messages = [Message(role="user", content="q")] + [Message(role="assistant", content=t) for t in texts]
    return Trajectory(
        task_id="t", group_id="t", request_id="r", messages=tuple(messages), finish_reason="answer",
        num_turns=len(texts), token_level=False,
    )


@pytest.mark.parametrize(
    ("text", "answer", "reward"),
    [
        ("The answer is \\boxed{42}.", 42, 1.0),
        ("\\boxed{41} no wait \\boxed{42}", "42", 1.0),  # the last box counts
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),  # nested braces
        ("\\boxed{ 1,234 }", "1234", 1.0),  # thousands separators, spaces
        ("So 12 apples, then 7 more: 19", "19", 1.0),  # no box: the last number
        ("It costs $1,000,000.", 1000000, 1.0),
        ("x = 3.0", "3", 1.0),  # trailing .0
        ("x = 2.50", "2.5", 1.0),  # trailing zeros
        ("-7 is it", "-7", 1.0),
        ("\\boxed{42} but 43 is also near", "42", 1.0),  # a box beats later numbers
        ("The answer is 42", "43", 0.0),
        ("no digits here", "1", 0.0),
        ("\\boxed{0.5}", "1/2", 1.0),  # rationals compare as values
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 0.0),  # no algebra: strings after light normalisation
        ("\\boxed{42", "42", 1.0),  # an unclosed box is ignored; the last number counts
        # Numbers are compared as numbers.
        ("\\boxed{\u22123}", "-3", 1.0),  # a unicode minus is a minus
        ("\\boxed{.5}", "0.50", 1.0),
        ("\\boxed{0.5}", ".5", 1.0),
        ("\\boxed{42.}", "42", 1.0),
        ("\\boxed{+42}", "42", 1.0),
        ("\\boxed{-0}", "0", 1.0),
        ("\\boxed{1{,}000}", "1000", 1.0),
        ("\\boxed{42\\%}", "42", 1.0),
        ("\\boxed{\\text{42}}", "42", 1.0),
        ("$\\boxed{7}$", "7", 1.0),
        ("so about 1e3", "3", 0.0),  # the 3 of 1e3 is not a number on its own
        ("so about 1e3", "1000", 1.0),
        ("it is between 3-5", "3", 0.0),  # a range, not "3" and "-5"
        ("it is between 3-5", "5", 0.0),  # nor "5": the number is part of an expression
        ("3/4", "4", 0.0),
        ("so 2 ^ 3.", "3", 0.0),
        ("(1, 2).", "2", 0.0),
        ("x = 4", "4", 1.0),  # an assignment binds nothing
        ("4^\\circ", "4", 1.0),
        ("\\boxed{42} and then \\boxed{4", "42", 1.0),  # an unclosed last box hides nothing
        ("x3 is the variable", "3", 0.0),
        ("\\boxed{1/2}", "1/2", 1.0),  # not numbers: exact strings
    ],
)
def test_math_reward(text: str, answer: Any, reward: float) -> None:
    assert math_reward_string_equal(finished(text), {"answer": answer}) == reward


def test_only_the_last_assistant_message_counts() -> None:
    assert math_reward_string_equal(finished("\\boxed{4}", "I am not sure"), {"answer": "4"}) == 0.0


def test_no_assistant_message_scores_zero() -> None:
    assert math_reward_string_equal(finished(), {"answer": "4"}) == 0.0


def test_task_without_answer_raises() -> None:
    with pytest.raises(KeyError):
        math_reward_string_equal(finished("4"), {})


def test_helpers() -> None:
    assert extract_answer("a 1 b 2.5 c") == "2.5"
    assert extract_answer("nothing") is None
    assert normalize_answer(" $12,345.600 ") == "12,345.600"
    assert as_number(" $12,345.600 ") == as_number("12345.6")
    assert as_number("0.000") == 0
    assert as_number("1,2") is None  # not a thousands separator
    assert normalize_answer("\\text{\u221242}\\%") == "-42"


def _boxes_quadratic(text: str) -> list[str]:
    """The box reader before it was made linear: the reference it must equal."""
    found: list[str] = []
    at = text.find("\\boxed{")
    while at >= 0:
        depth, start = 1, at + len("\\boxed{")
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:j])
                    break
        at = text.find("\\boxed{", at + len("\\boxed{"))
    return found


@given(st.lists(st.sampled_from(["\\boxed{", "{", "}", "1", "x", " "]), max_size=40).map("".join))
def test_the_linear_box_reader_equals_the_quadratic_one(text: str) -> None:
    from agentfly_min.rewards.math import _last_box

    boxes = _boxes_quadratic(text)
    assert _last_box(text) == (boxes[-1] if boxes else None)
