"""The generative reward model (GenRM), text side: prompts, verdicts, rewards, benchmarks.

Why this file exists: FAPO's GenRM is an ordinary chat model that reads a problem, its
ground truth and a solution, critiques it, and ends with `\\boxed{k}`: the index of the
first wrong step, or -1 for "no error" (docs/method.md §3; paper §3.1). Everything about it that is plain
text lives here: the two prompt templates the authors use, step splitting and
`<paragraph_i>` tagging, verdict parsing (the benchmark's and the policy-time one), the
GenRM's own RL reward, and the metrics of its two benchmarks (docs/method.md §7). Nothing here
imports torch or loads a model: the judge that runs a GenRM during policy training is
fapo_mini/judge.py (GenRMJudge).

What it simplifies away: no chat template (the prompts are the user turn's text; the
tokenizer's `apply_chat_template` wraps them), no sampling, no per-subset bookkeeping
(ProcessBench's four subsets are scored one call each, then averaged by the caller).

Conventions chosen here (the authors' code would raise or return nan):
- a metric whose denominator is empty is 0.0 (precision with no predicted flaws,
  F1 when precision and recall are both 0);
- `majority_vote` ignores invalid (None) votes and breaks ties by first appearance,
  which is what `Counter.most_common` does in the authors' `evaluate_genrm.py`.
"""

import re
from collections import Counter

from fapo_mini.verify import extract_boxed

# docs/method.md §3 (paper App. F): the GenRM's training and benchmark prompt (user turn), as FAPO-Critic rows hold it.
CRITIC_TEMPLATE = (
    "The following is a math problem with its ground truth answer, along with an AI solution "
    "(split into paragraphs, enclosed with tags and indexed from 0):\n\n"
    "[Math Problem]\n\n{problem}\n\n"
    "[Ground Truth]\n\n{ground_truth}\n\n"
    "[AI Solution]\n\n{solution}\n\n"
    "Your task is to review and critique the solution paragraph by paragraph. Once you identify "
    "an error in a paragraph, return the index of the paragraph where the earliest error occurs. "
    "Otherwise, return the index of -1 (which typically denotes 'not found').\n\n"
    "Please reason step by step, put your final answer (i.e., the index) in \\boxed{{}}."
)

# docs/method.md §3: the policy-time variant: the raw, untagged response, "steps" for "paragraphs".
# Text from yyDing1/FAPO fapo/fapo_reasoning/reward_fn.py (QUERY_TEMPLATE_PRM_GT) and, identical,
# verl recipe/fapo/reward_fn_reasoning.py (FAPO_GENRM_TEMPLATE).
POLICY_CRITIC_TEMPLATE = (
    "The following is a math problem with its ground truth answer, along with an AI solution "
    "(split into steps):\n\n"
    "[Math Problem]\n\n{problem}\n\n"
    "[Ground Truth]\n\n{ground_truth}\n\n"
    "[AI Solution]\n\n{solution}\n\n"
    "Your task is to review and critique the solution step by step. Once you identify an error "
    "in a step, return the index of the step where the earliest error occurs. Otherwise, return "
    "the index of -1 (which typically denotes 'not found').\n\n"
    "Please reason step by step, put your final answer (i.e., the index) in \\boxed{{}}."
)

VERDICT_WINDOW = 300  # docs/method.md §3: the verdict is read from the critique's last 300 characters
NO_ERROR = -1  # the verdict for a solution without a wrong step


# ---------------------------------------------------------------- steps and prompts

def split_steps(solution: str, by: str = "blank") -> list[str]:
    """Split a solution into stripped, non-empty steps.

    `by="blank"`: steps are separated by an empty line, i.e. "\\n\\n" (real math). A line of
    spaces does not separate: one FAPO-Critic paragraph holds such a line inside it, so the
    authors split on "\\n\\n" exactly (inferred). `by="line"`: one step per line (the toy world).
    `split_steps("a\\n\\n\\nb\\nc")` -> `["a", "b\\nc"]`; with `by="line"` -> `["a", "b", "c"]`.
    """
    assert by in ("blank", "line"), by
    parts = solution.split("\n\n") if by == "blank" else solution.splitlines()
    return [p.strip() for p in parts if p.strip()]


def tag_steps(steps: list[str]) -> str:
    """Tag steps for the GenRM prompt.

    `["a", "b"]` -> `"<paragraph_0>\\na\\n</paragraph_0>\\n\\n<paragraph_1>\\nb\\n</paragraph_1>"`.
    """
    # docs/method.md §3: each step i as <paragraph_i>\n{step}\n</paragraph_i>, joined by a blank line
    return "\n\n".join(f"<paragraph_{i}>\n{step}\n</paragraph_{i}>" for i, step in enumerate(steps))


def critic_prompt(problem: str, ground_truth, steps: list[str]) -> str:
    """The GenRM's training / benchmark prompt for a solution already split into steps."""
    return CRITIC_TEMPLATE.format(problem=problem, ground_truth=ground_truth, solution=tag_steps(steps))


def policy_critic_prompt(problem: str, ground_truth, solution: str) -> str:
    """The prompt the authors send during policy training: the whole response, untagged.

    The GenRM is left to split the solution into steps itself; only "-1 or not" is used.
    """
    return POLICY_CRITIC_TEMPLATE.format(problem=problem, ground_truth=ground_truth, solution=solution)


# ---------------------------------------------------------------- verdicts and rewards

def parse_verdict(text: str, n_steps: int) -> int | None:
    """The GenRM's answer: the last boxed integer in the last 300 characters of `text`.

    None when there is no box, its content is not an integer (`"2.5"`, `"two"`), or the
    index is out of range; valid is -1 or 0..n_steps-1. `"... \\boxed{3}"` with 5 steps -> 3.
    """
    answer = extract_boxed(text[-VERDICT_WINDOW:])  # docs/method.md §3: last box in the last 300 chars
    # An integer as int() reads one (spaces, a sign), ASCII digits only.
    if answer is None or not re.fullmatch(r"\s*[+-]?[0-9]+\s*", answer):
        return None
    k = int(answer)
    return k if k == NO_ERROR or 0 <= k < n_steps else None  # docs/method.md §3: -1 or 0 <= k < n


def outcome_reward(pred: int | None, label: int) -> float:
    """Outcome-only reward (the paper's ablation): +1 when the flawed / clean call is right.

    `pred` is `parse_verdict`'s output (None = invalid), `label` the first wrong step or -1.
    """
    if pred is None:
        return -1.0  # docs/method.md §3: invalid / unparsable -> -1
    return 1.0 if (pred == NO_ERROR) == (label == NO_ERROR) else -1.0  # docs/method.md §3 (paper Eq. 7): R_outcome


def step_reward(pred: int | None, label: int, n_steps: int) -> float:
    """The GenRM's step-wise RL reward (docs/method.md §3's table; paper §3.1, Eq. 7).

    - pred None (invalid verdict): -1
    - label -1 (clean): +1 if pred is -1, else -1
    - label >= 0 (flawed): -1 if pred is -1, else 1 - abs(pred - label) / n_steps
    e.g. `step_reward(2, 4, 8)` -> 0.75. `pred` is `parse_verdict`'s output, `label` in
    -1..n_steps-1 (preflight.check_critic_labels checks the rows before training).
    """
    reward = outcome_reward(pred, label)
    if pred is not None and pred != NO_ERROR and label != NO_ERROR:
        reward -= abs(pred - label) / n_steps  # docs/method.md §3 (paper Eq. 7): R_process = -|t - t*| / n
    return reward


# ---------------------------------------------------------------- benchmarks

def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def flawed_positive_metrics(preds: list[int | None], labels: list[int]) -> dict:
    """FlawedPositiveBench (docs/method.md §7; paper §3.1, Eq. 6) on correct-answer samples only: positive = flawed.

    Predicted flawed = `pred != -1`, so an invalid verdict (None) counts as flawed.
    Returns precision, recall, f1, acc and the confusion counts tp, fp, fn, tn.
    """
    assert len(preds) == len(labels) > 0, (len(preds), len(labels))
    tp = fp = fn = tn = 0
    for pred, label in zip(preds, labels):
        said_flawed, is_flawed = pred != NO_ERROR, label != NO_ERROR  # docs/method.md §7: None -> flawed
        tp += said_flawed and is_flawed
        fp += said_flawed and not is_flawed
        fn += is_flawed and not said_flawed
        tn += not said_flawed and not is_flawed
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return dict(precision=precision, recall=recall, f1=_harmonic(precision, recall),  # paper Eq. 6
                acc=(tp + tn) / len(labels), tp=tp, fp=fp, fn=fn, tn=tn)


def processbench_f1(preds: list[int | None], labels: list[int]) -> dict:
    """ProcessBench F1 (docs/method.md §7; paper §4.2) for one subset.

    err_acc: share of erroneous samples whose first wrong step is found exactly;
    correct_acc: share of clean samples answered -1; f1: their harmonic mean.
    Both kinds of sample must be present: a precondition the caller checks (rollout.py does).
    """
    assert len(preds) == len(labels), (len(preds), len(labels))
    erroneous = [(p, y) for p, y in zip(preds, labels) if y != NO_ERROR]
    clean = [p for p, y in zip(preds, labels) if y == NO_ERROR]
    assert erroneous and clean, f"need erroneous and clean samples, got {len(erroneous)} and {len(clean)}"
    err_acc = sum(p == y for p, y in erroneous) / len(erroneous)  # docs/method.md §7: exact first error
    correct_acc = sum(p == NO_ERROR for p in clean) / len(clean)  # docs/method.md §7: -1 on clean ones
    return dict(err_acc=err_acc, correct_acc=correct_acc, f1=_harmonic(err_acc, correct_acc))


def localisation_counts(preds: list[int | None], labels: list[int]) -> dict:
    """Where the flags on flawed samples land (docs/method.md §7), as (numerator, denominator):
    exact_step_acc over flawed samples (flagged at their first wrong step: ProcessBench's err_acc);
    late / early_flag_share over the flags on flawed samples (valid, not -1) after / before it."""
    flawed = [(p, y) for p, y in zip(preds, labels) if y != NO_ERROR]
    flags = [(p, y) for p, y in flawed if p is not None and p != NO_ERROR]
    return dict(exact_step_acc=(sum(p == y for p, y in flawed), len(flawed)),
                late_flag_share=(sum(p > y for p, y in flags), len(flags)),
                early_flag_share=(sum(p < y for p, y in flags), len(flags)))


def localisation(preds: list[int | None], labels: list[int]) -> dict:
    """`localisation_counts` as shares (0.0 where nothing was counted)."""
    return {k: _ratio(*v) for k, v in localisation_counts(preds, labels).items()}


def majority_vote(preds: list[int | None]) -> int | None:
    """Most frequent valid verdict among several critiques of one sample; None if none is valid.

    Ties go to the verdict that appeared first: `majority_vote([2, -1, None, -1, 2])` -> 2.
    """
    counts = Counter(p for p in preds if p is not None)
    if not counts:
        return None
    return max(counts, key=counts.get)  # max keeps the first of equal counts (insertion order)


def processbench_row(row: dict) -> tuple[str, list[str], int]:
    """ProcessBench's row format -> (problem, steps, label).

    A row holds `problem`, `steps` (list of str), `label` (first wrong step or -1) and
    `final_answer_correct`; FlawedPositiveBench keeps the rows where the latter is true.
    ProcessBench data enters here, so a malformed row is a ValueError that names the field.
    """
    missing = {"problem", "steps", "label"} - set(row)
    if missing:
        raise ValueError(f"ProcessBench row lacks {sorted(missing)}")
    steps, label = list(row["steps"]), row["label"]
    if not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("ProcessBench row's steps must be a non-empty list of strings")
    if type(label) is not int or not -1 <= label < len(steps):
        raise ValueError(f"ProcessBench row's label must be an int in -1..{len(steps) - 1}, got {label!r}")
    return row["problem"], steps, label


# ---------------------------------------------------------------- the policy-time verdict

def policy_verdict(critique: str) -> int | None:
    """The authors' policy-time reading of a critique (verl recipe/fapo): the last boxed
    integer of the whole critique, no window and no range check (the step count of an
    untagged solution is unknown). None when there is none."""
    boxed = extract_boxed(critique)
    try:
        return int(boxed.strip()) if boxed is not None else None
    except ValueError:
        return None
