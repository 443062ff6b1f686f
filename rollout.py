"""Sample a checkpoint on a data set, score it, write jsonl + a JSON summary.

    python rollout.py --model DIR --data FILE --n 4 --temperature 1.0 --max-new-tokens 256 --out OUT.jsonl

DIR is any Hugging Face Qwen2 / Qwen3 folder with a tokenizer. Each FILE row needs a
`prompt` (a string is used as is; chat messages go through the tokenizer's template).
Output rows keep their input fields and add `response` and `response_ids`; rows with a
ground truth are scored:
  * policy rows (`reward_model.ground_truth` an answer): `correct`, and `flawed` where
    known (the task's exact oracle, where it has one: fapo_mini/tasks.py), and
    `flawed_genrm` with --genrm. Summary (fapo_mini/scoring.py): `accuracy` = the paper's
    avg@n (mean correctness over the n samples of every problem), unbiased pass@k (Chen et
    al. 2021), flawed-positive ratio = flawed / correct (`fp_ratio` by the oracle,
    `judge_fp_ratio` by the GenRM, with `judge_invalid` and `judge_truncated`).
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
from pathlib import Path

import torch
from tqdm import tqdm

from fapo_mini import genrm
from fapo_mini.data import get_field, load_rows, prompt_text, validate_rows
from fapo_mini.errors import UserError, cli
from fapo_mini.genrm import NO_ERROR
from fapo_mini.judge import GenRMJudge
from fapo_mini.served_judge import ServedJudge
from fapo_mini.model import load_config, load_model, load_tokenizer
from fapo_mini.preflight import (at_least, check_critic_labels, check_flags, check_ground_truths, check_output,
                                 check_prompts)
from fapo_mini.sampler import Sampler, SamplingParams
from fapo_mini.scoring import policy_counts, ratios
from fapo_mini.tasks import task_of

RANGES = (("n", at_least(1), ">= 1"), ("max_new_tokens", at_least(1), ">= 1"), ("batch_size", at_least(1), ">= 1"),
          ("limit", at_least(0), ">= 0"), ("temperature", at_least(0), ">= 0"),
          ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"), ("top_k", at_least(0), ">= 0"),
          ("genrm_max_new_tokens", at_least(1), ">= 1"), ("genrm_cache_gb", lambda v: math.isfinite(v) and v >= 0, ">= 0"))


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


def score_policy(rows, n, judge=None):
    """Adds `correct` / `flawed` to rows (n per prompt, in order); returns summary metrics
    (fapo_mini/scoring.py, the same numbers the trainers' --eval-every logs)."""
    return ratios(policy_counts(rows, n, any(task_of(r).first_error is not None for r in rows), judge))


def score_critic(rows, n):
    """Rows of a GenRM run (n per critic prompt): verdicts and the benchmarks of docs/method.md §7."""
    for r in rows:
        r["verdict"] = genrm.parse_verdict(r["response"], int(r["extra_info"]["total_steps"]))   # checked: integral
    labels = [int(get_field(r, "reward_model.ground_truth")) for r in rows]
    out = {"valid": sum(r["verdict"] is not None for r in rows) / len(rows)}
    out.update({f"fp_{k}": v for k, v in genrm.flawed_positive_metrics([r["verdict"] for r in rows], labels).items()})
    out.update(genrm.localisation([r["verdict"] for r in rows], labels))
    both = NO_ERROR in labels and any(y != NO_ERROR for y in labels)   # ProcessBench F1 needs both kinds
    if both:
        out.update({f"pb_{k}": v for k, v in genrm.processbench_f1([r["verdict"] for r in rows], labels).items()})
    if n > 1:
        votes = [genrm.majority_vote([r["verdict"] for r in rows[i:i + n]]) for i in range(0, len(rows), n)]
        out["maj_fp_f1"] = genrm.flawed_positive_metrics(votes, labels[::n])["f1"]
        if both:
            out["maj_pb_f1"] = genrm.processbench_f1(votes, labels[::n])["f1"]
    return out


def parse_args():
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
    ap.add_argument("--genrm-url", help="or a served GenRM: an OpenAI-compatible server (fapo_mini/served_judge.py)")
    ap.add_argument("--genrm-max-new-tokens", type=int, default=16384,
                    help="critique cap, the authors' (less where the window or --genrm-cache-gb cannot hold it; "
                         "cut = not flawed)")
    ap.add_argument("--genrm-cache-gb", type=float, default=0.0,
                    help="GiB for a judge wave's KV cache and its first prefill (0 = half the memory free at each call)")
    ap.add_argument("--no-score", action="store_true", help="generate only")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the decode step as CUDA graphs (GPU)")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args()
    check_flags(args, RANGES)
    if "" in args.stop:
        raise UserError("--stop must be a non-empty string")
    if args.genrm and args.genrm_url:
        raise UserError("give one GenRM: --genrm DIR (loaded here) or --genrm-url URL (served)")
    check_output(args.out, folder=False)
    return args


def read_rows(args) -> tuple[list[dict], str | None]:
    """The rows, checked, and how the file is scored: "policy", "critic", or None (no ground
    truths, or --no-score). A file is scored whole, as policy rows or as critic rows, or not at all."""
    rows = load_rows(args.data)[:args.limit or None]
    validate_rows(rows, args.data, fields=("prompt",))
    if args.no_score:
        return rows, None
    check_one_kind(rows, args.data)
    if get_field(rows[0], "reward_model.ground_truth") is None:       # then no row has one
        return rows, None
    if all(get_field(r, "extra_info.total_steps") is not None for r in rows):
        check_critic_labels(rows, args.data)
        return rows, "critic"
    check_ground_truths(rows, args.data)
    return rows, "policy"


def main():
    args = parse_args()
    rows, kind = read_rows(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.cuda_graphs and device != "cuda":
        raise UserError("--cuda-graphs needs a CUDA GPU")
    load_config(args.model)           # config.json first: transformers' tokenizer loader reads it too
    tok = load_tokenizer(args.model, args.trust_remote_code)
    model = load_model(args.model, device, torch.bfloat16 if device == "cuda" else torch.float32).eval()  # inference only
    prompts = [tok.encode(prompt_text(r, tok), add_special_tokens=False) for r in rows]
    check_prompts(prompts, args.data, args.max_new_tokens, model.cfg.max_position_embeddings, model.cfg.vocab_size)
    judge = None  # loaded before sampling, so a bad --genrm folder or URL fails in seconds
    if args.genrm and kind == "policy":
        try:
            judge = GenRMJudge(args.genrm, device, args.genrm_max_new_tokens, cache_gb=args.genrm_cache_gb,
                               trust_remote_code=args.trust_remote_code, cuda_graphs=args.cuda_graphs)
        except UserError as e:
            raise UserError(f"--genrm: {e}") from None
    elif args.genrm_url and kind == "policy":
        judge = ServedJudge(args.genrm_url, max_new_tokens=args.genrm_max_new_tokens)
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
    if kind is not None:
        summary.update(score_critic(out_rows, args.n) if kind == "critic" else score_policy(out_rows, args.n, judge))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for r in out_rows:
            f.write(json.dumps(r) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    cli(main)
