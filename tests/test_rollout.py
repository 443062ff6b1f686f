"""rollout.py's scoring: unbiased pass@k against brute force, the policy summary by hand, and
toyeval.py's per-split summary against rollout.py's, and its kinds of solution by hand."""
import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rollout  # noqa: E402
from fapo_mini import scoring, toyeval, toyworld  # noqa: E402


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (4, 0), (4, 1), (4, 3), (8, 5), (8, 8), (6, 2)])
def test_pass_at_k_is_the_mean_over_all_k_subsets(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert scoring.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets), abs=1e-12)


def test_score_policy_by_hand():
    p = "a=7;b=a+5;c=b*3;?c\n"  # b = 2, c = 6
    row = {"data_source": "toyworld", "prompt": p, "reward_model": {"ground_truth": "6"}}
    responses = ["b=7+5=2\nc=2*3=6\nans=6",             # clean
                 "ans=6",                               # shortcut (no step written), correct
                 "b=7+5=2\nc=2*3=6\nans=6\nc=2*3=6",    # after_answer (any line after ans), correct
                 "b=7+5=2\nans=6",                      # jump, correct
                 "b=7+5=3\nc=3*3=9\nans=9",             # wrong_step, wrong
                 "b=7+5=2\nc=2*3=6\nans=5",             # wrong_answer, wrong
                 "b=7+5=2\nc=2*3=5\nans=6",             # wrong_step, correct
                 "b=7+5=2"]                             # stopped, wrong
    rows = [{**row, "response": r} for r in responses]
    out = rollout.score_policy(rows, n=4)
    correct = [True, True, True, True, False, False, True, False]
    assert [r["correct"] for r in rows] == correct
    assert out["accuracy"] == 5 / 8 and "avg@4" not in out   # accuracy is avg@n: one name for one number
    # two "prompts" of 4 samples: 4 and 1 correct
    assert out["pass@1"] == pytest.approx((4 / 4 + 1 / 4) / 2)
    assert out["pass@2"] == pytest.approx((1 + (1 - 3 / 6)) / 2)  # C(3,2)/C(4,2) = 3/6
    assert out["pass@4"] == 1.0
    assert out["fp_ratio"] == 4 / 5  # shortcut, after_answer, jump, wrong_step among 5 correct
    # the toy world's own evaluation also counts each kind of solution: [correct, total]
    assert toyeval.score([row] * len(responses), responses)["kinds"] == {
        "clean": [1, 1], "shortcut": [1, 1], "jump": [1, 1], "wrong_step": [1, 2], "wrong_answer": [0, 1],
        "after_answer": [1, 1], "stopped": [0, 1]}


def test_flaw_kind_of_every_teacher_style():
    want = {"clean": "clean", "shortcut": "shortcut", "jump": "jump", "sloppy": "wrong_step"}
    rng = random.Random(0)
    for prob in toyworld.generate(100, 0, "train", steps=(3, 6)):  # k >= 3: a jump (1-2 steps) leaves a step
        for style, kind in want.items():
            assert toyworld.flaw_kind(prob.prompt, toyworld.teacher_solution(prob.prompt, style, rng)) == kind


def test_toyeval_score_agrees_with_rollout_score_policy():
    """toyeval.py's per-split summary against rollout.py's scoring of the same rows, and its cue
    counts by hand."""
    rng = random.Random(3)
    probs = toyworld.generate(120, 0, "test") + toyworld.generate(40, 0, "shift")
    rows = toyworld.policy_rows(probs, "test")
    responses = [toyworld.teacher_solution(r["prompt"], rng.choice(["clean", "shortcut", "jump", "sloppy"]), rng)
                 + rng.choice(["", "", "\nans=1"]) for r in rows]
    mine = toyeval.score(rows, responses)
    ref = rollout.score_policy([{**r, "response": s} for r, s in zip(rows, responses)], n=1)
    assert mine["accuracy"] == ref["accuracy"] == mine["pass@1"] and mine["fp_ratio"] == ref["fp_ratio"]
    cue = [(p, s) for p, s in zip(probs, responses) if p.cue]
    assert mine["cue_prompts"] == len(cue) and len(cue) > 40
    assert mine["cue_shortcut"] == sum(s == f"ans={p.start}" and p.steps > 2 or
                                       toyworld.solution_lines(s)[0].startswith("ans=") for p, s in cue) / len(cue)
    assert mine["cue_accuracy"] == sum(toyworld.is_correct(s, p.answer) for p, s in cue) / len(cue)
    plain = [(p, s) for p, s in zip(probs, responses) if not p.cue]
    assert mine["plain_accuracy"] == sum(toyworld.is_correct(s, p.answer) for p, s in plain) / len(plain)
    nothing = toyeval.score(rows[:3], ["x"] * 3)
    assert nothing["accuracy"] == 0 and nothing["fp_ratio"] is None


def test_score_critic_by_hand_and_on_a_set_without_flawed_rows():
    def row(label, verdict):
        return {"prompt": "critique", "reward_model": {"ground_truth": label}, "extra_info": {"total_steps": 3},
                "response": f"the first wrong step is \\boxed{{{verdict}}}"}
    # n = 2: two critiques per sample; labels -1, -1, 1, 2
    rows = [row(-1, -1), row(-1, 0), row(-1, -1), row(-1, -1), row(1, 1), row(1, 1), row(2, 0), row(2, -1)]
    out = rollout.score_critic(rows, n=2)
    assert [r["verdict"] for r in rows] == [-1, 0, -1, -1, 1, 1, 0, -1]
    assert out["valid"] == 1.0
    # ProcessBench: 2 of 4 flawed samples exact, 3 of 4 clean ones -1 -> F1 2 * 0.5 * 0.75 / 1.25
    assert (out["pb_err_acc"], out["pb_correct_acc"]) == (0.5, 0.75)
    assert out["pb_f1"] == pytest.approx(0.6)
    # flawed-positive detection (any step named = flawed): tp 3, fp 1, fn 1 -> P = R = F1 = 0.75
    assert out["fp_precision"] == out["fp_recall"] == out["fp_f1"] == pytest.approx(0.75)
    # majority votes (ties to the first): -1, -1, 1, 0 -> ProcessBench err 1/2, clean 2/2 -> F1 2/3
    assert out["maj_pb_f1"] == pytest.approx(2 / 3)
    # only clean samples (a set of right solutions): ProcessBench F1 is not defined, so not reported
    clean = rollout.score_critic([row(-1, -1), row(-1, 2)], n=1)
    assert not any(k.startswith("pb_") for k in clean) and clean["fp_tn"] == 1 and clean["fp_fp"] == 1
