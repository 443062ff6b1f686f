"""Memory and time per step of the recipes on an H100-80GB: ESTIMATES, from the code's own quantities.

    python bench/estimate.py                                   # markdown tables (recipes/README.md holds them)
    python bench/estimate.py --cuda-graphs                     # the same with CUDA-graph decode steps
    python bench/estimate.py --gpu-check gpu_check.json        # measured decode steps where bench/gpu_check.py has them
    python bench/estimate.py --mfu 0.3 --eager-us-per-op 14    # any assumption below, by its flag

Nothing here runs on a GPU. What comes from the code: the parameter counts (fapo_mini.model.Qwen built
on the meta device from the configurations below), the KV bytes per position, the ops of one decode
step (bench/decode_ops.py's torch.profiler count, on this machine's CPU: the proxy for GPU launches)
plus the sampler loop's own ops (counted the same way on fapo_mini.sampler.Sampler), the slot
sampler's refill (fapo_mini/slots.py), the judge's wave plan (one dense slot of longest critic prompt
+ cap positions per critique, as many as fit --genrm-cache-gb), what the trainer keeps (DDP buckets,
FSDP2 shards, the rollout copy, the recomputed old log-probs). What is assumed: everything in
`Assumptions` (hardware rates, response lengths, accuracy), each a flag. A JSON of bench/gpu_check.py
from a real GPU replaces modelled decode steps by measured ones, per use and model shape: its
sampler_R parts the policy sampler's steps of the 1.5B shape, its judge part the judge's steps of
the Qwen3-4B GenRM (MEASURED_SHAPES).
"""
import argparse
import dataclasses
import json
import math
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch

from fapo_mini.judge import AUTO_SHARE, wave_plan
from fapo_mini.model import ModelConfig, Qwen

GiB = 2**30


# ---------------------------------------------------------------- assumptions (each one a flag)

@dataclasses.dataclass
class Assumptions:
    # hardware: an H100 SXM 80GB
    peak_tflops: float = 989.0           # dense bf16 peak
    mfu: float = 0.40                    # share of the peak training and prefill reach (assumed)
    hbm_tb_s: float = 2.5                # effective HBM bandwidth, TB/s (~75% of the 3.35 peak)
    eager_us_per_op: float = 10.0        # host cost of one top-level aten op of an eager decode step
    graph_us_per_op: float = 2.5         # GPU time of one kernel replayed in a CUDA graph (views: none)
    cuda_graphs: bool = False            # model --cuda-graphs decode steps (the recipes do not pass it)
    gpu_gib: float = 79.6                # what torch sees of an 80 GB H100
    outside_torch_gib: float = 1.5       # CUDA context, NCCL buffers: not in max_memory_allocated
    judge_target_gib: float = 72.0       # the judge peak the proposed --genrm-cache-gb keeps under
    # training
    flops_per_token: float = 10.0        # x N: 6 (fwd + bwd) + 2 (gradient checkpointing recomputes the
                                         # forward) + 2 (the old log-probs recomputed by the trainer:
                                         # update.trainer_old_logp, on whenever the sampler runs a copy)
    act_backward_factor: float = 1.5    # one recomputed layer's saved tensors x this: gradients in flight
    logp_chunk_copies: float = 4.0       # fp32 (2048, vocab) tensors alive in token_logprobs' chunk
    nvlink_gb_s: float = 300.0           # FSDP2 all-gather rate refreshing the rollout copy, GB/s
    # sampling
    check_every: int = 8                 # sampler.py's finish check on CUDA: refills happen at checks
    sampling_logit_copies: float = 5.0   # fp32 (slots, vocab) tensors while a token is sampled
    policy_prompt_mean: float = 250.0    # DAPO prompt tokens, mean
    policy_prompt_max: int = 512         # ... the longest in a call (the scale table's 512)
    policy_response_mean: float = 1200.0 # policy response tokens early in training
    accuracy: float = 0.5                # share of policy rollouts that are correct (judged by the GenRM)
    critic_overhead_max: int = 628       # critic prompt minus the response: template + chat + problem, longest
    critic_overhead_mean: float = 400.0  # ... mean
    critique_mean: float = 2000.0        # GenRM critique tokens, mean (at most the cap)
    genrm_rl_prompt_mean: float = 1100.0 # FAPO-Critic prompt tokens, mean
    genrm_rl_prompt_max: int = 2500      # ... the longest in a call
    genrm_rl_response_mean: float = 1500.0
    eval_accuracy_aime: float = 0.15     # avg@32 of a 1.5B math policy on AIME (for the judge's load)
    eval_accuracy_math500: float = 0.7


JUDGE_AUTO_SHARE = AUTO_SHARE   # fapo_mini/judge.py: --genrm-cache-gb 0 = this share of the memory free at the call
JUDGE_DEFAULT_MAX_ROWS = 256    # GenRMJudge's max_rows when no --genrm-max-rows is given (rollout.py)
SAMPLER_DEFAULT_MAX_ROWS = 256  # Sampler's max_rows (rollout.py builds it with the default)
EVAL_BATCH_PROMPTS = 64         # rollout.py --batch-size default: prompts per sampler call
PROPOSAL_MAX_NEW = 16384        # the judge's --genrm-max-new-tokens default (the authors' cap)


# ---------------------------------------------------------------- models (published config.json values)

def _cfg(family, hidden, inter, layers, heads, kv, vocab, tied, positions):
    return ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, model_type=family,
                       tie_word_embeddings=tied, max_position_embeddings=positions)


QWEN25_MATH_1P5B = ("Qwen2.5-Math-1.5B", _cfg("qwen2", 1536, 8960, 28, 12, 2, 151936, True, 4096))
QWEN25_MATH_7B = ("Qwen2.5-Math-7B", _cfg("qwen2", 3584, 18944, 28, 28, 4, 152064, False, 4096))
QWEN3_1P7B = ("Qwen3-1.7B", _cfg("qwen3", 2048, 6144, 28, 16, 8, 151936, True, 40960))
QWEN3_4B_INSTRUCT_2507 = ("Qwen3-4B-Instruct-2507", _cfg("qwen3", 2560, 9728, 36, 32, 8, 151936, True, 262144))
MODELS = (QWEN25_MATH_1P5B, QWEN25_MATH_7B, QWEN3_1P7B, QWEN3_4B_INSTRUCT_2507)
# bench/gpu_check.py's parts -> (use, the model shape its measurements stand for): the sampler_R parts
# time the policy sampler at the 1.5B shape (lm_head untied), the judge part the GenRM judge at 4B.
# A part's "shape" field, where it has one, names the model instead.
MEASURED_SHAPES = {"sampler": QWEN25_MATH_1P5B[0], "judge": QWEN3_4B_INSTRUCT_2507[0]}


# ---------------------------------------------------------------- recipe knobs (= the scripts' defaults)
# tests/test_estimate.py checks each against what recipes/*.sh set. GENRM_CACHE_GB None: the recipe
# passes no --genrm-cache-gb, so the judge takes JUDGE_AUTO_SHARE of the memory free at each call.

POLICY_1P5B = dict(NPROC=8, PROMPTS=128, GROUP=8, MAX_NEW=3072, OVERLONG=1536, MINI=4, ROLLOUT_ROWS=128,
                   MICRO_TOKENS=16384, GENRM_MAX_NEW=16384, GENRM_ROWS=24, GENRM_CACHE_GB=39, STEPS=200,
                   FSDP=False)                              # recipes/policy_qwen25_math_1p5b.sh
POLICY_7B = dict(POLICY_1P5B, PROMPTS=64, MINI=2, GENRM_CACHE_GB=42, FSDP=True)  # the same script, SIZE=7b
GENRM_RL_4B = dict(NPROC=8, PROMPTS=32, GROUP=16, MAX_NEW=4096, OVERLONG=2048, MINI=1, ROLLOUT_ROWS=32,
                   MICRO_TOKENS=16384, STEPS=500, FSDP=True)  # recipes/genrm_qwen3_4b.sh
GENRM_RL_1P7B = dict(GENRM_RL_4B, FSDP=False)                # the same script, SIZE=1.7b
EVAL = dict(NGPU=8, MAX_NEW=3072, GENRM_MAX_NEW=16384, GENRM_CACHE_GB=64,
            N={"aime24": 32, "aime25": 32, "math500": 4})    # recipes/eval.sh
EVAL_PROBLEMS = {"aime24": 30, "aime25": 30, "math500": 500}


# ---------------------------------------------------------------- what the code says

@lru_cache(maxsize=None)
def counts(cfg_key):
    """(parameters, parameters of one block) of the code's Qwen on this config, built on the meta device."""
    cfg = _by_key[cfg_key]
    with torch.device("meta"):
        model = Qwen(cfg)
    total = sum(p.numel() for p in model.parameters())      # parameters() counts a tied head once
    return total, sum(p.numel() for p in model.model.layers[0].parameters())


_by_key = {name: cfg for name, cfg in MODELS}


def n_params(model) -> int:
    return counts(model[0])[0]


def kv_bytes_per_token(model, dtype_bytes=2) -> int:
    """K and V of every layer for one position, in bf16: the sampler's cache takes the compute dtype."""
    c = model[1]
    return c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * dtype_bytes


@lru_cache(maxsize=None)
def decode_op_counts(family: str) -> dict:
    """Top-level aten ops of one decode step: the model's (bench/decode_ops.py: per layer = the 6- minus the
    2-layer tiny model's count, over 4) and the sampler loop's around it (sampling, bookkeeping, the cache
    views, lm_head), counted the same way on fapo_mini.sampler.Sampler with 1- and 2-layer tiny models
    (minus the model's own ops). CPU, fp32, SDPA path."""
    from decode_ops import VIEWS, top_level_ops
    model = {L: top_level_ops(family, L, "cpu", torch.float32) for L in (1, 2, 6)}
    sampler = {L: _sampler_step_ops(family, L, VIEWS) for L in (1, 2)}
    loop = {L: (sampler[L][0] - model[L][0], sampler[L][1] - model[L][1]) for L in (1, 2)}
    per_layer, per_layer_views = (model[6][0] - model[2][0]) / 4, (model[6][1] - model[2][1]) / 4
    loop_per_layer, loop_per_layer_views = loop[2][0] - loop[1][0], loop[2][1] - loop[1][1]
    return dict(per_layer=per_layer, per_layer_views=per_layer_views,
                outside=model[2][0] - 2 * per_layer, outside_views=model[2][1] - 2 * per_layer_views,
                loop_per_layer=loop_per_layer, loop_per_layer_views=loop_per_layer_views,
                loop=loop[1][0] - loop_per_layer, loop_views=loop[1][1] - loop_per_layer_views)


def _sampler_step_ops(family, layers, views):
    """(ops, of which views) of one Sampler loop iteration (with its finish check) on a tiny random model:
    the difference of two profiled generate calls, 3 and 2 tokens, check_every=1, rows never finishing early."""
    from torch.profiler import ProfilerActivity, profile
    from fapo_mini.sampler import Sampler, SamplingParams

    class Tok:                  # what Sampler reads of a tokenizer; the EOS id 1000 is outside the vocabulary
        eos_token_id = 1000

        def decode(self, ids, skip_special_tokens=False):
            return ""

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, model_type=family,
                      attention_bias=family == "qwen2", tie_word_embeddings=True, max_position_embeddings=256)
    sampler = Sampler(Qwen(cfg).eval(), Tok(), max_rows=8, check_every=1)
    prompts = [list(range(1, 11))]
    sampler.generate(prompts, SamplingParams(n=8, max_new_tokens=2))                     # warm-up
    out = []
    for new in (2, 3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sampler.generate(prompts, SamplingParams(n=8, max_new_tokens=new))
        top = [e.name for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
        out.append((len(top), sum(name in views for name in top)))
    return out[1][0] - out[0][0], out[1][1] - out[0][1]


def ops_per_step(model) -> tuple[float, float, float]:
    """(all ops, of which views, of which the sampler loop's) of one decode step of `model`."""
    c, L = decode_op_counts(model[1].model_type), model[1].num_hidden_layers
    loop = c["loop"] + L * c["loop_per_layer"]
    ops = c["outside"] + L * c["per_layer"] + loop
    views = c["outside_views"] + L * c["per_layer_views"] + c["loop_views"] + L * c["loop_per_layer_views"]
    return ops, views, loop


# ---------------------------------------------------------------- measured decode steps (bench/gpu_check.py)

def read_gpu_check(path) -> dict:
    """From a gpu_check JSON: {"sampler": {shape: entry}, "judge": {shape: entry}, "device", "path", "note"},
    entry = {"eager": {rows: ms}, "cuda_graphs": {rows: ms}, "context": what its prompts / slots were}.
    A mode's passed runs only; nothing from a CPU run at tiny sizes (not the models' shapes)."""
    report = json.loads(Path(path).read_text())
    out = {"sampler": {}, "judge": {}, "device": report.get("device", "?"), "path": str(path), "note": ""}
    if report.get("tiny") or not report.get("cuda", True):
        out["note"] = "tiny sizes (no CUDA): not the models' shapes, not used"
        return out

    def add(use, part, rows, runs, context):
        entry = out[use].setdefault(part.get("shape") or MEASURED_SHAPES[use],
                                    {"eager": {}, "cuda_graphs": {}, "context": context})
        for mode in ("eager", "cuda_graphs"):
            r = runs.get(mode) or {}
            if r.get("status") == "pass" and isinstance(r.get("ms_per_decode_step"), (int, float)):
                entry[mode][int(rows)] = float(r["ms_per_decode_step"])

    for name, part in (report.get("parts") or {}).items():
        if not isinstance(part, dict):
            continue
        if name.startswith("sampler_"):
            add("sampler", part, part.get("rows") or int(name.split("_")[1]), part,
                f"gpu_check's prompts are {part.get('prompt_len', 256)} tokens")
        elif name == "judge":
            for rows, runs in (part.get("by_rows") or {}).items():
                add("judge", part, rows, runs if isinstance(runs, dict) else {},
                    f"gpu_check's critic prompts are {part.get('prompt_len', '?')} tokens in slots of "
                    f"{part.get('slot_positions', '?')} positions")
    return out


def interpolate(points: dict, x: float) -> tuple[float, str]:
    """Piecewise-linear in rows between measured points, clamped outside them."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]], "" if x == xs[0] else f" (clamped to {xs[0]} rows)"
    if x >= xs[-1]:
        return points[xs[-1]], "" if x == xs[-1] else f" (clamped to {xs[-1]} rows)"
    for lo, hi in zip(xs, xs[1:]):
        if lo <= x <= hi:
            return points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo), ""


# ---------------------------------------------------------------- time

def decode_step(model, slots, live_tokens, a: Assumptions, measured=None, use="sampler") -> tuple[float, str]:
    """(seconds, how) of one decode step of `slots` live rows holding `live_tokens` positions each:
    max(launch-bound, bytes read (bf16 weights + the live KV) / HBM, 2N FLOPs per row / (MFU x peak)).
    Where `measured` (read_gpu_check) has steps of this use ("sampler" or "judge") and model shape in
    this mode: those, interpolated in rows, and at least the HBM and compute times."""
    ops, views, loop = ops_per_step(model)
    if a.cuda_graphs:   # kernels back to back in the graph; the host still runs the sampler loop eagerly
        launch = max((ops - views) * a.graph_us_per_op, loop * a.eager_us_per_op) * 1e-6
    else:
        launch = ops * a.eager_us_per_op * 1e-6
    memory = (2 * n_params(model) + slots * live_tokens * kv_bytes_per_token(model)) / (a.hbm_tb_s * 1e12)
    compute = 2 * n_params(model) * slots / (a.mfu * a.peak_tflops * 1e12)
    mode = "cuda_graphs" if a.cuda_graphs else "eager"
    points = ((measured or {}).get(use) or {}).get(model[0], {}).get(mode)
    if points:
        ms, note = interpolate(points, slots)
        return max(ms * 1e-3, memory, compute), f"measured{note}"
    bound = max((launch, "launch"), (memory, "HBM"), (compute, "compute"))
    return bound[0], bound[1]


def sampler_call(model, rows, max_rows, prompt_mean, resp_mean, cap, distinct_prompts, a, measured=None,
                 use="sampler") -> dict:
    """One Sampler.generate call of `rows` rows in slots = min(max_rows, rows) slots. Decode steps, an
    estimate: while rows wait, every slot is busy, (rows - slots) x mean / slots steps; then the last
    rows run to the cap (early in training some row reaches it). Each refill (at most one per
    check_every steps, one per waiting row) is a packed prefill: its FLOPs, and launches ~ one step's.
    Rows that finish between two checks run on (up to check_every - 1 steps): left out."""
    slots = min(max_rows, rows)
    mean = min(resp_mean, cap)
    queue_steps = max(0, rows - slots) * mean / slots
    steps = queue_steps + cap
    fills = 1 + min(max(0, rows - slots), math.ceil(queue_steps / a.check_every))
    step_s, how = decode_step(model, slots, prompt_mean + mean / 2, a, measured, use)
    prefill_s = (2 * n_params(model) * distinct_prompts * prompt_mean / (a.mfu * a.peak_tflops * 1e12)
                 + fills * step_s)
    return dict(rows=rows, slots=slots, steps=steps, step_s=step_s, how=how, fills=fills,
                seconds=steps * step_s + prefill_s)


def update_seconds(model, tokens, a) -> float:
    """The PPO update of `tokens` packed tokens (prompt + response) on one GPU, compute-bound."""
    return a.flops_per_token * n_params(model) * tokens / (a.mfu * a.peak_tflops * 1e12)


# ---------------------------------------------------------------- memory (bytes, per GPU)

def state_bytes(model, fsdp, world, training) -> float:
    """fp32 weights 4 + AdamW moments 8 + gradients 4 bytes a parameter. DDP: the gradients live in
    DDP's all-reduce buckets (gradient_as_bucket_view), which stay allocated between steps: 16 bytes
    always. FSDP2: all of it / world, the gradient shards freed by zero_grad(set_to_none) between steps."""
    N = n_params(model)
    if not fsdp:
        return 16 * N
    return (16 if training else 12) * N / world


def fsdp_gathered_bytes(model) -> float:
    """FSDP2 while training: two blocks' bf16 weights (current + prefetch), the root's (embeddings, final
    norm, lm_head: FSDP2 keeps the root gathered from forward to backward) with its bf16 gradient
    (lm_head's accumulates over the log-prob chunks), one block's unsharded gradient in bf16 and in
    fp32 (reduce_dtype) before its reduce-scatter."""
    N, block = counts(model[0])
    root = N - model[1].num_hidden_layers * block
    return 2 * 2 * block + 2 * root + 2 * root + 6 * block


def layer_activation_bytes_per_token(model) -> float:
    """One block's saved tensors per token under bf16 autocast (recomputed in backward): two RMSNorms'
    fp32 intermediates (3 x 4C each), then bf16: the qkv input, qkv, RoPE's cat and products, the
    attention output, o_proj's output, the MLP input, gate_up, silu, the product, down's output."""
    c = model[1]
    C, I, H, Hkv, D = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    return 24 * C + 2 * (4 * C + (H + 2 * Hkv) * D + 3 * (H + Hkv) * D + H * D + 4 * I)


def train_activation_bytes(model, micro_tokens, fsdp, a) -> float:
    """--grad-checkpointing, one micro-batch of micro_tokens packed tokens: every layer's input (fp32
    residual under DDP + autocast; bf16 under FSDP2, which casts the blocks' inputs to its param dtype),
    one layer recomputed with its gradients, the final hidden states and their scored copy, and one
    token_logprobs chunk of 2048 positions x vocab in fp32."""
    c = model[1]
    resid = 2 if fsdp else 4
    T = micro_tokens
    return (T * c.num_hidden_layers * c.hidden_size * resid
            + T * layer_activation_bytes_per_token(model) * a.act_backward_factor
            + 2 * T * c.hidden_size * resid
            + 2048 * c.vocab_size * 4 * a.logp_chunk_copies)


def prefill_bytes(model, tokens) -> float:
    """The transient of one packed prefill (Slots.fill) of `tokens` prompt tokens, bf16: every layer's
    K/V copied out (kv_out, until they are written into the slots) plus one layer's MLP at its peak
    (residual and its norm 2 x 2C, gate_up 4I, silu(gate) and the product 2I each)."""
    c = model[1]
    return tokens * (kv_bytes_per_token(model) + 4 * c.hidden_size + 8 * c.intermediate_size)


def sampling_extras(model, slots, rows, cap, a) -> float:
    """The (slots, vocab) fp32 logits and their sampling copies, the (rows, cap) output buffers."""
    return slots * model[1].vocab_size * 4 * a.sampling_logit_copies + (rows + 1) * cap * (8 + 4)


# ---------------------------------------------------------------- the judge

def judge_plan(genrm, longest, max_new, max_rows, budget) -> tuple[int, int]:
    """(critique cap, slots per wave): the code's own plan (fapo_mini.judge.wave_plan) for a bf16 GenRM,
    each slot's share of the first fill's prefill as prefill_bytes counts it."""
    return wave_plan(longest, max_new, genrm[1].max_position_embeddings, kv_bytes_per_token(genrm),
                     prefill_bytes(genrm, 1), budget, max_rows)


def judge(genrm, resident, critiques, longest, prompt_mean, max_new, max_rows, cache_gb, a, measured=None) -> dict:
    """One judge call on one GPU: `resident` bytes already allocated (policy state, rollout copy, GenRM
    weights). Peak = resident + the wave's dense KV cache + the prefill of its first slots (at the
    longest prompt: an upper bound)."""
    if cache_gb:
        budget, how = cache_gb * GiB, f"{cache_gb:g} GiB"
    else:
        free = (a.gpu_gib - a.outside_torch_gib) * GiB - resident
        budget, how = JUDGE_AUTO_SHARE * free, f"auto: {JUDGE_AUTO_SHARE:g} x {free / GiB:.1f} free"
    cap, slots = judge_plan(genrm, longest, max_new, max_rows, budget)
    slots = min(slots, max(1, critiques))
    cache = slots * (longest + cap) * kv_bytes_per_token(genrm)
    transient = prefill_bytes(genrm, slots * longest) + sampling_extras(genrm, slots, critiques, cap, a)
    call = sampler_call(genrm, max(1, critiques), slots, prompt_mean, min(a.critique_mean, cap), cap, critiques,
                        a, measured, use="judge")
    return dict(cap=cap, slots=slots, budget=budget, budget_how=how, cache=cache, transient=transient,
                peak=resident + cache + transient, critiques=critiques, call=call, seconds=call["seconds"])


def propose_cache_gb(peak_of, a) -> int:
    """The largest whole GiB of --genrm-cache-gb whose judge peak, peak_of(gb) bytes, stays under
    judge_target_gib (0 when not even 1 GiB does)."""
    fits = [gb for gb in range(1, int(a.gpu_gib) + 1) if peak_of(gb) <= a.judge_target_gib * GiB]
    return max(fits, default=0)


# ---------------------------------------------------------------- the runs

@dataclasses.dataclass
class PolicyRun:
    name: str
    policy: tuple
    genrm: tuple | None
    knobs: dict


@dataclasses.dataclass
class GenRMRun:
    name: str
    model: tuple
    knobs: dict


POLICY_RUNS = (PolicyRun("policy 1.5B GRPO", QWEN25_MATH_1P5B, None, POLICY_1P5B),
               PolicyRun("policy 1.5B FAPO, 1.7B GenRM", QWEN25_MATH_1P5B, QWEN3_1P7B, POLICY_1P5B),
               PolicyRun("policy 1.5B FAPO, 4B GenRM", QWEN25_MATH_1P5B, QWEN3_4B_INSTRUCT_2507, POLICY_1P5B),
               PolicyRun("policy 7B GRPO (FSDP2)", QWEN25_MATH_7B, None, POLICY_7B),
               PolicyRun("policy 7B FAPO, 4B GenRM (FSDP2)", QWEN25_MATH_7B, QWEN3_4B_INSTRUCT_2507, POLICY_7B))
GENRM_RUNS = (GenRMRun("GenRM RL 1.7B (DDP)", QWEN3_1P7B, GENRM_RL_1P7B),
              GenRMRun("GenRM RL 4B (FSDP2)", QWEN3_4B_INSTRUCT_2507, GENRM_RL_4B))
EVAL_GENRM = QWEN3_4B_INSTRUCT_2507


def rl_run(model, k, prompt_mean, prompt_max, resp_mean, a, measured, extra_resident=0.0) -> dict:
    """Memory and time of one RL step on one GPU, without the judge (policy or GenRM RL alike)."""
    world, fsdp = k["NPROC"], k["FSDP"]
    rows = k["PROMPTS"] // world * k["GROUP"]
    copy = 2 * n_params(model)
    between = state_bytes(model, fsdp, world, False) + copy + extra_resident
    act = train_activation_bytes(model, k["MICRO_TOKENS"], fsdp, a)
    train_state = state_bytes(model, fsdp, world, True) + (fsdp_gathered_bytes(model) if fsdp else 0)
    adam_temp = 4 * n_params(model) / (world if fsdp else 1)       # foreach AdamW: one fp32 temporary a parameter
    training = copy + extra_resident + max(train_state + act, state_bytes(model, fsdp, world, True) + adam_temp)
    slots = min(k["ROLLOUT_ROWS"], rows)
    cache = slots * (prompt_max + k["MAX_NEW"]) * kv_bytes_per_token(model)
    first_prompts = math.ceil(slots / k["GROUP"])                  # distinct prompts of the first fill
    sampling = (between + cache + prefill_bytes(model, first_prompts * prompt_max)
                + sampling_extras(model, slots, rows, k["MAX_NEW"], a))
    call = sampler_call(model, rows, k["ROLLOUT_ROWS"], prompt_mean, resp_mean, k["MAX_NEW"], rows // k["GROUP"],
                        a, measured)
    tokens = rows * (prompt_mean + min(resp_mean, k["MAX_NEW"]))
    refresh = copy * (world - 1) / world / (a.nvlink_gb_s * 1e9) if fsdp else 0.0
    return dict(rows=rows, between=between, training=training, act=act, train_state=train_state, copy=copy,
                cache=cache, sampling=sampling, call=call, tokens=tokens, update=update_seconds(model, tokens, a),
                refresh=refresh)


def policy_run(run: PolicyRun, a, measured, max_new=None, cache_gb="knob") -> dict:
    k = run.knobs
    genrm_w = 2 * n_params(run.genrm) if run.genrm else 0.0
    r = rl_run(run.policy, k, a.policy_prompt_mean, a.policy_prompt_max, a.policy_response_mean, a, measured, genrm_w)
    r["judge"] = None
    if run.genrm:
        critiques = round(r["rows"] * a.accuracy)
        r["judge"] = judge(run.genrm, r["between"], critiques, a.critic_overhead_max + k["MAX_NEW"],
                           a.critic_overhead_mean + a.policy_response_mean, max_new or k["GENRM_MAX_NEW"],
                           k["GENRM_ROWS"], k["GENRM_CACHE_GB"] if cache_gb == "knob" else cache_gb, a, measured)
    r["step"] = r["call"]["seconds"] + (r["judge"]["seconds"] if r["judge"] else 0) + r["update"] + r["refresh"]
    r["all"] = r["step"] * k["STEPS"]
    return r


def eval_bench(bench, a, measured, genrm=None, max_new=None, cache_gb="knob") -> dict:
    """One benchmark on its own GPU: rollout.py, bf16 weights, --batch-size prompts a sampler call."""
    model, k = QWEN25_MATH_1P5B, EVAL
    n, problems = k["N"][bench], EVAL_PROBLEMS[bench]
    weights = 2 * n_params(model) + (2 * n_params(genrm) if genrm else 0)
    calls, peak = [], 0.0
    for s in range(0, problems, EVAL_BATCH_PROMPTS):
        prompts = min(EVAL_BATCH_PROMPTS, problems - s)
        calls.append(sampler_call(model, prompts * n, SAMPLER_DEFAULT_MAX_ROWS, a.policy_prompt_mean,
                                  a.policy_response_mean, k["MAX_NEW"], prompts, a, measured))
        slots = calls[-1]["slots"]
        peak = max(peak, weights + slots * (a.policy_prompt_max + k["MAX_NEW"]) * kv_bytes_per_token(model)
                   + prefill_bytes(model, math.ceil(slots / n) * a.policy_prompt_max)
                   + sampling_extras(model, slots, prompts * n, k["MAX_NEW"], a))
    out = dict(rows=problems * n, calls=len(calls), slots=max(c["slots"] for c in calls), steps=sum(c["steps"] for c in calls),
               how=calls[0]["how"], step_s=calls[0]["step_s"], sampling_s=sum(c["seconds"] for c in calls),
               sampling=peak, judge=None)
    if genrm:
        acc = a.eval_accuracy_math500 if bench == "math500" else a.eval_accuracy_aime
        out["judge"] = judge(genrm, weights, round(problems * n * acc), a.critic_overhead_max + k["MAX_NEW"],
                             a.critic_overhead_mean + a.policy_response_mean, max_new or k["GENRM_MAX_NEW"],
                             JUDGE_DEFAULT_MAX_ROWS, k["GENRM_CACHE_GB"] if cache_gb == "knob" else cache_gb,
                             a, measured)
    return out


# ---------------------------------------------------------------- printing

def g(b):
    return f"{b / GiB:.1f}"


def dur(s):
    if s < 99.5:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]


def commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!*.md"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()   # docs aside
        return sha + (" + uncommitted changes" if dirty else "") if sha else "?"
    except OSError:
        return "?"


def step_cell(call, measured_cells):
    cell = f"{call['steps']:,.0f} x {1e3 * call['step_s']:.1f} ms = {dur(call['seconds'])}"
    if call["how"].startswith("measured"):
        measured_cells.append(call["how"])
        return cell + " †" + call["how"][len("measured"):]
    return cell


def report(a: Assumptions, measured=None) -> str:
    L = []
    mode = "CUDA-graph" if a.cuda_graphs else "eager"
    # models and ops
    L.append("Models (the code's `Qwen` built on the meta device from the published config.json values) and "
             "the ops of one decode step (torch.profiler on this machine's CPU, fp32 SDPA path: the proxy for "
             "GPU launches; `bench/decode_ops.py` counts the model's, the sampler loop's are counted the same way):")
    L.append("")
    rows = []
    for m in MODELS:
        c, N = m[1], n_params(m)
        ops, views, loop = ops_per_step(m)
        dc = decode_op_counts(c.model_type)
        rows.append((m[0], f"{N / 1e9:.3f} B", c.num_hidden_layers, f"{c.num_attention_heads} / {c.num_key_value_heads}",
                     c.hidden_size, "yes" if c.tie_word_embeddings else "no", f"{kv_bytes_per_token(m) // 1024} KiB",
                     f"{dc['per_layer']:.0f} x {c.num_hidden_layers} + {dc['outside']:.0f} + {loop:.0f} = {ops:.0f} "
                     f"({views:.0f} views)"))
    L += table(("model", "params N", "layers", "heads / KV", "hidden", "tied", "KV / position (bf16)",
                "ops a decode step: per layer x layers + outside + sampler loop"), rows)
    L.append("")

    measured_cells = []
    pol = [(run, policy_run(run, a, measured)) for run in POLICY_RUNS]
    gen = [(run, rl_run(run.model, run.knobs, a.genrm_rl_prompt_mean, a.genrm_rl_prompt_max,
                        a.genrm_rl_response_mean, a, measured)) for run in GENRM_RUNS]
    for run, r in gen:
        r["step"] = r["call"]["seconds"] + r["update"] + r["refresh"]
        r["all"] = r["step"] * run.knobs["STEPS"]
    ev = {b: eval_bench(b, a, measured) for b in EVAL["N"]}
    evj = {b: eval_bench(b, a, measured, EVAL_GENRM) for b in EVAL["N"]}

    # memory
    L.append("Memory per GPU, GiB (what `max_memory_allocated` counts; the recipes' knobs, the judge at their "
             "GENRM_MAX_NEW and GENRM_CACHE_GB):")
    L.append("")
    rows = []
    for run, r in pol:
        k = run.knobs
        gw = 2 * n_params(run.genrm) if run.genrm else 0
        j = r["judge"]
        rows.append((run.name, "FSDP2" if k["FSDP"] else "DDP", g(r["train_state"]) + " / " + g(r["between"] - r["copy"] - gw),
                     g(r["copy"]), g(gw) if gw else "-", g(r["act"]),
                     f"{r['call']['slots']} x {a.policy_prompt_max + k['MAX_NEW']} pos = {g(r['cache'])}",
                     f"**{g(r['training'])}**", f"**{g(r['sampling'])}**",
                     f"{j['slots']} x {a.critic_overhead_max + k['MAX_NEW'] + j['cap']} pos = {g(j['cache'])} "
                     f"+ {g(j['transient'])} prefill → **{g(j['peak'])}**" if j else "-"))
    for run, r in gen:
        k = run.knobs
        rows.append((run.name, "FSDP2" if k["FSDP"] else "DDP", g(r["train_state"]) + " / " + g(r["between"] - r["copy"]),
                     g(r["copy"]), "-", g(r["act"]),
                     f"{r['call']['slots']} x {a.genrm_rl_prompt_max + k['MAX_NEW']} pos = {g(r['cache'])}",
                     f"**{g(r['training'])}**", f"**{g(r['sampling'])}**", "-"))
    for b in EVAL["N"]:
        e, ej = ev[b], evj[b]["judge"]
        pos = a.policy_prompt_max + EVAL["MAX_NEW"]
        rows.append((f"eval {b}, 1.5B (+ 4B GenRM with GENRM)", "1 GPU", "-", g(2 * n_params(QWEN25_MATH_1P5B)) + " (weights)",
                     g(2 * n_params(EVAL_GENRM)), "-", f"{e['slots']} x {pos} pos = {g(e['slots'] * pos * kv_bytes_per_token(QWEN25_MATH_1P5B))}", "-",
                     f"**{g(e['sampling'])}** (+{g(2 * n_params(EVAL_GENRM))})",
                     f"{ej['slots']} x {a.critic_overhead_max + EVAL['MAX_NEW'] + ej['cap']} pos = {g(ej['cache'])} "
                     f"+ {g(ej['transient'])} prefill → **{g(ej['peak'])}**"))
    L += table(("run", "", "training state: training / between steps", "rollout copy (bf16)", "GenRM (bf16)",
                "activations", "sampler KV cache", "training peak", "sampling peak", "judge peak"), rows)
    L.append("")

    # time
    L.append(f"Time per step (one GPU's share; all GPUs work in parallel), {mode} decode steps:")
    L.append("")
    rows = []
    for run, r in pol:
        j = r["judge"]
        rows.append((run.name, f"{r['rows']} x {a.policy_prompt_mean + a.policy_response_mean:.0f} = {r['tokens'] / 1e3:.0f}k",
                     step_cell(r["call"], measured_cells),
                     (f"{j['critiques']} in {j['slots']} slots: " + step_cell(j["call"], measured_cells)) if j else "-",
                     f"{r['update']:.1f} s", f"{dur(r['step'])}", f"{run.knobs['STEPS']}: {dur(r['all'])}"))
    for run, r in gen:
        rows.append((run.name, f"{r['rows']} x {a.genrm_rl_prompt_mean + a.genrm_rl_response_mean:.0f} = {r['tokens'] / 1e3:.0f}k",
                     step_cell(r["call"], measured_cells), "-", f"{r['update']:.1f} s", f"{dur(r['step'])}",
                     f"{run.knobs['STEPS']}: {dur(r['all'])}"))
    for b in EVAL["N"]:
        e, ej = ev[b], evj[b]["judge"]
        cell = f"{e['calls']} call(s), {e['steps']:,.0f} x {1e3 * e['step_s']:.1f} ms = {dur(e['sampling_s'])}"
        if e["how"].startswith("measured"):
            measured_cells.append(e["how"])
            cell += " †" + e["how"][len("measured"):]
        rows.append((f"eval {b} ({e['rows']} rows)", "-", cell,
                     f"with GENRM: {ej['critiques']} in {ej['slots']} slots: " + step_cell(ej["call"], measured_cells),
                     "-", "-", f"{dur(e['sampling_s'])} (+ {dur(ej['seconds'])} judge)"))
    L += table(("run", "tokens a step (rows x prompt + response)", "sampling: decode steps x step", "judge", "update",
                "step", "all steps"), rows)
    L.append("")
    L.append("The three eval benchmarks run in parallel, one GPU each. The GRPO arm with `GENRM` set runs the "
             "judge too (it measures `judge_fp_ratio`): its step and memory are the FAPO row's.")
    L.append("")

    # proposal
    L.append(f"The judge's KV budget at `--genrm-max-new-tokens {PROPOSAL_MAX_NEW}` (the authors' cap): the "
             f"recipe's `--genrm-cache-gb` and the largest whole GiB whose judge peak stays under "
             f"{a.judge_target_gib:g} GiB (proposed):")
    L.append("")
    rows = []

    def judge_rows(name, genrm, knob, run_at, longest):
        proposed = propose_cache_gb(lambda gb: run_at(gb)[1]["peak"], a)
        for label, gb in ((f"recipe: {knob}", knob), (f"proposed: **{proposed}**", proposed)):
            if gb == knob and label.startswith("proposed"):
                continue
            r, j = run_at(gb)
            rows.append((name, label + (" (= proposed)" if gb == proposed and label.startswith("recipe") else ""),
                         f"{longest + j['cap']:,} pos = {g((longest + j['cap']) * kv_bytes_per_token(genrm))}",
                         f"**{j['slots']}**", g(j["cache"]), g(j["transient"]), f"**{g(j['peak'])}**",
                         f"{j['critiques']}: " + step_cell(j["call"], measured_cells),
                         dur(r["step"]) if "step" in r else "-", dur(r["all"]) if "all" in r else "-"))

    for run, _ in pol:
        if run.genrm:
            def run_at(gb, run=run):
                r = policy_run(run, a, measured, PROPOSAL_MAX_NEW, gb)
                return r, r["judge"]
            judge_rows(run.name, run.genrm, run.knobs["GENRM_CACHE_GB"] or 0, run_at,
                       a.critic_overhead_max + run.knobs["MAX_NEW"])
    for b in ("aime24", "math500"):
        def run_at(gb, b=b):
            e = eval_bench(b, a, measured, EVAL_GENRM, PROPOSAL_MAX_NEW, gb)
            return {}, e["judge"]
        judge_rows(f"eval {b}, 4B GenRM", EVAL_GENRM, EVAL["GENRM_CACHE_GB"] or 0, run_at,
                   a.critic_overhead_max + EVAL["MAX_NEW"])
    L += table(("run", "--genrm-cache-gb", "a slot (critic prompt + cap)", "slots per wave", "judge KV cache",
                "prefill + sampling transient", "judge peak", "critiques: decode steps x step", "step", "all steps"),
               rows)
    L.append("")
    L.append(f"`--genrm-cache-gb 0` (automatic) takes {JUDGE_AUTO_SHARE:g} x the memory free at each call; its "
             "budget covers its cache and its first fill's prefill.")
    L.append("")

    # assumptions
    L.append("How each term is computed (per GPU; GiB = 2^30 bytes):")
    L.append("")
    L += [
        "- **Training state**: fp32 weights 4 + grads 4 + AdamW 8 = 16 bytes / parameter. Under DDP the grads are "
        "views into DDP's all-reduce buckets (`gradient_as_bucket_view`), which stay allocated: 16 between steps "
        "too. FSDP2: 16 / 8 while training, 12 / 8 between steps (grad shards freed), plus, while training, two "
        "blocks' bf16 weights, the root's (embeddings, lm_head: gathered from forward to backward) with their bf16 "
        "grads, and one block's unsharded grads in bf16 and fp32 before the reduce-scatter. The optimizer step "
        "adds one fp32 temporary a parameter (foreach AdamW), after the activations are freed.",
        "- **Rollout copy** (`parallel.RolloutCopy`): the sampler's unsharded bf16 copy, 2 bytes / parameter, "
        "DDP and FSDP2 alike. **GenRM** (FAPO arm): bf16 weights, resident all run. A reference model "
        "(`--kl-coef > 0`, not used by these recipes) would add 2 bytes / parameter.",
        f"- **Activations** (`--grad-checkpointing`, one micro-batch of MICRO_TOKENS): every layer's input "
        f"(fp32 residual under DDP's autocast, bf16 under FSDP2), one layer recomputed (its saved tensors x "
        f"{a.act_backward_factor:g}), the final hidden states, one log-prob chunk of 2048 x vocab fp32 x "
        f"{a.logp_chunk_copies:g}.",
        "- **Sampler KV cache** (`slots.py`): slots x (longest prompt + cap) positions x KV bytes, allocated once "
        "per call; slots = min(`--rollout-max-rows`, rows); finished rows free their slot for the next row. Peak "
        "adds the first fill's packed prefill (every layer's K/V of its prompts + one layer's MLP), the logits "
        "and the output buffers.",
        "- **Judge** (`judge.wave_plan`): a wave's cache is dense, slots x (longest critic prompt + cap) x KV "
        "bytes; a slot also costs its prompt's share of the first fill's packed prefill (every layer's K/V "
        "and one layer's MLP per token); slots = min(`--genrm-max-rows`, floor(`--genrm-cache-gb` x 2^30 / "
        "slot bytes)), the cap cut only where the GenRM's window or the budget cannot hold one slot. Judge peak = the policy's state between steps + "
        "rollout copy + GenRM weights + that cache + the prefill of the first slots' prompts (all at the "
        "longest, an upper bound). The policy's sampler cache is freed by then.",
        f"- **Time**: a step = sampling + judge + update (+ the FSDP2 copy refresh, 2N bytes all-gathered at "
        f"{a.nvlink_gb_s:g} GB/s). Update: {a.flops_per_token:g} N FLOPs a packed token (6 + 2 for checkpointing "
        f"+ 2 for the old log-probs the trainer recomputes) at {a.mfu:g} x {a.peak_tflops:g} TFLOP/s; attention "
        f"FLOPs left out (~10% at these lengths). A decode step = max(ops x {a.eager_us_per_op:g} µs eager "
        f"[CUDA graphs: non-view ops x {a.graph_us_per_op:g} µs, at least the sampler loop's ops x "
        f"{a.eager_us_per_op:g} µs], (bf16 weights + the live KV) / {a.hbm_tb_s:g} TB/s, 2N x slots FLOPs). "
        f"Decode steps of a call ≈ (rows - slots) x mean length / slots + the cap (the last rows run to it): "
        f"an estimate of the slot sampler, not a simulation. Each refill (at most one per {a.check_every} steps) "
        f"costs one step's launches plus its prefill FLOPs.",
    ]
    L.append("")
    L.append("Assumed (flag of `bench/estimate.py`: value): "
             + "; ".join(f"`--{f.name.replace('_', '-')}` {getattr(a, f.name):g}" if not isinstance(getattr(a, f.name), bool)
                         else f"`--{f.name.replace('_', '-')}` {'on' if getattr(a, f.name) else 'off'}"
                         for f in dataclasses.fields(a)) + ".")
    L.append("")
    L.append(f"Counted from the code: parameters, KV bytes, ops a decode step, the judge's wave plan "
             f"(auto share {JUDGE_AUTO_SHARE:g}), the recipes' knobs (tests/test_estimate.py checks them against "
             f"recipes/*.sh). Mean lengths, accuracy, rates and launch costs are assumptions.")
    if measured:
        L.append("")
        L.append(f"Measured ({measured['path']}, {measured['device']}{'; ' + measured['note'] if measured['note'] else ''}):"
                 + ("" if measured["sampler"] or measured["judge"] else " no decode steps of these shapes."))
        for use, what in (("sampler", "the policy sampler's"), ("judge", "the GenRM judge's")):
            for name, e in measured[use].items():
                pts = lambda m: ", ".join(f"{r} rows {ms:.2f} ms" for r, ms in sorted(e[m].items())) or "none"
                model = (name, _by_key[name]) if name in _by_key else None
                L.append(f"ms per decode step of {what} {name}-shaped model, eager: {pts('eager')}; CUDA graphs: "
                         f"{pts('cuda_graphs')}. "
                         + (f"† {use} cells of {name} use them (interpolated in rows, clamped outside them, at least "
                            f"the HBM time of the real context: {e['context']})." if model else
                            "No model here has that shape: not used."))
                if model and e["eager"]:
                    ops = ops_per_step(model)[0]
                    us = {r: 1e3 * ms / ops for r, ms in e["eager"].items()}
                    L.append(f"The eager measurements imply {', '.join(f'{v:.1f} µs' for _, v in sorted(us.items()))} "
                             f"per op ({ops:.0f} ops a step); `--eager-us-per-op` applies such a value to the "
                             f"unmeasured models.")
    command = ("python bench/estimate.py" + (" --cuda-graphs" if a.cuda_graphs else "")
               + (f" --gpu-check {measured['path']}" if measured else ""))
    head = (f"**Every number below is an estimate** (`{command}`, commit {commit()}, torch {torch.__version__}): "
            f"arithmetic on the code's quantities and the assumptions listed under the tables, for one H100-80GB "
            f"per process, {mode} decode steps. "
            + ("Decode steps marked † are measured (bench/gpu_check.py on " + measured["device"] + "); nothing else is."
               if measured_cells else "No GPU run has replaced any of them yet."))
    return "\n".join([head, ""] + L)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu-check", metavar="FILE", help="a JSON of bench/gpu_check.py: measured decode steps")
    for f in dataclasses.fields(Assumptions):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            ap.add_argument(flag, action="store_true", default=f.default, help="see Assumptions")
        else:
            kind = int if f.type in (int, "int") else float
            ap.add_argument(flag, type=kind, default=f.default, metavar="X",
                            help=f"default {f.default:g} (see Assumptions in this file)")
    args = ap.parse_args(argv)
    a = Assumptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Assumptions)})
    return a, (read_gpu_check(args.gpu_check) if args.gpu_check else None)


def main(argv=None):
    a, measured = parse_args(argv)
    print(report(a, measured))


if __name__ == "__main__":
    main()
