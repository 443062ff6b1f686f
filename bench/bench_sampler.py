"""Tokens/s and response lengths of fapo_mini's Sampler against transformers' generate and vLLM.

usage: python bench/bench_sampler.py [--workload fixed|rl] [--prompts P] [--n N] [--new-tokens T] [--threads 2]
       /tmp/vllm-venv/bin/python bench/bench_sampler.py --vllm [--workload rl]   (set-up in bench/README.md)

Model: the random tiny Qwen3 of bench/workloads.py, written to a temp folder that every engine loads.
  fixed (default): 64 prompts of 10-60 tokens x 4 samples x 128 new tokens, never EOS (EOS id 1000 is
         outside the vocabulary; transformers / vLLM also get min_new_tokens / ignore_eos).
  rl:    32 prompts x 8 samples, at most 384 new tokens, EOS id 999 calibrated on our sampler to a
         target mean length (default 150) before any engine is timed; the scale goes into the folder.
Every engine: temperature 1, no top-k / top-p, one process, one warm-up call on 2 prompts, then one
timed call on all prompts. Generated tokens are counted with the EOS token included, the same way
for every engine; the rl workload prints each engine's length statistics, which must agree within
noise since all sample one distribution.
"""
import argparse, json, os, random, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fapo_mini.model import load_model
from fapo_mini.sampler import Sampler, SamplingParams
from workloads import RL_EOS, V, calibrate_eos, length_stats, scale_eos_row_in_folder, write_tiny_qwen3

DEFAULTS = {"fixed": dict(prompts=64, n=4, new_tokens=128), "rl": dict(prompts=32, n=8, new_tokens=384)}

parser = argparse.ArgumentParser()
parser.add_argument("--workload", choices=("fixed", "rl"), default="fixed")
parser.add_argument("--prompts", type=int, help="distinct prompts (fixed 64, rl 32)")
parser.add_argument("--n", type=int, help="samples per prompt (fixed 4, rl 8)")
parser.add_argument("--new-tokens", type=int, help="tokens per sample (fixed: exactly; rl: the cap) (128 / 384)")
parser.add_argument("--threads", type=int, default=2, help="torch (and vLLM OpenMP) threads")
parser.add_argument("--engines", default="ours,transformers", help="comma list of ours, transformers, vllm")
parser.add_argument("--vllm", action="store_true", help="short for --engines ours,vllm")
parser.add_argument("--max-rows", type=int, help="our sampler's max_rows (default: every row in one wave)")
parser.add_argument("--target-mean", type=float, default=150.0, help="rl: mean length the EOS is calibrated to")
parser.add_argument("--eos-scale", type=float, help="rl: use this EOS row scale instead of calibrating")
parser.add_argument("--json", help="also write the results to this file")
args = parser.parse_args()
for k, v in DEFAULTS[args.workload].items():
    if getattr(args, k) is None:
        setattr(args, k, v)
engines = ["ours", "vllm"] if args.vllm else args.engines.split(",")
unknown = set(engines) - {"ours", "transformers", "vllm"}
if unknown:
    parser.error(f"--engines: unknown {', '.join(sorted(unknown))} (choose from ours, transformers, vllm)")
torch.set_num_threads(args.threads)
rl = args.workload == "rl"

folder = tempfile.mkdtemp()
eos = write_tiny_qwen3(folder, args.workload)
rng = random.Random(0)
prompts = [[rng.randrange(RL_EOS) for _ in range(rng.randint(10, 60))] for _ in range(args.prompts)]
max_rows = args.max_rows or len(prompts) * args.n
print(f"workload {args.workload}: {args.prompts} prompts x {args.n} samples x "
      f"{'at most ' if rl else ''}{args.new_tokens} new tokens, {args.threads} threads, model in {folder}", flush=True)


def make_ours():
    from fapo_mini.model import load_tokenizer
    return Sampler(load_model(folder), load_tokenizer(folder), max_rows=max_rows)


calibration = None
if rl:
    if args.eos_scale is None:
        t = time.perf_counter()
        sampler = make_ours()
        print(f"calibrating the EOS row to a mean of {args.target_mean:.0f} (cap {args.new_tokens}):", flush=True)
        calibration = calibrate_eos(sampler.model, sampler, eos, prompts[:32], args.target_mean, args.new_tokens)
        calibration["seconds"] = time.perf_counter() - t
        scale = calibration["scale"]
        print(f"  chose scale {scale:.4f}: mean EOS chance per step {calibration['hazard']:.5f} on "
              f"{calibration['positions']} positions ({calibration['seconds']:.0f} s)", flush=True)
        del sampler
    else:
        scale = args.eos_scale
        calibration = {"scale": scale, "given": True}
    scale_eos_row_in_folder(folder, eos, scale)


def timed(generate):
    """generate(prompts, new_tokens) -> list of generated lengths (EOS included); returns (seconds, lengths)."""
    generate(prompts[:2], 4)                                                          # warm-up
    t = time.perf_counter()
    lengths = generate(prompts, args.new_tokens)
    seconds = time.perf_counter() - t
    assert len(lengths) == len(prompts) * args.n, f"{len(lengths)} samples, expected {len(prompts) * args.n}"
    if not rl:
        assert all(n == args.new_tokens for n in lengths), "a fixed-length row ended early"
    return seconds, lengths


def ours():
    sampler = make_ours()
    return timed(lambda ps, new: [len(s.token_ids) for s in sampler.generate(
        ps, SamplingParams(n=args.n, temperature=1.0, max_new_tokens=new))])


def transformers_generate():
    from transformers import Qwen3ForCausalLM
    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def generate(ps, new):
        L = max(map(len, ps))
        ids = torch.tensor([[0] * (L - len(p)) + p for p in ps])                      # LEFT padding
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in ps])
        kw = dict(eos_token_id=eos) if rl else dict(min_new_tokens=new)
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             num_return_sequences=args.n, max_new_tokens=new, pad_token_id=0, **kw)[:, L:]
        if not rl:
            return [out.shape[1]] * out.shape[0]
        is_eos = out == eos                      # rows are padded after their EOS: length = first EOS + 1
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(is_eos[:, 0], new, dtype=torch.long))
        return first.tolist()
    return timed(generate)


def vllm_generate():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"                              # one process, like the others
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")                             # GiB of KV cache
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from vllm import LLM, SamplingParams as VParams
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, max_model_len=64 + args.new_tokens, seed=0)
    kw = dict(stop_token_ids=[eos]) if rl else dict(ignore_eos=True)

    def generate(ps, new):
        outs = llm.generate([{"prompt_token_ids": p} for p in ps],
                            VParams(n=args.n, temperature=1.0, top_k=0, top_p=1.0, max_tokens=new, detokenize=False, **kw),
                            use_tqdm=False)
        lengths = []
        for o in outs:
            for c in o.outputs:
                # vLLM keeps a stop token id in token_ids; checked, so lengths count EOS like the others
                if rl and c.finish_reason == "stop":
                    assert c.token_ids[-1] == eos, f"vLLM stopped on {c.token_ids[-1]}, not EOS {eos}"
                lengths.append(len(c.token_ids))
        return lengths
    return timed(generate)


run = {"ours": ours, "transformers": transformers_generate, "vllm": vllm_generate}
results = {}
for name in engines:
    seconds, lengths = run[name]()
    results[name] = {"tok_per_s": sum(lengths) / seconds, "seconds": seconds, "tokens": sum(lengths),
                     "lengths": length_stats(lengths), "truncated": sum(n == args.new_tokens for n in lengths)}

print(f"{'engine':>12} {'tok/s':>8} {'s':>7} {'tokens':>7}" + ("   mean +- se   median  p90  max  at cap" if rl else ""))
for name, r in results.items():
    line = f"{name:>12} {r['tok_per_s']:8.0f} {r['seconds']:7.1f} {r['tokens']:7d}"
    if rl:
        s = r["lengths"]
        line += f"   {s['mean']:5.1f} +- {s['se']:4.1f} {s['median']:6.0f} {s['p90']:5.0f} {s['max']:4d} {r['truncated']:4d}"
    print(line)
if "ours" in results:
    for name in results:
        if name != "ours":
            print(f"ours / {name}: {results['ours']['tok_per_s'] / results[name]['tok_per_s']:.2f}x tok/s")
if args.json:
    Path(args.json).write_text(json.dumps({"args": vars(args), "engines": engines, "calibration": calibration,
                                           "results": results}, indent=2))
