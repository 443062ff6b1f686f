"""bench/estimate.py: its recipe knobs are the recipe scripts' defaults, and a few of its numbers by hand.

The knobs are read by bash itself: each recipe up to its `if [[ $DRY_RUN == 1 ]]` block (everything
before it only sets variables, sources common.sh and defines functions: no side effect), run from a
temporary copy with DRY_RUN unset and a clean environment, then echoing the variables. That follows
`VAR=${VAR:-value}`, plain `VAR=value` and the SIZE `case` blocks exactly as a real run would.
"""
import inspect
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import estimate as est  # noqa: E402

RECIPES = ROOT / "recipes"
KNOBS = ("NPROC", "PROMPTS", "GROUP", "MAX_NEW", "OVERLONG", "MINI", "ROLLOUT_ROWS", "MICRO_TOKENS", "GENRM_MAX_NEW",
         "GENRM_ROWS", "GENRM_CACHE_GB", "STEPS", "NGPU")
DRY_RUN_BLOCK = re.compile(r"^if \[\[ \$DRY_RUN == 1 \]\]", re.M)


def recipe_knobs(script: str, tmp_path: Path, **env) -> dict:
    """The variables `script` sets before its dry-run block, as bash sets them (None where unset)."""
    text = (RECIPES / script).read_text()
    m = DRY_RUN_BLOCK.search(text)
    assert m, f"{script}: no `if [[ $DRY_RUN == 1 ]]` block to stop at"
    work = tmp_path / script.replace(".", "_")
    work.mkdir()
    shutil.copy(RECIPES / "common.sh", work / "common.sh")
    echo = [f'echo "{k}=${{{k}-}}"' for k in KNOBS]
    echo += ['echo "SHARD=${SHARD[*]-}"',
             'if declare -p N >/dev/null 2>&1; then for b in "${!N[@]}"; do echo "N_$b=${N[$b]}"; done; fi']
    (work / "knobs.sh").write_text(text[:m.start()] + "\n".join(echo) + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), **env}            # no PROMPTS=... from the caller's shell
    p = subprocess.run(["bash", str(work / "knobs.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        k, _, v = line.partition("=")
        out[k] = None if v == "" else int(v) if v.isdigit() else float(v) if re.fullmatch(r"[0-9.]+", v) else v
    # --mini-batches: a variable in the policy recipe, a literal in the GenRM one
    flag = re.search(r'--mini-batches\s+"?\$\{?(\w+)\}?"?|--mini-batches\s+(\d+)', text)
    if flag:
        out["MINI"] = out.get(flag.group(1)) if flag.group(1) else int(flag.group(2))
    out["FSDP"] = "--fsdp" in (out["SHARD"] or "")
    return out


@pytest.mark.parametrize("script, env, knobs", [
    ("policy_qwen25_math_1p5b.sh", {}, est.POLICY_1P5B),
    ("policy_qwen25_math_1p5b.sh", {"SIZE": "7b"}, est.POLICY_7B),
    ("genrm_qwen3_4b.sh", {}, est.GENRM_RL_4B),
    ("genrm_qwen3_4b.sh", {"SIZE": "1.7b"}, est.GENRM_RL_1P7B),
    ("eval.sh", {}, est.EVAL),
])
def test_knobs_are_the_recipes_defaults(tmp_path, script, env, knobs):
    got = recipe_knobs(script, tmp_path, **env)
    for k, v in knobs.items():
        if k == "N":
            assert {b: got[f"N_{b}"] for b in v} == v and not [x for x in got if x.startswith("N_") and x[2:] not in v]
        else:
            assert got[k] == v, f"{script} {env}: {k} is {got[k]!r} in the script, {v!r} in bench/estimate.py"


def test_the_7b_recipe_is_the_1p5b_one_with_size_7b():
    assert re.search(r"^SIZE=7b exec bash .*policy_qwen25_math_1p5b\.sh", (RECIPES / "policy_qwen25_math_7b.sh").read_text(), re.M)


def test_code_defaults_the_estimate_relies_on():
    from fapo_mini.judge import GenRMJudge
    from fapo_mini.sampler import Sampler
    assert inspect.signature(Sampler).parameters["max_rows"].default == est.SAMPLER_DEFAULT_MAX_ROWS
    assert inspect.signature(GenRMJudge).parameters["max_rows"].default == est.JUDGE_DEFAULT_MAX_ROWS
    rollout = (ROOT / "rollout.py").read_text()
    assert re.search(r'"--batch-size", type=int, default=(\d+)', rollout).group(1) == str(est.EVAL_BATCH_PROMPTS)
    cap = re.search(r'"--genrm-max-new-tokens", type=int, default=(\d+)', (ROOT / "train_policy.py").read_text())
    assert int(cap.group(1)) == est.PROPOSAL_MAX_NEW


def test_kv_bytes_and_parameters_by_hand():
    assert est.kv_bytes_per_token(est.QWEN25_MATH_1P5B) == 28 * 1024          # 28 x 2 x 2 x 128 x 2
    assert est.kv_bytes_per_token(est.QWEN3_4B_INSTRUCT_2507) == 144 * 1024   # 36 x 2 x 8 x 128 x 2
    C, I, L, V = 1536, 8960, 28, 151936                                       # Qwen2.5-Math-1.5B, tied
    layer = C * 16 * 128 + 16 * 128 + C * C + 3 * C * I + 2 * C               # qkv + bias, o, gate/up/down, 2 norms
    assert est.n_params(est.QWEN25_MATH_1P5B) == V * C + L * layer + C == 1_543_714_304


def test_training_time_of_one_row_by_the_formula():
    a = est.Assumptions()
    tokens = a.policy_prompt_mean + a.policy_response_mean                    # 250 + 1200
    by_hand = 10 * 1_543_714_304 * 1450 / (0.40 * 989e12)                     # (6 + 2 + 2) N FLOPs a token
    assert est.update_seconds(est.QWEN25_MATH_1P5B, tokens, a) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.0566, abs=1e-4)


def test_judge_slots_for_one_budget():
    """By hand: a slot is its cache, (3700 + 16384) positions x KV bytes, plus its prompt's share of
    the packed prefill, 3700 tokens x (KV bytes + bf16 (2 x hidden + 4 x MLP width))."""
    m = est.QWEN3_4B_INSTRUCT_2507
    slot = 20084 * 147456 + 3700 * (147456 + 2 * (2 * 2560 + 4 * 9728))      # 3.83e9 bytes a slot
    assert est.judge_plan(m, 3700, 16384, 24, 30 * 2**30) == (16384, math.floor(30 * 2**30 / slot)) == (16384, 8)
    assert est.judge_plan(m, 3700, 16384, 4, 30 * 2**30) == (16384, 4)        # --genrm-max-rows binds
    assert est.judge_plan(m, 3700, 16384, 24, 2 * 2**30)[1] == 1              # less than a slot: one, shorter
    slot_1p7b = 20084 * 114688 + 3700 * (114688 + 2 * (2 * 2048 + 4 * 6144))
    assert est.judge_plan(est.QWEN3_1P7B, 3700, 16384, 24, 34 * 2**30) == (16384, 34 * 2**30 // slot_1p7b) == (16384, 12)


def test_decode_ops_come_from_decode_ops_py():
    from decode_ops import top_level_ops
    two, six = top_level_ops("qwen2", 2, "cpu", torch.float32), top_level_ops("qwen2", 6, "cpu", torch.float32)
    per_layer = (six[0] - two[0]) / 4
    ops, views, loop = est.ops_per_step(est.QWEN25_MATH_1P5B)
    assert ops == (two[0] - 2 * per_layer) + 28 * per_layer + loop and 0 < loop < ops / 5 and 0 < views < ops


def write_gpu_check(path, tiny=False):
    """A gpu_check JSON as bench/gpu_check.py writes it: two sampler parts (1.5B shape; one mode failed)
    and the judge part (4B shape, 10 and 16 rows; CUDA graphs failed at 16)."""
    path.write_text(json.dumps({
        "cuda": not tiny, "tiny": tiny, "device": "NVIDIA H100 80GB HBM3",
        "parts": {"sampler_64": {"rows": 64, "modes": ["eager", "cuda_graphs"], "status": "pass",
                                 "eager": {"status": "pass", "ms_per_decode_step": 20.0},
                                 "cuda_graphs": {"status": "pass", "ms_per_decode_step": 4.0}},
                  "sampler_256": {"rows": 256, "shape": "Qwen2.5-Math-1.5B", "modes": ["eager", "cuda_graphs"],
                                  "status": "fail", "eager": {"status": "pass", "ms_per_decode_step": 30.0},
                                  "cuda_graphs": {"status": "fail", "error": "RuntimeError: x"}},
                  "judge": {"status": "fail", "shape": "Qwen3-4B-Instruct-2507", "rows": [10, 16], "prompt_len": 3700,
                            "cap": 16384, "slot_positions": 20084, "modes": ["eager", "cuda_graphs"],
                            "by_rows": {"10": {"eager": {"status": "pass", "ms_per_decode_step": 50.0},
                                               "cuda_graphs": {"status": "pass", "ms_per_decode_step": 40.0}},
                                        "16": {"eager": {"status": "pass", "ms_per_decode_step": 62.0},
                                               "cuda_graphs": {"status": "fail", "error": "OutOfMemoryError: x"}}}}}}))
    return path


def test_gpu_check_measurements_replace_the_modelled_decode_steps(tmp_path):
    measured = est.read_gpu_check(write_gpu_check(tmp_path / "gpu_check.json"))
    sampler = measured["sampler"]["Qwen2.5-Math-1.5B"]
    assert sampler["eager"] == {64: 20.0, 256: 30.0} and sampler["cuda_graphs"] == {64: 4.0}
    judge = measured["judge"]["Qwen3-4B-Instruct-2507"]
    assert judge["eager"] == {10: 50.0, 16: 62.0} and judge["cuda_graphs"] == {10: 40.0}     # the failed run left out
    assert list(measured["sampler"]) == ["Qwen2.5-Math-1.5B"] and list(measured["judge"]) == ["Qwen3-4B-Instruct-2507"]
    a, graphs = est.Assumptions(), est.Assumptions(cuda_graphs=True)
    # the 1.5B policy sampler: its own measurements, as before
    s, how = est.decode_step(est.QWEN25_MATH_1P5B, 128, 300, a, measured)
    assert (s, how) == (pytest.approx(20e-3 + 10e-3 * 64 / 192), "measured")   # interpolated in rows
    s, how = est.decode_step(est.QWEN25_MATH_1P5B, 128, 300, graphs, measured)
    assert s == pytest.approx(4e-3) and how == "measured (clamped to 64 rows)"
    # the 4B GenRM as the judge: 12 rows between 10 (50 ms) and 16 (62 ms): 50 + 12 x 2 / 6 = 54 ms, above the
    # HBM floor (8.04e9 weight bytes + 12 x 2600 x 147456 KV bytes) / 2.5e12 = 5.1 ms
    s, how = est.decode_step(est.QWEN3_4B_INSTRUCT_2507, 12, 2600, a, measured, use="judge")
    assert (s, how) == (pytest.approx(54e-3), "measured")
    s, how = est.decode_step(est.QWEN3_4B_INSTRUCT_2507, 16, 2600, graphs, measured, use="judge")
    assert s == pytest.approx(40e-3) and how == "measured (clamped to 10 rows)"
    # neither use borrows the other's, nor another shape's
    assert est.decode_step(est.QWEN3_4B_INSTRUCT_2507, 128, 300, a, measured)[1] != "measured"   # GenRM RL sampling
    assert est.decode_step(est.QWEN25_MATH_1P5B, 12, 2600, a, measured, use="judge")[1] != "measured"
    assert est.decode_step(est.QWEN3_1P7B, 12, 2600, a, measured, use="judge")[1] != "measured"  # the 1.7B GenRM
    out = est.report(a, measured)
    assert "† are measured (bench/gpu_check.py on NVIDIA H100 80GB HBM3)" in out and "3,072 x 23.3 ms" in out
    # the 1.5B FAPO run's judge, by hand: 128 rows x accuracy 0.5 = 64 critiques in 10 slots (39 GiB); steps
    # (64 - 10) x 2000 / 10 + 16384 = 27,184 at the measured 50 ms = 1359.2 s, plus the prefill 2 x 4.022e9 x 64
    # x 1600 / (0.4 x 989e12) = 2.08 s and 1 + 54 refills x 50 ms = 2.75 s: 1364 s = 23 min
    assert "| 64 in 10 slots: 27,184 x 50.0 ms = 23 min † |" in out
    # the 7B FAPO run's: 32 critiques in 11 slots (42 GiB), (32 - 11) x 2000 / 11 + 16384 = 20,202 steps at
    # 50 + 1 x 2 / 6 ms
    assert "| 32 in 11 slots: 20,202 x 52.0 ms = " in out
    # eval's judge: 17 slots (64 GiB), clamped to the 16 measured rows
    assert "in 17 slots: " in out and " x 62.0 ms = " in out and "† (clamped to 16 rows)" in out
    # the 1.7B GenRM's judge stays modelled: its judge cell has no † (the 1.5B sampling cell beside it has)
    row = next(l for l in out.splitlines() if l.startswith("| policy 1.5B FAPO, 1.7B GenRM |") and " slots: " in l)
    cells = [c.strip() for c in row.split("|")]
    assert "†" in cells[3] and " slots: " in cells[4] and "†" not in cells[4]
    assert ("ms per decode step of the GenRM judge's Qwen3-4B-Instruct-2507-shaped model, eager: 10 rows 50.00 ms, "
            "16 rows 62.00 ms; CUDA graphs: 10 rows 40.00 ms.") in out
    assert "in slots of 20084 positions" in out
    tiny = est.read_gpu_check(write_gpu_check(tmp_path / "tiny.json", tiny=True))
    assert tiny["sampler"] == tiny["judge"] == {} and "not used" in tiny["note"]


def test_main_prints_every_run_marked_as_estimates(capsys):
    est.main([])
    out = capsys.readouterr().out
    assert out.startswith("**Every number below is an estimate**") and "No GPU run has replaced" in out
    for run in est.POLICY_RUNS + est.GENRM_RUNS:
        assert f"| {run.name} |" in out
    assert "--genrm-max-new-tokens 16384" in out and "Assumed (flag of `bench/estimate.py`: value)" in out
    proposed = re.findall(r"^\| (policy [^|]+) \| (?:proposed: \*\*\d+\*\*|recipe: \d+ \(= proposed\)) \|", out, re.M)
    assert proposed == [r.name for r in est.POLICY_RUNS if r.genrm]          # one proposal a FAPO run
