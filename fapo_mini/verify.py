"""Outcome verification: is a math response's final answer right?

Why this file exists: every reward in FAPO starts from the rule-based outcome check
that DAPO uses (docs/method.md §2; paper §2.1, Eq. 4): take the last `\\boxed{...}` in the last 300
characters of the response, normalise it and the ground truth with DAPO's
`normalize_final_answer`, compare the two strings. This file is our own reading of
that rule (verl `verl/utils/reward_score/math_dapo.py`), written to be read top to
bottom; tests/test_verify.py checks it against outputs of DAPO's own code.

What it simplifies away: there is no symbolic equivalence (sympy, math-verify), so
`0.5` and `\\frac{1}{2}` are different answers, exactly as in the authors' reward.
Three deliberate deviations from DAPO, presentation-only and applied to both sides:
`\\left` / `\\right` are dropped, `\\dfrac` / `\\tfrac` read as `\\frac`, and one
trailing `.` is dropped. DAPO scores `\\boxed{\\dfrac{1}{2}}` against `\\frac{1}{2}` as
wrong; we score it right. Like DAPO, only the braced form `\\boxed{...}` is an
answer: `\\boxed 5` is not.
"""

import re

BOXED = "\\boxed{"
ANSWER_WINDOW = 300  # docs/method.md §2: only the response's last 300 characters are searched

# DAPO's literal replacements, in DAPO's order (order matters: "an " goes before "a ").
SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]

# Units, filler words and TeX spacing DAPO deletes wherever they appear, in DAPO's order.
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm",
    "gm", "pounds", "meters", "meals", "edges", "students", "childrentickets",
    "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3",
    "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!",
    "{,}", '"', "\\dots",
]

# Wrappers whose content is the answer. `\text{...}` etc. stop at the first `}`; `\boxed{`
# takes everything up to the last `}` (DAPO's non-greedy / greedy choice, kept as is).
UNWRAP = [
    (re.compile(r"\\text\{(.*?)\}"), r"\1"),
    (re.compile(r"\\textbf\{(.*?)\}"), r"\1"),
    (re.compile(r"\\overline\{(.*?)\}"), r"\1"),
    (re.compile(r"\\boxed\{(.*)\}"), r"\1"),
]


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, or None.

    Braces are counted, so nested braces are kept: `"so \\boxed{\\frac{1}{2}}."` ->
    `"\\frac{1}{2}"`. As in DAPO, only the last `\\boxed{` is tried: if its braces never
    close (a truncated response) the answer is None, not an earlier box.
    """
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 0
    for i in range(start + len(BOXED) - 1, len(text)):  # begin at the box's own "{"
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(BOXED):i]
    return None


def normalize_final_answer(s: str) -> str:
    """DAPO's answer normalisation (plus the three deviations in the module docstring).

    Examples: `"x = 5"` -> `"5"`, `"10\\text{ cm}"` -> `"10"`, `"1,000"` -> `"1000"`,
    `"\\frac12"` -> `"\\frac{1}{2}"`, `"$\\sqrt2$"` -> `"\\sqrt{2}"`, `"90^\\circ"` -> `"90"`.
    """
    # Our deviations: presentation-only TeX that DAPO leaves in place.
    s = re.sub(r"\\(left|right)(?![a-zA-Z])", "", s)  # \left( -> (, but \rightarrow stays
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    # "x = 5" and "a+b=5" keep only what follows the last "=".
    s = s.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    # Text between the first two "$" is the answer (per line: "." does not cross "\n").
    s = re.sub(r"(.*?)\$(.*?)\$(.*)", r"$\2$", s)
    for pattern, repl in UNWRAP:
        s = pattern.sub(repl, s)
    # Shorthand TeX: \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}.
    s = re.sub(r"frac([^{])(.)", r"frac{\1}{\2}", s)
    s = re.sub(r"sqrt([^{])", r"sqrt{\1}", s)
    s = s.replace("$", "")
    s = s.strip().removesuffix(".")  # our deviation: "5." -> "5"
    # Thousands separators: "1,000" -> "1000" (only when nothing but digits remains).
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


def math_correct(response: str, ground_truth: str) -> bool:
    """docs/method.md §2 (paper Eq. 4): does the last boxed answer in the response's tail match the truth?

    `math_correct("... so the answer is \\boxed{1,000}.", "1000")` -> True. A response
    without a closed `\\boxed{}` in its last 300 characters is wrong.
    """
    truth = normalize_final_answer(ground_truth)   # never empty: preflight.check_ground_truths
    answer = extract_boxed(response[-ANSWER_WINDOW:])  # docs/method.md §2: last box in the last 300 chars
    # docs/method.md §2: normalised on both sides, then a plain string compare.
    return answer is not None and normalize_final_answer(answer) == truth
