"""./demo.sh --quick: the whole toy-world chain end to end at toy sizes (about two minutes).

It proves the chain works (data -> warm starts -> GenRM RL -> GRPO / FAPO arms under
torchrun -> held-out evaluation -> report), not that FAPO wins: that needs the full budget
and is reported in the README. Numbers are checked against the files they were computed
from, so the report cannot drift from the runs.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "demo.sh"), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| GRPO (lam 0) |" in proc.stdout and "| FAPO (GenRM) |" in proc.stdout

    res = json.loads((out / "results.json").read_text())
    assert (out / "curves.png").stat().st_size > 1000
    for arm in ("grpo", "fapo", "fapo_oracle"):
        a = res["arms"][arm]
        for split in ("test", "hard"):
            summary = json.loads((out / "eval" / f"{arm}_s1_{split}.json").read_text())
            prefix = "" if split == "test" else "hard_"
            assert a[prefix + "accuracy"] == summary["accuracy"]             # one seed: mean = that seed
            assert 0.0 <= a[prefix + "accuracy"] <= 1.0
            # the flawed-positive ratio is flawed / correct: undefined only when nothing is correct
            assert (a[prefix + "fp_ratio"] is None) == (summary["accuracy"] == 0)
            assert a[prefix + "fp_ratio"] is None or math.isfinite(a[prefix + "fp_ratio"])
            kinds = a["per_seed"]["1"][split]["kinds"]  # [correct, total] per kind of solution
            assert kinds == summary["kinds"] and sum(t for _, t in kinds.values()) == 40  # N_EVAL rows, n 1
            assert sum(c for c, _ in kinds.values()) == round(40 * summary["accuracy"])
        assert a["per_seed_accuracy"] == [a["accuracy"]]
        lines = (out / "rl" / f"{arm}_s1" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(l)["step"] for l in lines] == [1, 2, 3]
    for name in ("sft", "rl_step", "rl_outcome"):
        g = res["genrm"][name]
        assert 0.0 <= g["valid"] <= 1.0 and math.isfinite(g["fp_f1"])
    stages = res["stage_seconds"]
    assert {"data", "policy_sft", "genrm_sft", "genrm_rl", "rl_grpo", "rl_fapo", "eval"} <= set(stages)
    assert abs(res["total_seconds"] - sum(stages.values())) < 1e-6
