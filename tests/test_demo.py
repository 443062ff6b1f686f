"""./demo.sh --quick: the whole toy-world chain end to end at toy sizes (about two minutes).

It proves the chain works (data -> warm starts under torchrun -> GenRM RL with both rewards
and four policy arms side by side -> held-out evaluation -> report), not that FAPO wins: that needs the default
run's budget and is reported in docs/results.md. Numbers are checked against the files
they were computed from (the evaluation rows, the metrics lines), so the report cannot
drift from the runs.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from fapo_mini import genrm, toyworld

ROOT = Path(__file__).resolve().parents[1]
ARMS, SPLITS, N_EVAL = ("grpo", "fapo", "fapo_oracle", "strict"), ("test", "hard", "shift"), 40


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "demo.sh"), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| GRPO (lam 0) |" in proc.stdout and "| strict (oracle, lam 2) |" in proc.stdout

    res = json.loads((out / "results.json").read_text())
    assert (out / "curves.png").stat().st_size > 1000
    for arm in ARMS:
        a = res["arms"][arm]
        assert a["seeds"] == [1] and set(a["per_seed"]["1"]) == set(SPLITS)
        for split in SPLITS:
            rows = [json.loads(l) for l in (out / "eval" / f"{arm}_s1_{split}.jsonl").read_text().splitlines()]
            assert len(rows) == N_EVAL and all(r["extra_info"]["split"] == split for r in rows)
            correct = [toyworld.is_correct(r["response"], r["reward_model"]["ground_truth"]) for r in rows]
            flawed = [c and toyworld.first_error(r["prompt"], r["response"]) != -1 for r, c in zip(rows, correct)]
            prefix = "" if split == "test" else split + "_"
            assert a[prefix + "accuracy"] == sum(correct) / N_EVAL == a["per_seed"]["1"][split]["accuracy"]
            assert a[prefix + "fp_ratio"] == (sum(flawed) / sum(correct) if any(correct) else None)
            kinds = a["per_seed"]["1"][split]["kinds"]  # [correct, total] per kind of solution
            assert sum(t for _, t in kinds.values()) == N_EVAL and sum(c for c, _ in kinds.values()) == sum(correct)
            if split == "shift":  # every shift prompt carries the cue, and the shortcut is never right there
                assert all(r["prompt"].startswith(toyworld.CUE) for r in rows)
                assert kinds.get("shortcut", [0, 0])[0] == 0
        assert a["per_seed_accuracy"] == [a["accuracy"]] and a["spread_accuracy"] == [a["accuracy"]] * 2
        if arm != "grpo":  # paired by seed against GRPO
            assert a["per_seed_test_minus_grpo"] == [a["accuracy"] - res["arms"]["grpo"]["accuracy"]]
        lines = [json.loads(l) for l in (out / "rl" / f"{arm}_s1" / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in lines] == [1, 2, 3]
        assert math.isclose(a["early_accuracy"], sum(m["accuracy"] for m in lines) / 3)  # 3 steps < EARLY_STEPS
    assert set(res["warm_start"]) == set(SPLITS)
    tp = res["top_p_eval"]  # the same final policies at temperature 1.0, top-p 0.7, on test and shift
    assert (tp["temperature"], tp["top_p"]) == (1.0, 0.7) and set(tp["warm_start"]) == {"test", "shift"}
    for arm in ARMS:
        a = tp["arms"][arm]
        assert a["seeds"] == [1] and set(a["per_seed"]["1"]) == {"test", "shift"}
        for split in ("test", "shift"):
            summary = json.loads((out / "eval_top_p" / f"{arm}_s1_{split}.json").read_text())
            assert summary["top_p"] == 0.7 and summary["model"] == str(out / "rl" / f"{arm}_s1" / "ckpt" / "step_00000003" / "model")
            rows = [json.loads(l) for l in (out / "eval_top_p" / f"{arm}_s1_{split}.jsonl").read_text().splitlines()]
            correct = [toyworld.is_correct(r["response"], r["reward_model"]["ground_truth"]) for r in rows]
            flawed = [c and toyworld.first_error(r["prompt"], r["response"]) != -1 for r, c in zip(rows, correct)]
            prefix = "" if split == "test" else split + "_"
            assert len(rows) == N_EVAL and a[prefix + "accuracy"] == sum(correct) / N_EVAL
            assert a[prefix + "fp_ratio"] == (sum(flawed) / sum(correct) if any(correct) else None)
        if arm != "grpo":
            assert a["per_seed_test_minus_grpo"] == [a["accuracy"] - tp["arms"]["grpo"]["accuracy"]]
    ep = res["early_phase"]  # lam 1 against strict from the weak warm start: per-step training accuracy
    for arm in ("fapo_oracle", "strict"):
        lines = [json.loads(l) for l in (out / "early" / f"{arm}_s1" / "metrics.jsonl").read_text().splitlines()]
        cfg = json.loads((out / "early" / f"{arm}_s1" / "config.json").read_text())
        assert cfg["model"] == str(out / "weak_sft") and [m["step"] for m in lines] == [1, 2, 3]
        s1 = ep["arms"][arm]["per_seed"]["1"]
        assert s1["accuracy"] == [m["accuracy"] for m in lines] and s1["step1_accuracy"] == lines[0]["accuracy"]
        assert math.isclose(s1["early_accuracy"], sum(m["accuracy"] for m in lines) / 3)
    diff = ep["arms"]["fapo_oracle"]["per_seed"]["1"]["early_accuracy"] - ep["arms"]["strict"]["per_seed"]["1"]["early_accuracy"]
    assert ep["paired_seeds"] == [1] and math.isclose(ep["per_seed_lam1_minus_strict"][0], diff, abs_tol=1e-12)
    for name, seed in (("sft", "0"), ("rl_step", "1"), ("rl_outcome", "1")):  # the GenRM block, from its eval rows
        g, file = res["genrm"][name], f"genrm_{name}" + ("" if name == "sft" else f"_s{seed}")
        rows = [json.loads(l) for l in (out / "eval" / f"{file}.jsonl").read_text().splitlines()]
        labels = [int(r["reward_model"]["ground_truth"]) for r in rows]
        preds = [genrm.parse_verdict(r["response"], int(r["extra_info"]["total_steps"])) for r in rows]
        flawed = [(p, y) for p, y in zip(preds, labels) if y != -1]
        flags = [(p, y) for p, y in flawed if p is not None and p != -1]
        v = g["per_seed"][seed]
        assert g["seeds"] == [seed] and v["valid"] == sum(p is not None for p in preds) / len(rows) == g["valid"]
        assert v["exact_step_acc"] == sum(p == y for p, y in flawed) / len(flawed)
        assert v["late_flag_share"] == (sum(p > y for p, y in flags) / len(flags) if flags else 0.0)
        tp = sum(p != -1 for p, _ in flawed)
        fp = sum(p != -1 for p, y in zip(preds, labels) if y == -1)
        assert v["fp_precision"] == (tp / (tp + fp) if tp + fp else 0.0) and v["fp_recall"] == tp / len(flawed)
        if name != "sft":                                  # means over its RL steps
            lines = [json.loads(l) for l in (out / "genrm_rl" / f"{name[3:]}_s1" / "metrics.jsonl").read_text().splitlines()]
            assert [m["step"] for m in lines] == [1, 2]
            assert math.isclose(v["entropy"], sum(m["entropy"] for m in lines) / 2)
            assert math.isclose(v["equal_reward_groups"], sum(m["zero_var_groups"] for m in lines) / 2)
    fapo_cfg = json.loads((out / "rl" / "fapo_s1" / "config.json").read_text())  # judged by the step-RL GenRM of its seed
    assert fapo_cfg["genrm"] == str(out / "genrm_rl" / "step_s1" / "ckpt" / "step_00000002" / "model")
    stages, jobs = res["stage_seconds"], res["job_seconds"]   # wall time, one after another; jobs side by side
    assert {"data", "policy_sft", "genrm_data", "genrm_sft", "weak_sft", "rl_and_eval"} == set(stages)
    assert abs(res["total_seconds"] - sum(stages.values())) < 1e-6
    early_jobs = ["early_fapo_oracle", "early_strict"]
    genrm_jobs = ["genrm_rl_step", "genrm_rl_outcome"]
    assert {"eval", "eval_top_p", "genrm_eval", *early_jobs, *genrm_jobs} | {f"rl_{a}" for a in ARMS} == set(jobs)
    logged = [l.split("\t") for l in (out / "jobs.tsv").read_text().splitlines()]
    assert sorted(n for n, _ in logged) == sorted(["eval"] * 5 + ["eval_top_p"] * 5 + ["genrm_eval"] * 3 + [f"rl_{a}" for a in ARMS]
                                                  + early_jobs + genrm_jobs)
    assert res["machine"]["cpus"] == os.cpu_count()


def test_demo_rejects_a_bad_seed_count():
    """--seeds, DEMO_SFT_RANKS and DEMO_LANES take a whole number; anything else is one line and status 2,
    before any work."""
    for bad in ("x", "0", "-1"):
        proc = subprocess.run(["bash", str(ROOT / "demo.sh"), "--seeds", bad], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout.strip() == f"error: --seeds needs a whole number >= 1, got '{bad}'"
        proc = subprocess.run(["bash", str(ROOT / "demo.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DEMO_SFT_RANKS": bad})
        assert proc.returncode == 2 and proc.stdout.strip() == f"error: DEMO_SFT_RANKS needs a whole number >= 1, got '{bad}'"
        proc = subprocess.run(["bash", str(ROOT / "demo.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DEMO_LANES": bad})
        assert proc.returncode == 2 and proc.stdout.strip() == f"error: DEMO_LANES needs a whole number >= 1, got '{bad}'"


def test_demo_refuses_an_out_that_is_not_a_demo_folder(tmp_path):
    """demo.sh empties OUT before a run: a file, or a folder with no eval/ (not a demo's), is one line and
    status 2, and stays as it was; a relative --out is taken from where the command is run."""
    (tmp_path / "notes.txt").write_text("keep me\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2\n")
    for out in ("notes.txt", "mine"):
        proc = subprocess.run(["bash", str(ROOT / "demo.sh"), "--out", out], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout.strip() == (f"error: --out {tmp_path / out}: exists and is not a demo's output folder "
                                       "(no eval/ in it); give a new folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me\n" and (tmp_path / "mine" / "data.csv").exists()
    proc = subprocess.run(["bash", str(ROOT / "demo.sh"), "--out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout.strip() == "error: --out needs a folder"
