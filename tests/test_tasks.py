"""Tasks and judges (fapo_mini/tasks.py, judge.py), and the toy world's clean removal.

The last test is a fork's first afternoon: copy the project, delete the toy world
(`fapo_mini/toy*` and `demo.sh`), and run the three commands on real-format rows (DAPO math
rows, the authors' FAPO-Critic rows, tiny random Qwen2 / Qwen3 checkpoints of the recipes'
architectures). What each writes is checked against what real data must give.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fapo_mini import tasks, toyworld
from fapo_mini.judge import OracleJudge

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def test_rows_pick_their_task_by_data_source():
    """The boxed rule for any source nobody registered; the toy world's `ans=` check for its own rows."""
    math_row = {"data_source": "math_dapo", "reward_model": {"ground_truth": "1000"}}
    toy_row = {"data_source": "toyworld", "prompt": "a=7;b=a+5;c=b*3;?c\n", "reward_model": {"ground_truth": 6}}
    assert tasks.task_of(math_row) is tasks.MATH and tasks.task_of({"reward_model": {}}) is tasks.MATH
    assert tasks.task_of(toy_row).name == "toyworld"
    assert tasks.is_correct(math_row, "so \\boxed{1,000}.") and not tasks.is_correct(math_row, "ans=1000")
    assert tasks.is_correct(toy_row, "b=7+5=2\nans=6") and not tasks.is_correct(toy_row, "\\boxed{6}")
    assert tasks.MATH.first_error is None                      # real data has no step oracle


def test_register_a_task_of_ones_own():
    """What a fork does for its own data: one Task, one register call."""
    countdown = tasks.Task("countdown", is_correct=lambda response, truth: response.strip().endswith(truth),
                           critic_prompt=lambda row, response: f"{row['prompt']}\n{response}", chat_template=False)
    tasks.register(countdown, "countdown")
    try:
        row = {"data_source": "countdown", "prompt": "reach 24", "reward_model": {"ground_truth": 24}}
        assert tasks.is_correct(row, "6*4 = 24") and not tasks.is_correct(row, "\\boxed{24}")
    finally:
        del tasks.TASKS["countdown"]


def test_oracle_judge_is_the_toy_worlds_first_error():
    p = "a=7;b=a+5;c=b*3;?c\n"
    row = {"data_source": "toyworld", "prompt": p, "reward_model": {"ground_truth": "6"}}
    responses = ["b=7+5=2\nc=2*3=6\nans=6", "ans=6", "b=7+5=2\nans=6", "b=7+5=2\nc=2*3=5\nans=6"]
    assert [toyworld.first_error(p, s) for s in responses] == [-1, 0, 1, 1]
    assert OracleJudge()([row] * 4, responses).flawed == [False, True, True, True]


def test_math_critic_prompt_uses_the_raw_question():
    """The authors send extra_info.question (the problem without the instruction suffix) when a row has one."""
    row = {"prompt": [{"role": "user", "content": "Solve it. What is 2+2? Put the answer in a box."}],
           "reward_model": {"ground_truth": "4"}, "extra_info": {"question": "What is 2+2?"}}
    text = tasks.math_critic_prompt(row, "2+2=4, \\boxed{4}")
    assert "[Math Problem]\n\nWhat is 2+2?\n\n[Ground Truth]\n\n4\n\n[AI Solution]\n\n2+2=4, \\boxed{4}\n\n" in text
    del row["extra_info"]
    assert "[Math Problem]\n\nSolve it. What is 2+2? Put the answer in a box.\n\n" in tasks.math_critic_prompt(row, "x")


def run(cwd, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(cwd))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_deleting_the_toy_world_leaves_the_real_commands_working(tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(ROOT, fork, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", "*.egg-info"))
    for f in [*fork.glob("fapo_mini/toy*"), fork / "demo.sh"]:
        (shutil.rmtree if f.is_dir() else os.remove)(f)
    assert not list(fork.glob("fapo_mini/toy*"))

    # every library module imports, and rows of the toy world's source are now plain math rows
    modules = sorted(p.stem for p in (fork / "fapo_mini").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module('fapo_mini.{m}')\n" for m in modules) +
            "from fapo_mini import tasks\n"
            "assert tasks.task_of({'data_source': 'toyworld'}) is tasks.MATH and not tasks.TASKS\n"
            "print(sorted(m for m in sys.modules if m.startswith('fapo_mini.toy')))")
    r = run(fork, "-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]

    # tiny random checkpoints of the recipes' architectures, made by the fork's own code
    for like in ("qwen2", "qwen3"):
        r = run(fork, "-m", "recipes.tiny_model", "--like", like, "--out", tmp_path / like)
        assert r.returncode == 0, r.stderr[-2000:]
    r = run(fork, "recipes/prepare_dapo.py", "--preset", "dapo", "--source", FIXTURES / "dapo-processed-sample.jsonl",
            "--out", tmp_path / "dapo.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    dapo = [json.loads(line) for line in (tmp_path / "dapo.jsonl").read_text().splitlines()]
    assert len(dapo) == 4 and all(row["data_source"] == "math-dapo" for row in dapo)
    critic = sorted((json.loads(line) for line in (FIXTURES / "fapo-critic-sample.jsonl").read_text().splitlines()),
                    key=lambda row: len(row["prompt"][0]["content"]))[:2]
    critic_path = write_jsonl(tmp_path / "critic.jsonl", critic)

    # FAPO with the GenRM judge on math rows: no oracle, so no fp_ratio; the GenRM is asked
    small = ["--steps", 1, "--prompts-per-step", 2, "--group-size", 2, "--max-new-tokens", 8]
    r = run(fork, "train_policy.py", "--model", tmp_path / "qwen2", "--data", tmp_path / "dapo.jsonl",
            "--out", tmp_path / "policy_run", "--judge", "genrm", "--genrm", tmp_path / "qwen3", "--genrm-max-new-tokens", 8,
            *small)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads((tmp_path / "policy_run" / "metrics.jsonl").read_text())
    assert "fp_ratio" not in line and "judge_fp_ratio" in line and line["step"] == 1
    assert 0 <= line["accuracy"] <= 1 and (tmp_path / "policy_run" / "ckpt").is_dir()
    r = run(fork, "train_policy.py", "--model", tmp_path / "qwen2", "--data", tmp_path / "dapo.jsonl",
            "--out", tmp_path / "oracle_run", "--judge", "oracle", *small)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: --judge oracle: {tmp_path / 'dapo.jsonl'}:1: data_source 'math-dapo' has no exact step oracle "
        "(the toy world has one; real data does not)"), r.stderr[-2000:]

    # GenRM RL on the authors' critic rows, with the step-wise reward
    r = run(fork, "train_genrm.py", "--model", tmp_path / "qwen3", "--data", critic_path, "--out",
            tmp_path / "genrm_run", *small)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads((tmp_path / "genrm_run" / "metrics.jsonl").read_text())
    assert {"valid", "exact_step_acc", "decision_acc", "reward"} <= set(line)

    # rollout.py: policy rows scored by the boxed rule (with the GenRM loaded), critic rows by the benchmarks
    r = run(fork, "rollout.py", "--model", tmp_path / "qwen2", "--data", tmp_path / "dapo.jsonl", "--n", 2,
            "--max-new-tokens", 8, "--genrm", tmp_path / "qwen3", "--genrm-max-new-tokens", 8,
            "--out", tmp_path / "policy_out.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    summary, out_rows = json.loads(r.stdout.strip().splitlines()[-1]), [
        json.loads(line) for line in (tmp_path / "policy_out.jsonl").read_text().splitlines()]
    assert len(out_rows) == 8 and "fp_ratio" not in summary
    assert summary["accuracy"] == sum(row["correct"] for row in out_rows) / 8
    r = run(fork, "rollout.py", "--model", tmp_path / "qwen3", "--data", critic_path, "--max-new-tokens", 8,
            "--out", tmp_path / "critic_out.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= summary["valid"] <= 1 and "fp_f1" in summary
