"""fapo_mini.genrm's text side against the authors' data rows and hand-computed tables."""

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from fapo_mini.genrm import (
    critic_prompt,
    flawed_positive_metrics,
    localisation,
    localisation_counts,
    majority_vote,
    outcome_reward,
    parse_verdict,
    policy_critic_prompt,
    processbench_f1,
    processbench_row,
    split_steps,
    step_reward,
    tag_steps,
)

ROWS = [json.loads(line) for line in (Path(__file__).parent / "fixtures" / "fapo-critic-sample.jsonl").open()]

# Our own parse of a FAPO-Critic prompt, written without looking at critic_prompt.
PROMPT_PARTS = re.compile(
    r"\A.*?\n\n\[Math Problem\]\n\n(?P<problem>.*)\n\n\[Ground Truth\]\n\n(?P<truth>.*?)"
    r"\n\n\[AI Solution\]\n\n(?P<solution>.*)\n\nYour task is to review.*\Z",
    re.S,
)
PARAGRAPH = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.S)


def parse_row(row):
    (message,) = row["prompt"]
    parts = PROMPT_PARTS.match(message["content"])
    numbered = PARAGRAPH.findall(parts["solution"])
    assert [int(i) for i, _ in numbered] == list(range(len(numbered)))
    return message, parts["problem"], parts["truth"], [text for _, text in numbered]


def test_critic_prompt_rebuilds_every_fapo_critic_row():
    assert len(ROWS) == 60
    for row in ROWS:
        message, problem, truth, steps = parse_row(row)
        assert message["role"] == "user"
        assert critic_prompt(problem, truth, steps) == message["content"]
        n_steps, label = row["extra_info"]["total_steps"], row["reward_model"]["ground_truth"]
        assert len(steps) == n_steps
        assert label == -1 or 0 <= label < n_steps
        # Paragraphs are what blank-line splitting of the plain solution gives back.
        assert split_steps("\n\n".join(steps)) == steps


def test_labels_cover_clean_and_flawed():
    labels = [row["reward_model"]["ground_truth"] for row in ROWS]
    assert labels.count(-1) == 27 and len(labels) - labels.count(-1) == 33


def test_policy_critic_prompt_exact_text():
    expected = (
        "The following is a math problem with its ground truth answer, along with an AI solution (split into steps):\n\n"
        "[Math Problem]\n\nWhat is 2+3?\n\n[Ground Truth]\n\n5\n\n[AI Solution]\n\n2+3=5.\n\nSo \\boxed{5}.\n\n"
        "Your task is to review and critique the solution step by step. Once you identify an error in a step, "
        "return the index of the step where the earliest error occurs. Otherwise, return the index of -1 "
        "(which typically denotes 'not found').\n\n"
        "Please reason step by step, put your final answer (i.e., the index) in \\boxed{}."
    )
    assert policy_critic_prompt("What is 2+3?", "5", "2+3=5.\n\nSo \\boxed{5}.") == expected


def test_prompts_keep_braces_in_problem_text():
    prompt = critic_prompt("Find {x} with $\\frac{1}{2}$.", "{1}", ["x = {1}"])
    assert "Find {x} with $\\frac{1}{2}$." in prompt and "\n{1}\n" in prompt and "\\boxed{}." in prompt


def test_tag_steps_and_split_steps():
    assert tag_steps(["a", "b"]) == "<paragraph_0>\na\n</paragraph_0>\n\n<paragraph_1>\nb\n</paragraph_1>"
    assert split_steps("a\n\n\nb\nc") == ["a", "b\nc"]
    assert split_steps("a\n \t\nb") == ["a\n \t\nb"]  # a line of spaces does not split (row 29 has one)
    assert split_steps("a\n\n\nb\nc", by="line") == ["a", "b", "c"]
    assert split_steps(" \n\n x \n\n") == ["x"]


@pytest.mark.parametrize("text,n_steps,expected", [
    ("The error is in paragraph 3. \\boxed{3}", 5, 3),
    ("No error found. \\boxed{-1}", 5, -1),
    ("\\boxed{0}", 1, 0),
    ("\\boxed{ 2 }", 5, 2),  # int() strips spaces
    ("\\boxed{+2}", 5, 2),
    ("\\boxed{5}", 5, None),  # out of range: valid is 0..n-1
    ("\\boxed{-2}", 5, None),
    ("\\boxed{2.5}", 5, None),  # not an integer
    ("\\boxed{two}", 5, None),
    ("\\boxed{\\text{2}}", 5, None),
    ("\\boxed{}", 5, None),
    ("I think paragraph 2 is wrong.", 5, None),  # no box
    ("\\boxed{1} then \\boxed{3}", 5, 3),  # the last box counts
    ("\\boxed{1} then \\boxed{x}", 5, None),  # no fallback to an earlier box
    ("\\boxed{2}" + "." * 291, 5, 2),  # box ends exactly 300 chars from the end
    ("\\boxed{2}" + "." * 292, 5, None),  # its backslash is outside the window
])
def test_parse_verdict(text, n_steps, expected):
    assert parse_verdict(text, n_steps) == expected


# docs/method.md §3's table (paper Eq. 7): (pred, label, n_steps, step reward, outcome-only reward).
REWARD_TABLE = [
    (None, -1, 5, -1.0, -1.0),  # invalid
    (None, 2, 5, -1.0, -1.0),
    (-1, -1, 5, 1.0, 1.0),  # clean, called clean
    (3, -1, 5, -1.0, -1.0),  # clean, called flawed
    (-1, 2, 5, -1.0, -1.0),  # flawed, called clean
    (2, 2, 5, 1.0, 1.0),  # exact first error
    (4, 2, 5, 0.6, 1.0),  # 1 - |4 - 2| / 5
    (0, 7, 8, 0.125, 1.0),  # 1 - 7 / 8
    (7, 0, 8, 0.125, 1.0),
]


@pytest.mark.parametrize("pred,label,n_steps,step,outcome", REWARD_TABLE)
def test_rewards(pred, label, n_steps, step, outcome):
    assert step_reward(pred, label, n_steps) == pytest.approx(step, abs=1e-12)
    assert outcome_reward(pred, label) == outcome


def test_reward_from_raw_critique():
    # A verdict out of range is invalid, so the reward is -1 even though the label is flawed.
    assert step_reward(parse_verdict("\\boxed{9}", 5), 2, 5) == -1.0
    assert step_reward(parse_verdict("Paragraph 1 is wrong: \\boxed{1}", 5), 2, 5) == pytest.approx(0.8)


def test_flawed_positive_metrics_hand_confusion():
    preds = [2, -1, None, 0, -1, 3, -1, 1]
    labels = [1, -1, -1, -1, 2, 3, -1, 4]
    # said flawed & flawed: idx 0, 5, 7 -> tp 3; said flawed & clean: idx 2 (None), 3 -> fp 2;
    # said clean & flawed: idx 4 -> fn 1; said clean & clean: idx 1, 6 -> tn 2.
    m = flawed_positive_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 2)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3)  # 2 * 0.6 * 0.75 / 1.35
    assert m["acc"] == pytest.approx(5 / 8)


def test_flawed_positive_metrics_no_predicted_flaws():
    m = flawed_positive_metrics([-1, -1], [-1, 0])
    assert (m["precision"], m["recall"], m["f1"], m["acc"]) == (0.0, 0.0, 0.0, 0.5)


def test_processbench_f1_hand():
    preds = [2, -1, 1, -1, 0, None, -1, 3]
    labels = [2, -1, 3, -1, -1, 1, -1, 3]
    # erroneous (label >= 0): idx 0 hit, 2 miss, 5 miss, 7 hit -> 2/4;
    # clean (label -1): idx 1 hit, 3 hit, 4 miss, 6 hit -> 3/4.
    m = processbench_f1(preds, labels)
    assert m["err_acc"] == 0.5 and m["correct_acc"] == 0.75
    assert m["f1"] == pytest.approx(0.6)  # 2 * 0.5 * 0.75 / 1.25
    assert processbench_f1([-1, 0], [-1, 1])["f1"] == 0.0  # both accuracies in, one is zero


def test_localisation_hand():
    preds = [2, -1, 4, -1, 0, None, 1, 3]
    labels = [2, -1, 3, -1, -1, 1, 3, 3]
    # flawed (label >= 0): idx 0 exact, 2 late, 5 invalid, 6 early, 7 exact -> exact 2/5;
    # flags on flawed rows: idx 0, 2, 6, 7 -> late 1/4, early 1/4 (idx 4 is a clean row's flag)
    m = localisation(preds, labels)
    assert (m["exact_step_acc"], m["late_flag_share"], m["early_flag_share"]) == (0.4, 0.25, 0.25)
    assert m["exact_step_acc"] == processbench_f1(preds, labels)["err_acc"]
    assert localisation_counts(preds, labels) == dict(exact_step_acc=(2, 5), late_flag_share=(1, 4),
                                                      early_flag_share=(1, 4))   # what train_genrm.py sums over ranks
    assert localisation([-1], [-1]) == dict(exact_step_acc=0.0, late_flag_share=0.0, early_flag_share=0.0)


def test_majority_vote():
    assert majority_vote([2, -1, None, -1, 2]) == 2  # tie: the first to appear wins
    assert majority_vote([3, 1, 1]) == 1
    assert majority_vote([None, -1, None, None]) == -1  # invalid votes are not counted
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    # Same as the authors' Counter(valid).most_common(1) on random ballots.
    rng = random.Random(0)
    for _ in range(200):
        ballots = [rng.choice([None, -1, 0, 1, 2]) for _ in range(rng.randint(1, 9))]
        valid = [b for b in ballots if b is not None]
        expected = Counter(valid).most_common(1)[0][0] if valid else None
        assert majority_vote(ballots) == expected


def test_processbench_row():
    row = {"id": "gsm8k-0", "generator": "hand-made", "problem": "What is 2+3?",
           "steps": ["2+3=6.", "So 6."], "final_answer_correct": False, "label": 0}
    assert processbench_row(row) == ("What is 2+3?", ["2+3=6.", "So 6."], 0)
    with pytest.raises(ValueError, match="label"):
        processbench_row({**row, "label": 2})
    with pytest.raises(ValueError, match="lacks"):
        processbench_row({"problem": "p", "steps": ["a"]})
    with pytest.raises(ValueError, match="steps"):
        processbench_row({**row, "steps": []})
