"""Supervised warm start: next-token loss on packed (prompt, completion) pairs.

Why this file exists: RL needs a model that already writes the expected format (a policy
its solution and final answer, a GenRM its critique and verdict). This file is that short
supervised run, for either model: prompt / completion text in, a Hugging Face folder out.

    python -m fapo_mini.sft --data sft.jsonl --tokenizer DIR --new-model d128-l4 --out DIR
    python -m fapo_mini.sft --data sft.jsonl --model DIR --out DIR      # continue from a checkpoint
    torchrun --nproc_per_node=2 -m fapo_mini.sft --data sft.jsonl --model DIR --out DIR

Rows of the jsonl file: {"prompt": str, "completion": str}. The loss covers the
completion tokens and the EOS after them, never the prompt (mean over those tokens).
Pairs are packed end to end as the RL update packs rollouts (update.pack_pairs).
Runs on the GPU when there is one (bf16 autocast, fp32 weights and AdamW), else the CPU.
One process, or under torchrun data-parallel (DDP): every rank draws the same batch from
the same seed and trains on its share (rows rank, rank + W, ...), with the loss normalised
by the whole batch's completion tokens, so W ranks take the steps one process would, up to
float rounding (tests/test_sft.py).

Stopping it (Ctrl-C, SIGTERM) finishes the step, saves the weights so far to --out beside a
file INCOMPLETE that names the step, and exits 130; load_model warns when it reads such a
folder. Simplified away: no resume (a warm start is minutes; run it again).
"""
import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from fapo_mini import dist, parallel
from fapo_mini.checkpoint import GracefulStop
from fapo_mini.data import load_rows, validate_rows
from fapo_mini.dist import all_reduce_sum
from fapo_mini.errors import UserError, cli
from fapo_mini.model import INCOMPLETE, ModelConfig, Qwen, load_config, load_model, load_tokenizer, save_model
from fapo_mini.preflight import at_least, check_flags, check_output
from fapo_mini.update import pack_pairs


def new_model(spec: str, tokenizer, seed=0) -> Qwen:
    """A fresh Qwen3-style model from a spec like 'd128-l4' (width 128, 4 layers,
    head_dim 32, MLP 3x), weights ~ N(0, 0.02) as in transformers' init."""
    try:
        parts = dict((p[0], int(p[1:])) for p in spec.split("-"))
        d, layers = parts["d"], parts["l"]
    except (ValueError, IndexError, KeyError):
        raise UserError(f"--new-model {spec!r}: expected d<width>-l<layers>, e.g. d128-l4") from None
    if d < 32 or d % 32 or layers < 1:
        raise UserError(f"--new-model {spec!r}: the width must be a multiple of 32 and layers >= 1")
    heads = d // 32
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=d, intermediate_size=3 * d,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=32, rope_theta=10000.0, tie_word_embeddings=True,
                      max_position_embeddings=tokenizer.model_max_length,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen(cfg)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    return model


def tokenize_pairs(pairs, tokenizer):
    """[(prompt, completion)] -> [(prompt_ids, completion_ids + [eos])]."""
    eos = tokenizer.eos_token_id
    return [(tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(c, add_special_tokens=False) + [eos])
            for p, c in pairs]


def sft_loss(model, batch, n_tokens=None):
    """Summed NLL over the batch's completion tokens / n_tokens (default: their count, a mean).
    batch: update.pack_pairs of (prompt_ids, completion_ids) pairs. `model` may be DDP-wrapped."""
    hidden = model(batch["ids"], batch["pos"], batch["cu"], batch["max_len"])         # (T, C)
    # all T positions are scored, then masked to the completion's: the loss of scoring hidden[sel] alone
    # (as update.py does), in the float sums that earlier warm starts were trained with
    mask = torch.zeros(len(batch["ids"]), device=hidden.device).index_fill_(0, batch["sel"], 1.0)  # (T,)
    logp = parallel.unwrap(model).token_logprobs(hidden, batch["nxt"])                # (T,)
    return -(logp * mask).sum() / (mask.sum() if n_tokens is None else n_tokens)


def completion_tokens(examples) -> int:
    """Tokens the loss covers: each completion and its EOS (pack_pairs' `sel`)."""
    return sum(len(c) for _, c in examples)


def train(model, examples, steps, batch_size, lr, seed=0, warmup=0.05, log=None, rank=0, world_size=1, stop=None):
    """AdamW, linear warm-up then cosine decay to 10% of lr. Returns the loss per step (the whole
    batch's mean). With world_size > 1, `model` is DDP-wrapped and this rank trains on its rows.
    `stop`: a checkpoint.GracefulStop; when any rank got a signal the loop ends after that step,
    so fewer than `steps` losses come back."""
    rng = random.Random(seed)                                # the same stream on every rank: the same batches
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    n_warm = max(1, int(warmup * steps))

    def lr_factor(s):
        if s < n_warm:
            return (s + 1) / n_warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (s - n_warm) / max(1, steps - n_warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    device = next(model.parameters()).device
    ac = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.train()
    losses = []
    if min(batch_size, len(examples)) < world_size:
        raise UserError(f"a batch of {min(batch_size, len(examples))} rows cannot feed {world_size} ranks")
    bar = tqdm(range(steps), desc="sft", disable=log is None)
    for step in bar:
        batch = rng.sample(examples, min(batch_size, len(examples)))
        mine = batch[rank::world_size]
        with ac:
            # DDP averages gradients over ranks: x world_size turns that back into the batch's sum
            loss = sft_loss(model, pack_pairs(mine, device), completion_tokens(batch)) * world_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(all_reduce_sum(loss.detach().double() / world_size).item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log is not None:
            log.write(json.dumps({"step": step, "loss": losses[-1], "lr": sched.get_last_lr()[0]}) + "\n")
        if stop is not None and stop.should_stop(device):
            break
    bar.close()
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="jsonl of {prompt, completion}")
    ap.add_argument("--out", required=True, help="output model folder (HF format)")
    ap.add_argument("--model", help="start from this HF folder")
    ap.add_argument("--new-model", help="or a fresh model, e.g. d128-l4 (needs --tokenizer)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if bool(args.model) == bool(args.new_model):
        raise UserError("give exactly one of --model and --new-model")
    if args.new_model and not args.tokenizer:
        raise UserError("--new-model needs --tokenizer DIR")
    check_flags(args, (("steps", at_least(1), ">= 1"), ("batch_size", at_least(1), ">= 1"), ("lr", lambda v: v > 0, "> 0")))
    check_output(args.out, folder=True)
    rows = load_rows(args.data)                              # file:line for a malformed line, UserError if empty
    validate_rows(rows, args.data, fields=("prompt", "completion"))
    for i, r in enumerate(rows, start=1):
        if not isinstance(r["completion"], str) or not isinstance(r["prompt"], str):
            raise UserError(f"{args.data}:{i}: 'prompt' and 'completion' must be strings")
    if args.model:
        load_config(args.model)       # config.json first: transformers' tokenizer loader reads it too
    tok = load_tokenizer(args.tokenizer or args.model)
    info = dist.setup()
    model = (load_model(args.model) if args.model else new_model(args.new_model, tok, args.seed)).to(info.device)
    trained = parallel.wrap(model, info, fsdp=False)        # DDP under torchrun, else the model itself
    examples = tokenize_pairs([(r["prompt"], r["completion"]) for r in rows], tok)
    n_params = sum(p.numel() for p in model.parameters())
    dist.print0(f"sft: {len(examples)} examples, {n_params / 1e6:.2f}M parameters, {args.steps} steps on "
                f"{info.world_size} x {info.device.type}")
    t0 = time.time()
    log = None
    if info.is_main:
        os.makedirs(args.out, exist_ok=True)
        log = open(os.path.join(args.out, "sft_log.jsonl"), "w")
    try:
        with GracefulStop() as stop:
            losses = train(trained, examples, args.steps, args.batch_size, args.lr, args.seed, log=log,
                           rank=info.rank, world_size=info.world_size, stop=stop)
    finally:
        if log is not None:
            log.close()
    marker = Path(args.out) / INCOMPLETE
    if info.is_main:
        save_model(model, args.out, tok)
        if len(losses) < args.steps:
            marker.write_text(f"sft stopped after step {len(losses)} of {args.steps}\n")
        else:
            marker.unlink(missing_ok=True)
            print(json.dumps({"final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - t0, 1)}))
    dist.barrier()
    dist.cleanup()
    if len(losses) < args.steps:
        if info.is_main:
            print(f"stopped after step {len(losses)} of {args.steps}: the weights so far are in {args.out}, "
                  f"marked by {marker}; run again for the whole warm start", file=sys.stderr, flush=True)
        raise SystemExit(130)

if __name__ == "__main__":
    cli(main)
