"""Evaluation during training (--eval-data / --eval-every, fapo_mini/rl.py `evaluate`).

The reference is rollout.py: the eval/ numbers a run logs at step k must be the numbers
rollout.py gives on that step's checkpoint with the same sampling settings and seed. And a
run stopped and resumed must log the same eval lines as one that ran straight through.
The policy is test_rl.py's `mixed_policy_dir` (right about half the time, with flawed
positives), so every metric has something to count.
"""
import json
import os
import subprocess
import sys

import pytest

from fapo_mini import toyworld
from test_rl import ROOT, metrics, mixed_policy_dir, policy_args, run_script, tok, toy_problems  # noqa: F401 (fixtures)

EVAL = ["--eval-every", 1, "--eval-n", 16, "--eval-temperature", 1.0, "--eval-top-p", 0.7]


@pytest.fixture
def data(tmp_path, toy_problems):
    path = tmp_path / "train.jsonl"
    toyworld.write_jsonl(path, toyworld.policy_rows(toy_problems, "train"))
    return path


def without_times(line):
    return {k: v for k, v in line.items() if not k.startswith("time_")}


def test_eval_lines_equal_rollout_py_on_the_checkpoint(tmp_path, mixed_policy_dir, data):
    out = tmp_path / "run"
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, out, 1.0, 2, 2) + EVAL +
               ["--eval-data", data, "--save-every", 1, "--keep", 2])
    lines = metrics(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        ckpt = out / "ckpt" / f"step_{line['step']:08d}" / "model"
        argv = ["--model", ckpt, "--data", data, "--n", 16, "--temperature", 1.0, "--top-p", 0.7, "--seed", 0,
                "--max-new-tokens", 24, "--out", tmp_path / f"eval_{line['step']}.jsonl"]
        res = subprocess.run([sys.executable, str(ROOT / "rollout.py"), *map(str, argv)],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
        assert res.returncode == 0, res.stderr[-2000:]
        ref = json.loads(res.stdout.strip().splitlines()[-1])
        for k in ("accuracy", "pass@1", "pass@2", "pass@4", "fp_ratio"):
            assert line[f"eval/{k}"] == ref[k], k
        assert line["eval/response_len"] == ref["gen_tokens"] / (ref["prompts"] * ref["n"])
    # something was counted: both prompts answered, some right, some right by a flawed path
    assert any(0 < line["eval/accuracy"] < 1 for line in lines) and lines[0]["eval/fp_ratio"] is not None


def test_resumed_run_logs_the_same_eval_lines(tmp_path, mixed_policy_dir, data):
    common = EVAL + ["--eval-data", data, "--save-every", 1]
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, tmp_path / "straight", 1.0, 3, 2) + common)
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, tmp_path / "resumed", 1.0, 1, 2) + common)
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, tmp_path / "resumed", 1.0, 3, 2) + common)
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [without_times(x) for x in straight] == [without_times(x) for x in resumed]
    assert all("eval/accuracy" in line for line in straight)


def test_eval_flags_go_together(tmp_path, mixed_policy_dir, data):
    args = [str(a) for a in policy_args(mixed_policy_dir, data, tmp_path / "o", 1.0, 1, 2)]
    for extra, line in ((["--eval-every", "2"], "error: --eval-data FILE and --eval-every K (> 0) go together: "
                                                 "give both, or neither"),
                        (["--eval-data", str(data), "--eval-every", "1", "--eval-n", "0"],
                         "error: --eval-n must be >= 1, got 0")):
        res = subprocess.run([sys.executable, str(ROOT / "train_policy.py"), *args, *extra], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == line, res.stderr[-2000:]
