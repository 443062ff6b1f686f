"""Runs survive: SIGKILL then exact resume, a broken newest checkpoint, SIGTERM, changed flags, bad input, NaN.

Why this file exists: the promises of fapo_mini/checkpoint.py and the run loop in
fapo_mini/rl.py only mean something for a real process that dies at a random moment.
Every test here runs `train_policy.py` as a subprocess, the way a user does, and checks
what is left on disk (checkpoint folders, metrics.jsonl) against an uninterrupted run.

The policy is a tiny d64-l2 model given 20 steps of supervised warm start on toy-world
traces, only so that it sometimes writes EOS: responses then differ in length, the DAPO
overlong penalty (--overlong-buffer 8) spreads the rewards, and the advantages, gradients
and Adam moments are not all zero (a random model never says EOS, nor is ever right, so
every update would be zero and a broken resume would go unseen).
The last test runs under torchrun with --fsdp (FSDP2, 2 gloo ranks).
Simplified away: DDP (tests/test_rl.py), GPU, and the GenRM judge (--judge oracle).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from fapo_mini import sft, toyworld
from fapo_mini.checkpoint import latest_checkpoint
from fapo_mini.model import save_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
SMALL = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "16", "--lr", "1e-3",
         "--judge", "oracle", "--overlong-buffer", "8", "--mini-batches", "2"]


def cmd(model, data, out, *extra):
    return [sys.executable, "train_policy.py", "--model", str(model), "--data", str(data), "--out", str(out),
            *SMALL, *map(str, extra)]


def run(argv, timeout=120, env=ENV):
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def start(argv, log_dir: Path, env=ENV):
    """A background run; stdout / stderr go to files (a pipe nobody reads could block the child)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w") as so, open(log_dir / "stderr", "w") as se:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=so, stderr=se)


def wait_until(cond, proc, timeout=120):
    t_end = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with {proc.returncode} before the awaited point")
        if time.time() > t_end:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.002)


def metrics(out):
    """metrics.jsonl without the wall-clock keys, which no two runs share."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")} for line in lines]


def ckpt_names(out):
    return sorted(p.name for p in (Path(out) / "ckpt").iterdir())


def assert_same(a, b, where="state"):
    """Exact equality of nested dicts / lists / tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_clean_error(res, *needles):
    """Non-zero exit, every needle in stderr, and a message rather than a traceback."""
    assert res.returncode != 0, res.stderr
    for n in needles:
        assert n in res.stderr, f"{n!r} not in stderr:\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr, f"a traceback instead of a message:\n{res.stderr[-2000:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model folder, data file): the warm-started tiny policy and 16 toy training prompts."""
    root = tmp_path_factory.mktemp("world")
    tok = toyworld.make_tokenizer()
    model = sft.new_model("d64-l2", tok)
    pairs = toyworld.sft_mixture(toyworld.generate(256, 1, "train"))
    sft.train(model, sft.tokenize_pairs(pairs, tok), steps=20, batch_size=32, lr=1e-2)
    save_model(model, root / "model", tok)
    rows = toyworld.policy_rows(toyworld.generate(16, 0, "train"), "train")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", root / "train.jsonl"


@pytest.fixture(scope="module")
def run_a(world, tmp_path_factory):
    """The reference: 4 steps uninterrupted, a checkpoint after each (the newest 2 kept)."""
    out = tmp_path_factory.mktemp("run_a") / "out"
    res = run(cmd(*world, out, "--steps", 4, "--save-every", 1))
    assert res.returncode == 0, res.stderr[-3000:]
    assert ckpt_names(out) == ["step_00000003", "step_00000004"]
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    assert any(m["grad_norm"] > 0 for m in metrics(out)), "zero updates: the resume checks would be vacuous"
    return out


def copy_run(src, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(src, dst)
    return dst


def test_sigkill_then_rerun_equals_uninterrupted_run(world, run_a, tmp_path):
    out = tmp_path / "out"
    argv = cmd(*world, out, "--steps", 4, "--save-every", 1)
    proc = start(argv, tmp_path / "killed")
    wait_until(lambda: (out / "ckpt" / "step_00000002" / "COMPLETE").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL, "the run ended on its own: the kill came too late"
    resume_at = int(latest_checkpoint(out, 1).name.removeprefix("step_"))
    assert resume_at in (2, 3), f"killed after step {resume_at}: too late to test anything"

    res = run(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    first = res.stdout.splitlines()[0]
    assert first == f"resuming from {out / 'ckpt' / f'step_{resume_at:08d}'} at step {resume_at}", first
    # lines the killed run logged after its last checkpoint were dropped, the rest match exactly
    assert metrics(out) == metrics(run_a)
    a, b = run_a / "ckpt" / "step_00000004", out / "ckpt" / "step_00000004"
    assert_same(load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors"), "weights")
    sa, sb = (torch.load(d / "state.pt", weights_only=True) for d in (a, b))
    assert_same({k: sa[k] for k in ("optimizer", "scheduler", "step")},
                {k: sb[k] for k in ("optimizer", "scheduler", "step")})
    ra, rb = (torch.load(d / "rank0.pt", weights_only=True) for d in (a, b))
    # the RNGs the run draws from; python's `random` and numpy's global RNG are never seeded by a run
    assert_same((ra["rng"]["torch"], ra["sampler_rng"]), (rb["rng"]["torch"], rb["sampler_rng"]), "rng")
    assert not list((out / "ckpt").glob(".tmp-*"))


def test_checkpoint_with_a_missing_file_falls_back_to_the_previous(world, run_a, tmp_path):
    out = copy_run(run_a, tmp_path)
    (out / "ckpt" / "step_00000004" / "state.pt").unlink()
    res = run(cmd(*world, out, "--steps", 5, "--save-every", 1))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0] == f"skipping {out / 'ckpt' / 'step_00000004'}: missing ['state.pt']", lines
    assert lines[1] == f"resuming from {out / 'ckpt' / 'step_00000003'} at step 3", lines
    # step 4 is redone from step 3's state, so it reproduces the reference's step 4
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3, 4, 5]
    assert m[:4] == metrics(run_a)
    assert ckpt_names(out) == ["step_00000004", "step_00000005"]
    assert (out / "ckpt" / "step_00000004" / "state.pt").is_file()


def test_sigterm_finishes_the_step_saves_and_exits_0(world, tmp_path):
    out = tmp_path / "out"
    proc = start(cmd(*world, out, "--steps", 1000, "--save-every", 0), tmp_path / "log")
    path = out / "metrics.jsonl"
    wait_until(lambda: path.exists() and path.read_text().strip(), proc)   # inside the loop: handler installed
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, (tmp_path / "log" / "stderr").read_text()[-3000:]
    stdout = (tmp_path / "log" / "stdout").read_text()
    assert "got SIGTERM: finishing this step, saving, then exiting" in stdout
    stopped = re.search(r"stopped at step (\d+); run the same command to resume", stdout)
    assert stopped, stdout
    k = int(stopped.group(1))
    assert 1 <= k < 1000
    assert [m["step"] for m in metrics(out)] == list(range(1, k + 1))
    assert ckpt_names(out) == [f"step_{k:08d}"]                            # --save-every 0: only the stop saved
    assert latest_checkpoint(out, 1) == out / "ckpt" / f"step_{k:08d}"
    assert torch.load(out / "ckpt" / f"step_{k:08d}" / "state.pt", weights_only=True)["step"] == k


def test_changed_flag_refuses_to_resume_and_fresh_starts_over(world, run_a, tmp_path):
    out = copy_run(run_a, tmp_path)
    res = run(cmd(*world, out, "--steps", 5, "--lam", 0))
    assert_clean_error(res, "--lam is 0.0 here, 1.0 in the checkpoint", "--fresh")
    assert ckpt_names(out) == ["step_00000003", "step_00000004"]            # nothing was touched
    assert metrics(out) == metrics(run_a)

    res = run(cmd(*world, out, "--steps", 1, "--lam", 0, "--fresh"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" not in res.stdout
    assert ckpt_names(out) == ["step_00000001"]                             # the old run's checkpoints are gone
    assert [m["step"] for m in metrics(out)] == [1]
    assert json.loads((out / "config.json").read_text())["lam"] == 0.0


def test_fewer_steps_than_the_checkpoint_refuses_to_resume(world, run_a, tmp_path):
    out = copy_run(run_a, tmp_path)
    config = (out / "config.json").read_text()
    res = run(cmd(*world, out, "--steps", 2))
    assert_clean_error(res, f"--steps 2: {out} is already at step 4", "--fresh")
    assert ckpt_names(out) == ["step_00000003", "step_00000004"] and metrics(out) == metrics(run_a)
    assert (out / "config.json").read_text() == config                      # still says the run's own --steps


@pytest.mark.parametrize("name", ["state.pt", "rank0.pt"])
def test_an_unreadable_checkpoint_file_is_one_line_naming_it(world, run_a, tmp_path, name):
    out = copy_run(run_a, tmp_path)
    bad = out / "ckpt" / "step_00000004" / name
    bad.write_bytes(bad.read_bytes()[:100])                                 # a torn file, as a damaged disk leaves
    res = run(cmd(*world, out, "--steps", 5))
    assert_clean_error(res, f"{bad}: unreadable checkpoint file", f"delete {bad.parent} to resume from the "
                       "checkpoint before it, or pass --fresh")
    assert metrics(out) == metrics(run_a)                                   # nothing was rewritten


def test_checkpoint_from_before_the_fused_projections_is_one_line(world, run_a, tmp_path):
    """A checkpoint whose state.pt lists no parameter names (saved before qkv_proj / gate_up_proj:
    its AdamW state is per q/k/v and gate/up tensor) is refused with a message, not torch's."""
    out = copy_run(run_a, tmp_path)
    ckpt = out / "ckpt" / "step_00000004"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert any(n.endswith("qkv_proj.weight") for n in state.pop("params"))   # what checkpoints now record
    torch.save(state, ckpt / "state.pt")
    res = run(cmd(*world, out, "--steps", 5))
    assert_clean_error(res, f"{ckpt}: its optimizer state does not fit this model (saved before q/k/v and gate/up "
                       f"were fused); its weights, {ckpt / 'model'}, still load as a --model; pass --fresh")
    assert metrics(out) == metrics(run_a)                                   # nothing was rewritten


def _write(path, text):
    path.write_text(text)
    return path


def _bad_rows(world, tmp_path, lineno, line):
    """The training rows with line `lineno` (1-based) replaced by `line`, as a new jsonl file."""
    lines = world[1].read_text().splitlines()
    lines[lineno - 1] = line
    return _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")


def _row_without(world, lineno, field):
    """Row `lineno` of the training rows as a JSON line, the dotted `field` deleted."""
    row = json.loads(world[1].read_text().splitlines()[lineno - 1])
    *parents, last = field.split(".")
    inner = row
    for key in parents:
        inner = inner[key]
    del inner[last]
    return json.dumps(row)


def _model_copy(world, tmp_path, drop=(), tokenizer=None):
    folder = tmp_path / "model"
    shutil.copytree(world[0], folder)
    for name in drop:
        (folder / name).unlink()
    if tokenizer is not None:
        for f in folder.glob("tokenizer*"):
            f.unlink()
        tokenizer.save_pretrained(folder)
    return folder


BAD_INPUT = {
    # case: (world, tmp_path) -> the (data, model) to run on; what stderr must say ({data}, {model}: those paths)
    "malformed_json_line": (
        lambda w, t: (_bad_rows(w, t, 2, '{"prompt": "a=1;?a\\n",'), w[0]),
        "{data}:2: malformed JSON"),
    "row_missing_prompt": (
        lambda w, t: (_bad_rows(w, t, 3, _row_without(w, 3, "prompt")), w[0]),
        "{data}:3: row is missing field 'prompt'"),
    "row_missing_ground_truth": (
        lambda w, t: (_bad_rows(w, t, 5, _row_without(w, 5, "reward_model.ground_truth")), w[0]),
        "{data}:5: row is missing field 'reward_model.ground_truth'"),
    "empty_data_file": (
        lambda w, t: (_write(t / "empty.jsonl", ""), w[0]),
        "{data}: the data set is empty"),
    "data_path_missing": (
        lambda w, t: (t / "nope.jsonl", w[0]),
        "data file not found: {data}"),
    "model_without_config": (
        lambda w, t: (w[1], _model_copy(w, t, drop=["config.json"])),
        "{model}: no config.json"),
    "model_without_weights": (
        lambda w, t: (w[1], _model_copy(w, t, drop=["model.safetensors"])),
        "{model}: no model.safetensors"),
    "tokenizer_without_eos": (
        lambda w, t: (w[1], _model_copy(w, t, tokenizer=PreTrainedTokenizerFast(
            tokenizer_object=toyworld.make_tokenizer().backend_tokenizer))),
        "{model}: the tokenizer has no EOS token"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_a_clear_message(world, tmp_path, case):
    make, message = BAD_INPUT[case]
    data, model = make(world, tmp_path)
    res = run(cmd(model, data, tmp_path / "out", "--steps", 1))
    assert_clean_error(res, message.format(data=data, model=model))
    assert not (tmp_path / "out" / "ckpt").exists()


def test_nonfinite_grad_norm_stops_naming_the_step(world, tmp_path):
    # A k3 KL weight of 1e38: in step 1 (one optimizer step) the policy IS the reference, so
    # the KL and its gradient are exactly 0 and the step is ordinary; from step 2 on the two
    # differ and 1e38 * the KL gradient overflows float32: the grad norm is inf (or nan).
    out = tmp_path / "out"
    res = run(cmd(*world, out, "--steps", 3, "--save-every", 1, "--kl-coef", 1e38, "--mini-batches", 1))
    assert_clean_error(res, "step 2: grad norm is", "the last checkpoint is left as it was")
    assert re.search(r"grad norm is (inf|nan)", res.stderr)
    assert [m["step"] for m in metrics(out)] == [1]
    assert ckpt_names(out) == ["step_00000001"]                            # no step 2, no .tmp leftover
    ckpt = latest_checkpoint(out, 1)
    assert ckpt == out / "ckpt" / "step_00000001"
    listed = (ckpt / "COMPLETE").read_text().splitlines()
    assert sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()) == sorted(listed + ["COMPLETE"])
    assert torch.load(ckpt / "state.pt", weights_only=True)["step"] == 1
    assert all(torch.isfinite(w).all() for w in load_file(ckpt / "model" / "model.safetensors").values())


# ----------------------------------------------------------------------------
# FSDP2 (--fsdp, 2 gloo ranks): a rank killed with SIGKILL, then the same command, equals a run never stopped

GLOO = {**ENV, "CUDA_VISIBLE_DEVICES": ""}       # two CPU ranks even on a GPU machine


def torchrun_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *cmd(model, data, out, "--fsdp", *extra)[1:]]


def children(pid):
    """Process ids whose parent is `pid` (torchrun's workers), read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def sharded_optimizer(ckpt, tmp_path):
    """The DCP folder of a checkpoint as one plain state dict (DCP's own single-process converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dst = tmp_path / f"{ckpt.parent.parent.parent.name}-{ckpt.name}.pt"
    dcp_to_torch_save(ckpt / "sharded", dst)
    return torch.load(dst, weights_only=False)


def test_fsdp_sigkill_then_rerun_equals_uninterrupted_run(world, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    res = run(torchrun_cmd(*world, ref, "--steps", 2, "--save-every", 1), timeout=300, env=GLOO)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = start(torchrun_cmd(*world, out, "--steps", 2, "--save-every", 1), tmp_path / "log", env=GLOO)
    wait_until(lambda: (out / "ckpt" / "step_00000001" / "COMPLETE").exists(), proc, timeout=300)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)                                    # rank 1 dies; torchrun stops rank 0
    assert proc.wait(120) != 0, "the run ended on its own: the kill came too late"
    resume_at = int(latest_checkpoint(out, 2).name.removeprefix("step_"))
    assert resume_at == 1, f"killed after step {resume_at}: too late to test anything"

    res = run(torchrun_cmd(*world, out, "--steps", 2, "--save-every", 1), timeout=300, env=GLOO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {out / 'ckpt' / f'step_{resume_at:08d}'} at step {resume_at}" in res.stdout
    assert metrics(out) == metrics(ref)
    assert any(m["grad_norm"] > 0 for m in metrics(ref))
    a, b = ref / "ckpt" / "step_00000002", out / "ckpt" / "step_00000002"
    assert_same(load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors"), "weights")
    assert_same(sharded_optimizer(a, tmp_path), sharded_optimizer(b, tmp_path), "optimizer")
    assert "optimizer" not in torch.load(a / "state.pt", weights_only=True)   # AdamW lives only in the shards
    for r in range(2):
        ra, rb = (torch.load(d / f"rank{r}.pt", weights_only=True) for d in (a, b))
        assert_same((ra["rng"]["torch"], ra["sampler_rng"]), (rb["rng"]["torch"], rb["sampler_rng"]), "rng")
