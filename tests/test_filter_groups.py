"""--filter-groups (DAPO's dynamic sampling, fapo_mini/rl.py) on the toy world.

Why this file exists: dynamic sampling changes what a step trains on, silently if it is
wrong. The policy is test_rl.py's `mixed_policy_dir`, which gets both toy prompts right
about half the time; prompt 0's ground truth is replaced by an answer no response can
give, so its group's rewards are always all -1 and it must be dropped, while prompt 1's
groups are mixed. With both prompts in every round, filling a 2-group batch takes at
least two sampling rounds.
"""
import pytest
import torch

from fapo_mini import grpo, toyworld
from test_rl import metrics, mixed_policy_dir, policy_args, run_script, tok, toy_problems  # noqa: F401 (fixtures)


def test_equal_reward_groups_by_hand():
    r = torch.tensor([1., 1., 1., -1., 0., 0., -1., 1.])
    assert grpo.equal_reward_groups(r, 2).tolist() == [True, False, True, False]
    assert grpo.equal_reward_groups(r, 4).tolist() == [False, False]
    assert grpo.equal_reward_groups(torch.zeros(0), 4).tolist() == []


def run_filtered(tmp_path, mixed_policy_dir, toy_problems, name, max_rounds):
    data = tmp_path / "train.jsonl"
    rows = toyworld.policy_rows(toy_problems, "train")
    rows[0]["reward_model"]["ground_truth"] = "-999"                       # never reached: all -1, dropped
    toyworld.write_jsonl(data, rows)
    args = policy_args(mixed_policy_dir, data, tmp_path / name, 0.0, 2, 2)
    return run_script("train_policy.py", args + ["--filter-groups", "--filter-max-rounds", max_rounds]), metrics(tmp_path / name)


def test_filter_groups_fills_the_batch_with_mixed_groups(tmp_path, mixed_policy_dir, toy_problems):
    _, lines = run_filtered(tmp_path, mixed_policy_dir, toy_problems, "run", 8)
    for line in lines:
        # the trained batch: 2 groups, all with mixed rewards (zero_var_groups is measured on it)
        assert line["kept_groups"] == 2 and line["zero_var_groups"] == 0.0 and line["filter_cap_hit"] == 0
        # prompt 0's group is never mixed: at most one kept group per round, so at least 2 rounds;
        # a round samples both prompts (1 rank), and the last round's groups are all counted
        assert 2 <= line["sampling_rounds"] <= 8 and line["sampled_groups"] == 2 * line["sampling_rounds"]
        assert line["grad_norm"] > 0


def test_filter_groups_says_when_the_cap_is_hit(tmp_path, mixed_policy_dir, toy_problems):
    stdout, lines = run_filtered(tmp_path, mixed_policy_dir, toy_problems, "capped", 1)
    for line in lines:
        assert line["sampling_rounds"] == 1 and line["sampled_groups"] == 2 and line["filter_cap_hit"] == 1
        assert line["kept_groups"] <= 1 and line["zero_var_groups"] == pytest.approx(1 - line["kept_groups"] / 2)
        assert (f"step {line['step']}: --filter-max-rounds 1 reached with {line['kept_groups']} of 2 mixed-reward "
                f"groups; {2 - line['kept_groups']} equal-reward groups fill the batch") in stdout

