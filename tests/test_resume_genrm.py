"""A run judged by a sampling GenRM (--genrm-temperature > 0) resumes exactly.

The GenRM draws its critiques from its own torch.Generator, so that generator's state must
travel with the checkpoint like every other RNG state. Both models here are hand-built
bigram models (every layer's output projection zero, so the next token depends only on
the current one) that need no training and make every step matter:
  - the policy writes `ans=6` or `ans=5`, 50/50, and every prompt's answer is 6, so about
    half the rollouts are correct and reach the GenRM;
  - the GenRM writes `\\boxed{0}` (flawed) or `\\boxed{-1}` (clean), 50/50, so its noise
    decides the FAPO rewards (lam 1: a flawed positive scores 0 instead of 1), hence the
    advantages and the update.
The reference is the same command run uninterrupted; a run stopped after step 1 and resumed
must reproduce its metrics lines, its weights and its RNG states exactly. The same runs
report to TensorBoard, whose curves must continue across the resume (--report-to; wandb's
offline run is checked in tests/test_tracking.py).
"""
import glob
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from conftest import EOS, make_byte_tokenizer, tiny_config
from fapo_mini import toyworld
from test_resume import assert_same, metrics, run


def bigram_folder(folder, chain: dict[str, dict[str, float]]):
    """An HF Qwen2 folder whose next-token logits are chain[current char] ('' = any other token).

    With o_proj and down_proj zero the residual stream is the current token's embedding; each
    character of `chain` gets its own one-hot embedding, so lm_head's column for it is its row
    of next-token logits ("<eos>" names the EOS token).
    """
    model = Qwen2ForCausalLM(tiny_config("qwen2", num_hidden_layers=1)).float()
    keys = list(chain)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "norm" in name else 0.0)
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, keys.index("")] = 1.0                      # every other token: the default row
        for j, key in enumerate(keys):
            if key:
                emb[ord(key)] = 0.0
                emb[ord(key), j] = 1.0
            for nxt, logit in chain[key].items():
                head[EOS if nxt == "<eos>" else ord(nxt), j] = logit   # x 8 after RMSNorm of a one-hot
    model.save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    return folder


# logits 5 (x 8 after the norm): the listed next tokens only, equally likely
POLICY = {"": {"a": 5}, "a": {"n": 5}, "n": {"s": 5}, "s": {"=": 5}, "=": {"6": 5, "5": 5},
          "6": {"<eos>": 5}, "5": {"<eos>": 5}}
GENRM = {"": {"\\": 5}, "\\": {"b": 5}, "b": {"o": 5}, "o": {"x": 5}, "x": {"e": 5}, "e": {"d": 5},
         "d": {"{": 5}, "{": {"0": 5, "-": 5}, "-": {"1": 5}, "0": {"}": 5}, "1": {"}": 5}, "}": {"<eos>": 5}}


def answer_6_rows(path, n=8):
    """n toy-world training rows whose answer is 6, as a jsonl file."""
    rows = [r for r in toyworld.policy_rows(toyworld.generate(200, 0, "train"), "train")
            if r["reward_model"]["ground_truth"] == "6"][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Run 2 steps (a checkpoint after each), note what they left, delete the step-2 checkpoint
    (as if killed after logging step 2, before saving it), give step 1's saved config a retired
    flag, then run the same command again, with a --genrm-cache-gb of its own: it resumes at step 1. Returns (out, the uninterrupted run's metrics, weights, rank state,
    the GenRM generator state saved at step 1, the resumed run's stdout)."""
    root = tmp_path_factory.mktemp("resume_genrm")
    policy, genrm = bigram_folder(root / "policy", POLICY), bigram_folder(root / "genrm", GENRM)
    out = root / "out"
    argv = [str(x) for x in [
        sys.executable, "train_policy.py", "--model", policy, "--data", answer_6_rows(root / "train.jsonl"),
        "--out", out, "--steps", 2, "--save-every", 1, "--prompts-per-step", 4, "--group-size", 4,
        "--max-new-tokens", 8, "--lr", 1e-2, "--lam", 1, "--judge", "genrm", "--genrm", genrm,
        "--genrm-temperature", 1.0, "--genrm-max-new-tokens", 12, "--report-to", "tensorboard"]]
    res = run(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    step1, step2 = out / "ckpt" / "step_00000001", out / "ckpt" / "step_00000002"
    reference = (metrics(out), load_file(step2 / "model" / "model.safetensors"),
                 torch.load(step2 / "rank0.pt", weights_only=True))
    saved = torch.load(step1 / "rank0.pt", weights_only=True)["rng"]["generators"]["genrm"]
    shutil.rmtree(step2)
    state = torch.load(step1 / "state.pt", weights_only=True)
    state["config"]["genrm_cache_tokens"] = 0           # as a checkpoint saved before that flag was retired
    torch.save(state, step1 / "state.pt")
    res = run(argv + ["--genrm-cache-gb", "1"])         # a memory knob may change on resume (here it binds nothing)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, *reference, saved, res.stdout


def test_sampling_genrm_resumes_exactly(resumed):
    out, lines, weights, rank_state, saved, stdout = resumed
    assert stdout.splitlines()[0] == f"resuming from {out / 'ckpt' / 'step_00000001'} at step 1"
    assert [m["step"] for m in lines] == [1, 2] and metrics(out) == lines
    # the GenRM's noise decided something: some correct rollouts were judged flawed, some not
    assert all(m["judge_invalid"] in (0, None) for m in lines), lines
    assert any(0 < (m["judge_fp_ratio"] or 0) < 1 for m in lines), lines
    # ...and its generator had moved on by the stop, so a freshly seeded one would differ
    assert not torch.equal(saved, torch.Generator().manual_seed(0).get_state())
    step2 = out / "ckpt" / "step_00000002"
    assert_same(weights, load_file(step2 / "model" / "model.safetensors"), "weights")
    assert_same(rank_state, torch.load(step2 / "rank0.pt", weights_only=True), "rank state")


def test_tensorboard_curves_equal_metrics_jsonl_across_the_resume(resumed):
    """--report-to tensorboard, read back with tensorboard's EventAccumulator: every key of
    metrics.jsonl, step 2 once (the killed run's step 2 is purged), the same values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = resumed[0]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    want = {}
    for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):   # time_* included
        for k, v in m.items():
            if k != "step" and v is not None:                 # None: nothing to count, not logged
                want.setdefault(k, []).append((m["step"], v))
    assert sorted(acc.Tags()["scalars"]) == sorted(want)
    assert len(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))) == 2   # one file per process
    for key, curve in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in curve], key
        assert [v for _, v in got] == pytest.approx([v for _, v in curve], rel=1e-6, abs=1e-30), key  # float32


def test_oracle_judged_run_measures_its_genrm(tmp_path):
    """--judge oracle --genrm: the oracle sets the rewards, the GenRM is measured (judge_fp_ratio).
    The policy's `ans=6` skips every step, so the oracle flags every correct rollout; the GenRM's
    coin flips flag about half, and the reward follows the oracle's count, not the GenRM's."""
    policy, genrm = bigram_folder(tmp_path / "policy", POLICY), bigram_folder(tmp_path / "genrm", GENRM)
    out = tmp_path / "out"
    res = run([str(x) for x in [
        sys.executable, "train_policy.py", "--model", policy, "--data", answer_6_rows(tmp_path / "train.jsonl"),
        "--out", out, "--steps", 2, "--prompts-per-step", 4, "--group-size", 4, "--max-new-tokens", 8,
        "--lam", 1, "--judge", "oracle", "--genrm", genrm, "--genrm-temperature", 1.0, "--genrm-max-new-tokens", 12]])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = metrics(out)
    for m in lines:
        assert m["fp_ratio"] in (1.0, None)                        # None: no correct rollout that step
        acc = m["accuracy"]
        assert m["reward"] == pytest.approx(2 * acc - 1 - acc * (m["fp_ratio"] or 0), abs=1e-12)
    assert any(0 < (m["judge_fp_ratio"] or 0) < 1 for m in lines), lines
