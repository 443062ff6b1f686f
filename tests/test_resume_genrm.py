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
must reproduce its metrics lines and its weights exactly.
"""
import json
import sys

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


def test_sampling_genrm_resumes_exactly(tmp_path):
    policy = bigram_folder(tmp_path / "policy", {"": {"a": 5}, "a": {"n": 5}, "n": {"s": 5}, "s": {"=": 5},
                                                  "=": {"6": 5, "5": 5}, "6": {"<eos>": 5}, "5": {"<eos>": 5}})
    genrm = bigram_folder(tmp_path / "genrm", {"": {"\\": 5}, "\\": {"b": 5}, "b": {"o": 5}, "o": {"x": 5},
                                                "x": {"e": 5}, "e": {"d": 5}, "d": {"{": 5}, "{": {"0": 5, "-": 5},
                                                "-": {"1": 5}, "0": {"}": 5}, "1": {"}": 5}, "}": {"<eos>": 5}})
    rows = [r for r in toyworld.policy_rows(toyworld.generate(200, 0, "train"), "train")
            if r["reward_model"]["ground_truth"] == "6"][:8]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cmd(out, steps):
        return [sys.executable, "train_policy.py", "--model", policy, "--data", data, "--out", out,
                "--steps", steps, "--save-every", 1, "--prompts-per-step", 4, "--group-size", 4,
                "--max-new-tokens", 8, "--lr", 1e-2, "--lam", 1, "--judge", "genrm", "--genrm", genrm,
                "--genrm-temperature", 1.0, "--genrm-max-new-tokens", 12]

    def train(argv):
        res = run([str(x) for x in argv])
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    a, b = tmp_path / "a", tmp_path / "b"
    train(cmd(a, 3))
    train(cmd(b, 1))                                             # b: stopped after step 1...
    saved = torch.load(b / "ckpt" / "step_00000001" / "rank0.pt", weights_only=True)["rng"]["generators"]["genrm"]
    res = train(cmd(b, 3))                                       # ...then resumed
    assert res.stdout.splitlines()[0] == f"resuming from {b / 'ckpt' / 'step_00000001'} at step 1"

    lines = metrics(a)
    assert [m["step"] for m in lines] == [1, 2, 3] and metrics(b) == lines
    # the GenRM's noise decided something: some correct rollouts were judged flawed, some not
    assert all(m["judge_invalid"] in (0, None) for m in lines), lines
    assert any(0 < (m["judge_fp_ratio"] or 0) < 1 for m in lines), lines
    # ...and its generator had moved on by the stop, so a freshly seeded one would differ
    assert not torch.equal(saved, torch.Generator().manual_seed(0).get_state())

    ca, cb = a / "ckpt" / "step_00000003", b / "ckpt" / "step_00000003"
    assert_same(load_file(ca / "model" / "model.safetensors"), load_file(cb / "model" / "model.safetensors"))
    assert_same(*(torch.load(c / "rank0.pt", weights_only=True) for c in (ca, cb)), "rng")
