"""rollout.py's scoring: unbiased pass@k against brute force, and the policy summary by hand."""
import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rollout  # noqa: E402
from fapo_mini import toyworld  # noqa: E402


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (4, 0), (4, 1), (4, 3), (8, 5), (8, 8), (6, 2)])
def test_pass_at_k_is_the_mean_over_all_k_subsets(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert rollout.pass_at_k(n, c, k) == pytest.approx(sum(map(any, subsets)) / len(subsets), abs=1e-12)


def test_score_policy_by_hand():
    p = "a=7;b=a+5;c=b*3;?c\n"  # b = 2, c = 6
    row = {"data_source": "toyworld", "prompt": p, "reward_model": {"ground_truth": "6"}}
    responses = ["b=7+5=2\nc=2*3=6\nans=6",             # clean
                 "b=7+5=2\nc=2*3=6\nans=6\nc=2*3=6",    # checked
                 "b=7+5=2\nc=2*3=6\nans=6\nc=2*3=1",    # after_answer (a wrong re-check), correct
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
    assert out["fp_ratio"] == 3 / 5  # after_answer, jump, wrong_step among 5 correct
    assert out["kinds"] == {"clean": [1, 1], "checked": [1, 1], "jump": [1, 1], "wrong_step": [1, 2],
                            "wrong_answer": [0, 1], "after_answer": [1, 1], "stopped": [0, 1]}


def test_flaw_kind_of_every_teacher_style():
    want = {"clean": "clean", "checked": "checked", "jump": "jump", "sloppy": "wrong_step", "badcheck": "after_answer"}
    rng = random.Random(0)
    for prob in toyworld.generate(100, 0, "train"):
        for style, kind in want.items():
            assert toyworld.flaw_kind(prob.prompt, toyworld.teacher_solution(prob.prompt, style, rng)) == kind
