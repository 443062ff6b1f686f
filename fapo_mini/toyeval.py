"""Held-out evaluation of many toy-world policies in one process.

Why this file exists: the demo scores a dozen final checkpoints on three held-out splits.
One rollout.py process per (checkpoint, split) spent more time starting Python and torch
than sampling. This loads each checkpoint once, samples all its splits in one sampler
call, and writes per (run, split) the summary rollout.py prints for toy-world rows
(accuracy, fp_ratio), plus the kinds of solution (toyworld.flaw_kind) and how often cue
problems got the shortcut.

    python -m fapo_mini.toyeval --data DIR --out DIR/eval NAME=MODEL_DIR [NAME=MODEL_DIR ...]

DIR holds test.jsonl / hard.jsonl / shift.jsonl (`python -m fapo_mini.toyworld world`).
Each split is sampled once per prompt (n = 1) at --temperature and --top-p, the same seed for
every model; the oracle (`toyworld.first_error`) decides flaws. Simplified away: pass@k for
k > 1 and GenRM judging (rollout.py does both).
"""
import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from fapo_mini import toyworld
from fapo_mini.data import load_rows, validate_rows
from fapo_mini.errors import UserError, cli
from fapo_mini.model import load_config, load_tokenizer
from fapo_mini.preflight import at_least, check_flags, check_output, check_prompts

SPLITS = ("test", "hard", "shift")
RANGES = (("temperature", at_least(0), ">= 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
          ("max_new_tokens", at_least(1), ">= 1"))


def score(rows: list[dict], responses: list[str]) -> dict:
    """Summary of one split: accuracy, fp_ratio (flawed / correct by the oracle; None when nothing
    is correct), kinds ([correct, total] per toyworld.flaw_kind), and on cue problems the share
    answered by the shortcut (`cue_shortcut`) and their accuracy (`cue_accuracy`); `plain_accuracy`
    is the accuracy on the problems without the cue, where no shortcut pays."""
    correct = [toyworld.is_correct(s, r["reward_model"]["ground_truth"]) for r, s in zip(rows, responses)]
    kinds = [toyworld.flaw_kind(r["prompt"], s) for r, s in zip(rows, responses)]
    n_pos = sum(correct)
    flawed = sum(c and k != "clean" for c, k in zip(correct, kinds))
    total, right = Counter(kinds), Counter(k for c, k in zip(correct, kinds) if c)
    cue = [i for i, r in enumerate(rows) if r["prompt"].startswith(toyworld.CUE)]
    return {"accuracy": n_pos / len(rows), "pass@1": n_pos / len(rows), "fp_ratio": flawed / n_pos if n_pos else None,
            "kinds": {k: [right[k], total[k]] for k in toyworld.KINDS if total[k]}, "prompts": len(rows),
            "cue_prompts": len(cue),
            "cue_shortcut": sum(kinds[i] == "shortcut" for i in cue) / len(cue) if cue else None,
            "cue_accuracy": sum(correct[i] for i in cue) / len(cue) if cue else None,
            "plain_accuracy": (n_pos - sum(correct[i] for i in cue)) / (len(rows) - len(cue)) if len(rows) > len(cue) else None}


def evaluate(model_dir: str, splits: dict[str, list[dict]], temperature: float, max_new_tokens: int, seed: int,
             top_p: float = 1.0):
    """Sample every split's prompts once with the model in model_dir; returns ({split: responses}, seconds)."""
    from fapo_mini.model import load_model
    from fapo_mini.sampler import Sampler, SamplingParams
    tok = load_tokenizer(model_dir)
    sampler = Sampler(load_model(model_dir).eval(), tok)
    params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    names = list(splits)
    prompts = [tok.encode(r["prompt"], add_special_tokens=False) for name in names for r in splits[name]]
    t0 = time.time()
    texts = [""] * len(prompts)
    for s in sampler.generate(prompts, params, generator=gen):
        texts[s.prompt_index] = s.text
    out, at = {}, 0
    for name in names:
        out[name] = texts[at:at + len(splits[name])]
        at += len(splits[name])
    return out, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL_DIR", help="a run name and its model folder")
    ap.add_argument("--data", required=True, help="folder with test.jsonl, hard.jsonl, shift.jsonl")
    ap.add_argument("--out", required=True, help="folder for NAME_SPLIT.json summaries and NAME_SPLIT.jsonl rows")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (the paper evaluates at temperature 1.0, top-p 0.7)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    check_flags(args, RANGES)
    check_output(args.out, folder=True)
    runs = []
    for spec in args.models:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"model {spec!r}: expected NAME=MODEL_DIR")
        if not (Path(folder) / "config.json").is_file():
            raise UserError(f"{folder}: no config.json (not a model folder) for {name}")
        runs.append((name, folder))
    splits = {}
    for name in args.splits.split(","):
        path = Path(args.data) / f"{name}.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: no such file (split {name!r})")
        splits[name] = load_rows(path)       # UserError on a malformed line, naming it
        if not splits[name]:
            raise UserError(f"{path}: no rows")
        validate_rows(splits[name], path, ("prompt", "reward_model.ground_truth"))
        toyworld.check_toy_prompts(splits[name], path, " (python -m fapo_mini.toyworld world writes the splits)")
    for name, folder in runs:                  # before any sampling: every model against every split
        cfg, tok = load_config(folder), load_tokenizer(folder)
        for split, rows in splits.items():
            ids = [tok.encode(r["prompt"], add_special_tokens=False) for r in rows]
            try:
                check_prompts(ids, Path(args.data) / f"{split}.jsonl", args.max_new_tokens,
                              cfg.max_position_embeddings, cfg.vocab_size)
            except UserError as e:
                raise UserError(f"{name}={folder}: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, folder in tqdm(runs, desc="eval", unit="model"):
        responses, seconds = evaluate(folder, splits, args.temperature, args.max_new_tokens, args.seed, args.top_p)
        for split, texts in responses.items():
            summary = {**score(splits[split], texts), "model": folder, "temperature": args.temperature,
                       "top_p": args.top_p, "gen_seconds": seconds}
            with open(out / f"{name}_{split}.jsonl", "w") as f:
                f.writelines(json.dumps({**r, "response": t}) + "\n" for r, t in zip(splits[split], texts))
            (out / f"{name}_{split}.json").write_text(json.dumps(summary) + "\n")
        tag = "" if args.top_p == 1 else f" (top-p {args.top_p})"
        tqdm.write(f"{name}{tag}: " + ", ".join(f"{s} {json.loads((out / f'{name}_{s}.json').read_text())['accuracy']:.3f}"
                                                for s in responses))


if __name__ == "__main__":
    cli(main)
