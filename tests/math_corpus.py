"""A corpus of (model output, gold answer, truly equal) for grading math
answers, in the answer formats of real benchmarks: GSM8K's integers, MATH's
LaTeX (fractions, radicals, intervals, tuples, multiple choice, degrees,
percent, money, polynomials, pi), AIME's integers.

Each gold answer gets outputs that are right (boxed as written, boxed in an
equivalent form, unboxed at the end of a sentence) and outputs that are
wrong: a different boxed value, and the expressions that used to fool a
last-number grader, which contain the gold number without equalling it
(``3/4`` against 4, ``2^3`` against 3, ``\\frac{1}{2}`` against 2,
``-\\sqrt{2}`` against 2, a range ``1-5`` against 5, a tuple against one of
its entries). The label is the truth by construction, not any grader's
verdict.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple


class Case(NamedTuple):
    output: str
    gold: str
    equal: bool


# gold as the benchmark writes it -> equivalent forms a model may box instead
GOLDS: dict[str, tuple[str, ...]] = {
    # GSM8K (integers, sometimes large)
    "18": ("18.0",), "70000": ("70,000", "70{,}000"), "540": ("540.00",), "64": (), "260": (), "45": (),
    "1200": ("1,200",), "7": ("7.0",), "16": (), "25": ("25.00",), "342": (), "99": (),
    # MATH
    "\\frac{3}{4}": ("0.75", "3/4", "\\dfrac{3}{4}", "\\tfrac34"),
    "\\frac{1}{2}": ("0.5", "1/2", "\\dfrac12", ".5"),
    "-\\frac{1}{3}": ("-1/3", "\\frac{-1}{3}"),
    "\\frac{5}{8}": ("0.625", "\\dfrac{5}{8}"),
    "2\\sqrt{3}": ("2 \\sqrt{3}",),
    "\\sqrt{2}": ("\\sqrt 2",),
    "(1,2)": ("(1, 2)",),
    "[-2,3)": ("[-2, 3)",),
    "\\text{(C)}": ("(C)",),
    "x^2+7x+10": ("x^2 + 7x + 10", "(x+2)(x+5)"),
    "2\\sqrt{2}": ("\\sqrt{8}",),
    "\\frac{\\sqrt{3}}{3}": ("\\frac{1}{\\sqrt{3}}",),
    "\\pi": (),
    "3\\pi": ("3 \\pi",),
    "\\frac{\\pi}{2}": ("\\pi/2",),
    "30^\\circ": ("30", "30^{\\circ}"),
    "12\\%": ("12",),
    "\\$1.50": ("1.50", "1.5"),
    "-2": ("-2.0", "\u22122"),
    "0": ("0.0", "-0"),
    "\\infty": (),
    "2.5": ("\\frac{5}{2}", "5/2"),
    "10": ("10.",),
    "8": ("\\frac{16}{2}",),
    "4": ("4.0",),
    "3": ("x = 3", "3.00"),
    # AIME (integers 0 to 999)
    "113": (), "204": (), "23": (), "5": (),
}

# Expressions that hold the number n without equalling it (for |n| >= 2).
TRAPS = (
    "So the ratio is 3/{n}.",
    "This gives {n}^2.",
    "Finally we get $\\frac{{1}}{{{n}}}$",
    "The value is $-\\sqrt{{{n}}}$",
    "The answer lies between 1-{n}",
    "The point is (1, {n}).",
    "So x = {n} + 1",
    "which is $2^{{{n}}}$",
    "giving {n}!",
)


def _integer(gold: str) -> int | None:
    try:
        value = Fraction(gold.replace(",", ""))
    except ValueError:
        return None
    return int(value) if value.denominator == 1 else None


def cases() -> list[Case]:
    corpus: list[Case] = []
    for gold, forms in GOLDS.items():
        corpus.append(Case(f"The final answer is $\\boxed{{{gold}}}$.", gold, True))
        corpus.extend(Case(f"Therefore the answer is $\\boxed{{{form}}}$", gold, True) for form in forms)
        n = _integer(gold)
        if n is not None:
            corpus.append(Case(f"Adding these up, the total is {gold}.", gold, True))
            corpus.append(Case(f"The final answer is \\boxed{{{n + 1}}}.", gold, False))
            if abs(n) >= 2:
                corpus.extend(Case(trap.format(n=n), gold, False) for trap in TRAPS)
        else:
            wrong = "-\\infty" if gold == "\\infty" else f"{gold}+1"  # infinity plus one is infinity
            corpus.append(Case(f"The final answer is \\boxed{{{wrong}}}.", gold, False))
            corpus.append(Case("The final answer is \\boxed{2}.", gold, False))
    return corpus
