"""Sample a checkpoint on a data set, score it, write jsonl + a JSON summary.

    python rollout.py --model DIR --data FILE --n 4 --temperature 1.0 --max-new-tokens 256 --out OUT.jsonl

DIR is any Hugging Face Qwen2 / Qwen3 folder with a tokenizer. Each FILE row needs a
`prompt` (a string is used as is; chat messages go through the tokenizer's template).
Output rows keep their input fields and add `response` and `response_ids`; rows with a
ground truth are scored:
  * policy rows (`reward_model.ground_truth` an answer): `correct`, and `flawed` where
    known (the toy world's oracle; a GenRM with --genrm). Summary: `accuracy` = the
    paper's avg@n (mean correctness over the n samples of every problem), unbiased
    pass@k (Chen et al. 2021), flawed-positive ratio = flawed / correct; on
    the toy world, `kinds`: [correct, total] per kind of solution (toyworld.flaw_kind).
  * critic rows (`extra_info.total_steps`, label = first wrong step or -1): the model is
    a GenRM; `verdict` per row. Summary: FlawedPositiveBench precision / recall / F1 and
    ProcessBench F1 (docs/method.md §7; left out unless both clean and flawed rows are there),
    per sample and with a majority vote over the n samples.
The last line printed is the JSON summary, with gen_tokens and gen_seconds (model
loading excluded) so throughput compares with other engines. Bad input (a model folder,
the data, labels, prompts too long for the model with --max-new-tokens, --out) ends
with one `error: ...` line before any sampling.
"""
import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from fapo_mini import genrm, toycritic, toyworld
from fapo_mini.data import get_field, load_rows, prompt_text, validate_rows
from fapo_mini.detector import FlawDetector
from fapo_mini.errors import UserError, cli
from fapo_mini.genrm import NO_ERROR
from fapo_mini.model import load_config, load_model, load_tokenizer
from fapo_mini.preflight import check_critic_labels, check_output, check_prompts
from fapo_mini.sampler import Sampler, SamplingParams
from fapo_mini.verify import is_correct

# The toy world plugs into the real interfaces by the row's data_source (a fork without it drops these)
TOY_CHECKS = {"toyworld": toyworld.is_correct}
TOY_PROMPTS = {"toyworld": lambda row, response: toycritic.critic_prompt(row["prompt"], response)}


def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def check_one_kind(rows, source) -> None:
    """UserError when some rows have a ground truth and others not, or some are critic rows
    (extra_info.total_steps) and others policy rows: the file would be scored as neither."""
    gt = [get_field(r, "reward_model.ground_truth") is not None for r in rows]
    if any(gt) and not all(gt):
        raise UserError(f"{source}:{gt.index(False) + 1}: row has no 'reward_model.ground_truth' but row "
                        f"{gt.index(True) + 1} has one; give every row one, or pass --no-score")
    steps = [get_field(r, "extra_info.total_steps") is not None for r in rows]
    if all(gt) and any(steps) and not all(steps):
        raise UserError(f"{source}:{steps.index(False) + 1}: row has no 'extra_info.total_steps' but row "
                        f"{steps.index(True) + 1} (a critic row) has: one file is policy rows or critic rows")


def score_policy(rows, n, detector=None):
    """Adds `correct` / `flawed` to rows (n per prompt, in order); returns summary metrics."""
    for r in rows:
        r["correct"] = is_correct(r, r["response"], TOY_CHECKS)
        if r.get("data_source") == "toyworld" and r["correct"]:
            r["flawed"] = toyworld.first_error(r["prompt"], r["response"]) != -1
    pos = [r for r in rows if r["correct"]]
    out = {"accuracy": sum(r["correct"] for r in rows) / len(rows)}   # avg@n: mean correctness of all samples
    per_prompt = [sum(r["correct"] for r in rows[i:i + n]) for i in range(0, len(rows), n)]
    k = 1
    while k <= n:
        out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in per_prompt) / len(per_prompt)
        k *= 2
    if pos and all("flawed" in r for r in pos):
        out["fp_ratio"] = sum(r["flawed"] for r in pos) / len(pos)
    if rows and all(r.get("data_source") == "toyworld" for r in rows):  # [correct, total] per kind
        kinds = [toyworld.flaw_kind(r["prompt"], r["response"]) for r in rows]
        total, right = Counter(kinds), Counter(kd for r, kd in zip(rows, kinds) if r["correct"])
        out["kinds"] = {kd: [right[kd], total[kd]] for kd in toyworld.KINDS if total[kd]}
    if detector is not None and pos:
        flags, invalid = detector(pos, [r["response"] for r in pos])
        for r, f in zip(pos, flags):
            r["flawed_genrm"] = f
        out["fp_ratio_genrm"], out["genrm_invalid"] = sum(flags) / len(pos), invalid / len(pos)
    return out


def score_critic(rows, n):
    """Rows of a GenRM run (n per critic prompt): verdicts and the benchmarks of docs/method.md §7."""
    for r in rows:
        r["verdict"] = genrm.parse_verdict(r["response"], r["extra_info"]["total_steps"])
    labels = [int(get_field(r, "reward_model.ground_truth")) for r in rows]
    out = {"valid": sum(r["verdict"] is not None for r in rows) / len(rows)}
    out.update({f"fp_{k}": v for k, v in genrm.flawed_positive_metrics([r["verdict"] for r in rows], labels).items()})
    both = NO_ERROR in labels and any(y != NO_ERROR for y in labels)   # ProcessBench F1 needs both kinds
    if both:
        out.update({f"pb_{k}": v for k, v in genrm.processbench_f1([r["verdict"] for r in rows], labels).items()})
    if n > 1:
        votes = [genrm.majority_vote([r["verdict"] for r in rows[i:i + n]]) for i in range(0, len(rows), n)]
        out["maj_fp_f1"] = genrm.flawed_positive_metrics(votes, labels[::n])["f1"]
        if both:
            out["maj_pb_f1"] = genrm.processbench_f1(votes, labels[::n])["f1"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF Qwen2 / Qwen3 folder with a tokenizer")
    ap.add_argument("--data", required=True, help="jsonl / parquet / hub name; rows need `prompt`")
    ap.add_argument("--out", required=True, help="output jsonl")
    ap.add_argument("--n", type=int, default=1, help="samples per prompt")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per sampler call")
    ap.add_argument("--limit", type=int, default=0, help="only the first N rows (0 = all)")
    ap.add_argument("--genrm", help="GenRM folder: also judge correct policy rollouts with it")
    ap.add_argument("--genrm-max-new-tokens", type=int, default=256, help="critique length cap (cut = not flawed)")
    ap.add_argument("--no-score", action="store_true", help="generate only")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the decode step as CUDA graphs (GPU)")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args()
    for flag, ok, want in (("n", args.n >= 1, ">= 1"), ("max_new_tokens", args.max_new_tokens >= 1, ">= 1"),
                           ("batch_size", args.batch_size >= 1, ">= 1"), ("limit", args.limit >= 0, ">= 0"),
                           ("temperature", args.temperature >= 0, ">= 0"), ("top_p", 0 < args.top_p <= 1, "in (0, 1]"),
                           ("top_k", args.top_k >= 0, ">= 0")):
        if not ok:
            raise UserError(f"--{flag.replace('_', '-')} must be {want}, got {getattr(args, flag)}")
    if "" in args.stop:
        raise UserError("--stop must be a non-empty string")
    check_output(args.out, folder=False)

    rows = load_rows(args.data)[:args.limit or None]
    validate_rows(rows, args.data, fields=("prompt",))
    has_gt = all(get_field(r, "reward_model.ground_truth") is not None for r in rows)
    critic = has_gt and all(get_field(r, "extra_info.total_steps") is not None for r in rows)
    if not args.no_score:    # a file is scored whole, as policy rows or as critic rows, or not at all
        check_one_kind(rows, args.data)
    if critic and not args.no_score:
        check_critic_labels(rows, args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_config(args.model)           # config.json first: transformers' tokenizer loader reads it too
    tok = load_tokenizer(args.model, args.trust_remote_code)
    model = load_model(args.model, device, torch.bfloat16 if device == "cuda" else torch.float32).eval()  # inference only
    prompts = [tok.encode(prompt_text(r, tok), add_special_tokens=False) for r in rows]
    check_prompts(prompts, args.data, args.max_new_tokens, model.cfg.max_position_embeddings, model.cfg.vocab_size)
    detector = None  # loaded before sampling, so a bad --genrm folder fails in seconds
    if args.genrm and has_gt and not critic and not args.no_score:
        try:
            detector = FlawDetector(args.genrm, device, args.genrm_max_new_tokens, prompts=TOY_PROMPTS)
        except UserError as e:
            raise UserError(f"--genrm: {e}") from None
    if args.cuda_graphs and device != "cuda":
        raise UserError("--cuda-graphs needs a CUDA GPU")
    sampler = Sampler(model, tok, cuda_graphs=args.cuda_graphs)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, stop=tuple(args.stop), seed=args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    t0, samples = time.time(), []
    with tqdm(total=len(prompts), desc="rollout", unit="prompt") as bar:
        for s in range(0, len(prompts), args.batch_size):
            for smp in sampler.generate(prompts[s:s + args.batch_size], params, generator=gen):
                smp.prompt_index += s
                samples.append(smp)
            bar.update(len(prompts[s:s + args.batch_size]))
    if device == "cuda":
        torch.cuda.synchronize()
    summary = {"gen_seconds": time.time() - t0, "gen_tokens": sum(len(s.token_ids) for s in samples),
               "prompts": len(prompts), "n": args.n}
    summary["tokens_per_s"] = summary["gen_tokens"] / summary["gen_seconds"]

    out_rows = [dict(rows[s.prompt_index], response=s.text, response_ids=s.token_ids, finish_reason=s.finish_reason)
                for s in samples]
    if has_gt and not args.no_score:
        summary.update(score_critic(out_rows, args.n) if critic else score_policy(out_rows, args.n, detector))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for r in out_rows:
            f.write(json.dumps(r) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    cli(main)
