"""Peak tensor memory of one sampler wave against the size of its own KV cache, on CPU.

usage: python bench/bench_memory.py [--workload rl|fixed] [--dtype both|fp32|bf16] [--threads 2]

One `generate` call whose rows all fit in one wave (max_rows = prompts x n), on the random tiny
Qwen3 of bench/workloads.py (rl: 32 prompts x 8, at most 384 new tokens, EOS calibrated as in
bench_sampler.py; fixed: 64 x 4 x 128). The model's weights are loaded in --dtype; the sampler's
cache takes the compute dtype, so bf16 weights give the bf16 cache figure.

How the peak is measured (CPU has no torch.cuda.max_memory_allocated): the call runs under
torch.profiler with profile_memory=True. Every allocation and free made by c10's CPU allocator
while profiling is reported as a [memory] event of +bytes / -bytes. Summed in time order, the
events give the bytes allocated since the call started and still live; the peak of that running
sum is the peak beyond what existed before (weights and anything made earlier are excluded;
frees of blocks made before profiling are not reported, which can only raise the figure).
Not seen: memory that does not go through c10's allocator (oneDNN / OpenMP scratch buffers),
and Python objects such as the token lists the call returns. `check_method` asserts the
running sum on a known pattern of allocations before anything is measured.

Cache size: `sampler.cache_bytes` when the sampler sets it, else computed from the wave's shape
as a dense (rows, longest prompt + max_new_tokens) cache: 2 (K and V) x layers x rows x length
x kv_heads x head_dim x bytes per element. Per token: the cache size over rows x (longest prompt
+ max_new_tokens), the positions such a wave needs, compared with the bf16 figure
2 x layers x kv_heads x head_dim x 2 bytes (1.00x = a bf16 cache with no extra positions).
"""
import argparse, json, random, sys, tempfile
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fapo_mini.model import load_model, load_tokenizer
from fapo_mini.sampler import Sampler, SamplingParams
from workloads import RL_EOS, calibrate_eos, length_stats, scale_eos_row_in_folder, write_tiny_qwen3

DEFAULTS = {"fixed": dict(prompts=64, n=4, new_tokens=128), "rl": dict(prompts=32, n=8, new_tokens=384)}


def peak_bytes(fn):
    """Run fn() under the profiler; return (its result, peak live bytes allocated during it, bytes still live after)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak, live


def check_method():
    """The running sum on a known pattern: 1 MiB, +2 MiB, -1 MiB, +4 MB (an op's output), all freed."""
    w = torch.zeros(1000, 1000)                                          # made before: its free is not seen

    def pattern():
        a = torch.empty(2 ** 20, dtype=torch.uint8)
        b = torch.empty(2 ** 21, dtype=torch.uint8)
        del a
        c = w + 1
        del b, c
    _, peak, live = peak_bytes(pattern)
    expected = 2 ** 21 + 4_000_000
    assert expected <= peak <= expected + 4096, f"method check: peak {peak}, expected {expected} (+ small scalars)"
    assert abs(live) <= 4096, f"method check: {live} bytes left live"


def cache_bytes_from_config(cfg, rows, length, dtype):
    return 2 * cfg.num_hidden_layers * rows * length * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=("rl", "fixed"), default="rl")
    ap.add_argument("--dtype", choices=("both", "fp32", "bf16"), default="both")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-mean", type=float, default=150.0)
    ap.add_argument("--eos-scale", type=float, help="rl: use this EOS row scale instead of calibrating")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    for k, v in DEFAULTS[args.workload].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    torch.set_num_threads(args.threads)
    check_method()

    folder = tempfile.mkdtemp()
    eos = write_tiny_qwen3(folder, args.workload)
    rng = random.Random(0)
    prompts = [[rng.randrange(RL_EOS) for _ in range(rng.randint(10, 60))] for _ in range(args.prompts)]
    rows = len(prompts) * args.n
    tok = load_tokenizer(folder)
    if args.workload == "rl":
        scale = args.eos_scale
        if scale is None:
            m = load_model(folder)
            scale = calibrate_eos(m, Sampler(m, tok, max_rows=rows), eos, prompts[:32], args.target_mean,
                                  args.new_tokens)["scale"]
        scale_eos_row_in_folder(folder, eos, scale)
        print(f"EOS row scale {scale:.4f}", flush=True)

    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[args.dtype]
    results = []
    for dtype in dtypes:
        model = load_model(folder, dtype=dtype)
        cfg = model.cfg
        sampler = Sampler(model, tok, max_rows=rows)
        params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens)
        sampler.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=4))          # warm-up, outside the profile
        out, peak, _ = peak_bytes(lambda: sampler.generate(prompts, params))
        computed = cache_bytes_from_config(cfg, rows, max(map(len, prompts)) + args.new_tokens, dtype)
        cache = getattr(sampler, "cache_bytes", None)
        source = "sampler.cache_bytes" if cache is not None else "computed from the shape"
        cache = cache if cache is not None else computed
        capacity = rows * (max(map(len, prompts)) + args.new_tokens)     # token positions a dense wave needs
        per_token = cache / capacity
        bf16_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
        r = {"dtype": str(dtype).removeprefix("torch."), "rows": rows, "peak_bytes": peak, "cache_bytes": cache,
             "cache_source": source, "cache_bytes_computed": computed, "peak_over_cache": peak / cache,
             "cache_bytes_per_token": per_token, "bf16_bytes_per_token": bf16_per_token,
             "per_token_over_bf16": per_token / bf16_per_token,
             "lengths": length_stats([len(s.token_ids) for s in out])}
        results.append(r)
        print(f"{r['dtype']:>8}: peak {peak / 2**20:8.1f} MiB during the wave, KV cache {cache / 2**20:8.1f} MiB "
              f"({source}) -> peak / cache {r['peak_over_cache']:.2f}x; cache {per_token:.0f} B/token "
              f"= {r['per_token_over_bf16']:.2f}x the bf16 figure {bf16_per_token} B; "
              f"mean length {r['lengths']['mean']:.1f}", flush=True)
        del sampler, model
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
