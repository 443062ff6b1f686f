"""One GRPO update on a batch of rollouts: the loop piece train_policy.py and train_genrm.py share.

Why this file exists: the policy and the GenRM are both trained with GRPO; they differ
only in how a rollout is rewarded. Everything after the advantages (packing, PPO
mini-batches, micro-batches with gradient accumulation, the global token-mean
normaliser, DDP, clipping, metrics) lives here once.

    rollouts --pack--> (T,) packed tokens --forward--> log-probs of response tokens
             --grpo.clipped_loss--> per-token loss --grpo.aggregate--> backward

The DDP trick (nanoGPT style): only the last micro-batch of a mini-batch syncs
gradients (`no_sync` on the others), and DDP *averages* gradients over ranks. Our
loss is already divided by the GLOBAL token count (all-reduced once per mini-batch),
so each rank multiplies its loss by world_size to turn DDP's average back into a sum.
"""
import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from fapo_mini import dist, grpo, tracking
from fapo_mini.checkpoint import (GracefulStop, check_config, latest_checkpoint, load_state, rng_state,
                                  save_checkpoint, set_rng_state)
from fapo_mini.data import batch_indices, load_rows, prompt_text, shard, validate_rows
from fapo_mini.dist import all_reduce_sum
from fapo_mini.model import load_model, load_tokenizer, save_model
from fapo_mini.sampler import Sampler, SamplingParams


@dataclass
class Rollouts:
    """This rank's rollouts of one step, group after group (n per prompt)."""
    prompt_ids: list          # list[list[int]], one per rollout
    response_ids: list        # list[list[int]]
    old_logp: list            # list[list[float]], the sampler's log-probs
    advantages: torch.Tensor  # (N,)


@dataclass
class UpdateConfig:
    temperature: float = 1.0          # the rollout temperature: log-probs are of logits / T
    mini_batches: int = 1             # optimizer steps per RL step
    micro_tokens: int = 4096          # max packed tokens per forward
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 10.0
    loss_agg: str = "token-mean"
    max_response: int = 0             # for seq-mean-token-sum-norm
    grad_clip: float = 1.0
    kl_coef: float = 0.0


def pack(ro: Rollouts, idx, device):
    """Rollouts idx -> packed tensors. Only response tokens are scored: `sel` are the
    positions whose NEXT token is a response token (T_r of them)."""
    ids, pos, sel, tgt, old, adv, seq, lens = [], [], [], [], [], [], [], []
    off = 0
    for j, i in enumerate(idx):
        p, r = ro.prompt_ids[i], ro.response_ids[i]
        ids += p + r
        pos += range(len(p) + len(r))
        sel += range(off + len(p) - 1, off + len(p) + len(r) - 1)
        tgt += r
        old += ro.old_logp[i]
        adv += [float(ro.advantages[i])] * len(r)
        seq += [j] * len(r)
        lens.append(len(p) + len(r))
        off += len(p) + len(r)
    t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt, device=device)
    cu = torch.nn.functional.pad(t(lens).cumsum(0), (1, 0)).to(torch.int32)
    return dict(ids=t(ids), pos=t(pos), cu=cu, max_len=max(lens), sel=t(sel), tgt=t(tgt),
                old=t(old, torch.float32), adv=t(adv, torch.float32), seq=t(seq))


def micro_batches(idx, ro: Rollouts, max_tokens):
    """Split rollout indices into consecutive chunks of at most max_tokens packed tokens."""
    out, cur, n = [], [], 0
    for i in idx:
        L = len(ro.prompt_ids[i]) + len(ro.response_ids[i])
        if cur and n + L > max_tokens:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += L
    return out + [cur]


def response_logprobs(model, b, temperature, with_entropy=False):
    hidden = model(b["ids"], b["pos"], b["cu"], b["max_len"])                # (T, C), through DDP
    inner = getattr(model, "module", model)
    return inner.token_logprobs(hidden[b["sel"]], b["tgt"], temperature, with_entropy=with_entropy)


def ppo_update(model, optimizer, scheduler, ro: Rollouts, cfg: UpdateConfig, world_size=1,
               ref_model=None, generator=None):
    """PPO/GRPO update over this rank's rollouts, `cfg.mini_batches` optimizer steps.
    `model` may be DDP-wrapped. Returns metrics averaged over all ranks."""
    device = next(model.parameters()).device
    N = len(ro.response_ids)
    if N % cfg.mini_batches:
        raise ValueError(f"{N} rollouts per rank do not split into {cfg.mini_batches} mini-batches")
    order = torch.randperm(N, generator=generator).tolist()
    mb_size = N // cfg.mini_batches
    ac = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()
    # token-summed metrics: clipped, kl to the sampler, entropy, |trainer - sampler| on the first mini-batch
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    grad_norms = []
    model.train()
    for m in range(cfg.mini_batches):
        idx = order[m * mb_size:(m + 1) * mb_size]
        counts = torch.tensor([sum(len(ro.response_ids[i]) for i in idx), len(idx)], dtype=torch.float64,
                              device=device)
        n_tok, n_seq = all_reduce_sum(counts).tolist()                      # global, once per optimizer step
        denom = grpo.loss_denominator(cfg.loss_agg, n_tok, n_seq)
        micros = micro_batches(idx, ro, cfg.micro_tokens)
        for k, mi in enumerate(micros):
            b = pack(ro, mi, device)
            sync = k == len(micros) - 1 or not hasattr(model, "no_sync")
            with nullcontext() if sync else model.no_sync():                 # only the last micro-batch syncs
                with ac:
                    logp, ent = response_logprobs(model, b, cfg.temperature, with_entropy=True)
                    per_tok, st = grpo.clipped_loss(logp, b["old"], b["adv"], cfg.clip_low, cfg.clip_high,
                                                    cfg.dual_clip)
                    if ref_model is not None:
                        with torch.no_grad():
                            ref = response_logprobs(ref_model, b, cfg.temperature)
                        per_tok = per_tok + cfg.kl_coef * grpo.kl_k3(logp, ref)   # k3 KL penalty in the loss
                    loss = grpo.aggregate(per_tok, b["seq"], cfg.loss_agg, denom, cfg.max_response) * world_size
                loss.backward()
            d = (logp.detach() - b["old"])
            sums += torch.stack([st["clipped"].sum(), grpo.kl_k3(b["old"], logp.detach()).sum(), ent.sum(),
                                 d.abs().sum() if m == 0 else d.new_zeros(()),
                                 torch.tensor(float(len(logp)), device=device),
                                 torch.tensor(float(len(logp)) if m == 0 else 0.0, device=device)]).double()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norms.append(gn.item())
        if not math.isfinite(grad_norms[-1]):
            raise FloatingPointError(f"grad norm is {grad_norms[-1]}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    s = all_reduce_sum(sums).tolist()
    return {"clip_frac": s[0] / s[4], "kl_to_sampler": s[1] / s[4], "entropy": s[2] / s[4],
            "logp_gap": s[3] / max(s[5], 1), "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": scheduler.get_last_lr()[0]}


def make_optimizer(model, lr, warmup_steps, weight_decay=0.1):
    """AdamW with linear warm-up then a constant rate (FAPO_SPEC 2: constant after warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    return opt, sched


# ----------------------------------------------------------------------------
# the run loop: sample -> reward (the caller's) -> advantages -> update -> log -> save

def add_common_args(ap):
    """Flags both trainers share; each script adds its own reward flags."""
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="HF model folder to start from")
    g.add_argument("--data", required=True, help="verl-format rows: .jsonl / .parquet / hub name")
    g.add_argument("--out", required=True, help="run folder: metrics.jsonl, config.json, ckpt/")
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code")
    g = ap.add_argument_group("rollout")
    g.add_argument("--prompts-per-step", type=int, default=16, help="global, over all ranks")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per prompt, n (named so torchrun does not take --n for its own)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--overlong-buffer", type=int, default=0, help="DAPO overlong shaping buffer (0 = off)")
    g = ap.add_argument_group("update")
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--warmup", type=int, default=10, help="warm-up, in optimizer steps")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--mini-batches", type=int, default=1, help="optimizer steps per RL step")
    g.add_argument("--micro-tokens", type=int, default=4096, help="max packed tokens per forward")
    g.add_argument("--clip-low", type=float, default=0.2)
    g.add_argument("--clip-high", type=float, default=0.28)
    g.add_argument("--dual-clip", type=float, default=10.0)
    g.add_argument("--loss-agg", default="token-mean", choices=grpo.AGG_MODES)
    g.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL to the initial model (0 = no reference model)")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--grad-checkpointing", action="store_true")
    g = ap.add_argument_group("run")
    g.add_argument("--steps", type=int, default=100)
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every K steps (0 = only at the end)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    g.add_argument("--fresh", action="store_true", help="ignore checkpoints in --out and start over")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--report-to", default="none", choices=tracking.REPORT_TO, type=tracking.report_to_arg,
                   help="also log to (metrics.jsonl always)")
    return ap


# flags that may change when a run is resumed; every other flag must match the checkpoint
RESUMABLE = ("steps", "save_every", "keep", "fresh", "out", "micro_tokens", "grad_checkpointing", "report_to")


def train(args, reward_fn, fields=("prompt", "reward_model.ground_truth"), generators=None):
    """The RL run. `reward_fn(rows, samples)` -> (rewards (N,), counts) where counts maps a
    metric name to a local (numerator, denominator) pair; the loop sums both over ranks.
    `generators`: name -> the torch.Generator a reward draws from (a sampling GenRM's), checkpointed.
    Resumes from the newest checkpoint in --out unless --fresh."""
    info = dist.setup()
    out = Path(args.out)
    try:  # bad data, model folder, checkpoint or flags: end with the message, not a traceback
        rows = load_rows(args.data)
        validate_rows(rows, args.data, fields)
        if len(rows) < args.prompts_per_step or args.prompts_per_step % info.world_size:
            raise SystemExit(f"--prompts-per-step {args.prompts_per_step} must be <= {len(rows)} rows and a "
                             f"multiple of {info.world_size} ranks")
        tok = load_tokenizer(args.model, args.trust_remote_code)
        config = dict(vars(args))
        if args.fresh and info.is_main and (out / "ckpt").exists():
            shutil.rmtree(out / "ckpt")                            # else old, higher steps would win on resume
        dist.barrier()
        ckpt = None if args.fresh else latest_checkpoint(out, info.world_size)
        model = load_model(ckpt / "model" if ckpt else args.model, info.device)
        model.gradient_checkpointing = args.grad_checkpointing
        ref_model = load_model(args.model, info.device).eval() if args.kl_coef > 0 else None
        opt, sched = make_optimizer(model, args.lr, args.warmup, args.weight_decay)
        gen = torch.Generator(device=info.device).manual_seed(args.seed * 1000 + info.rank)
        torch.manual_seed(args.seed * 1000 + info.rank)
        random.seed(args.seed * 1000 + info.rank)
        np.random.seed(args.seed * 1000 + info.rank)
        metrics_path, start = out / "metrics.jsonl", 0
        if ckpt is not None:
            state, rank_state = load_state(ckpt, info.rank)
            check_config(state["config"], config, ignore=RESUMABLE)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(rank_state["rng"], generators)
            gen.set_state(rank_state["sampler_rng"])
            start = state["step"]
            dist.print0(f"resuming from {ckpt} at step {start}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        lines = metrics_path.read_text().splitlines(keepends=True)[:start] if ckpt and metrics_path.exists() else []
        metrics_path.write_text("".join(lines))                # drop lines logged after the checkpoint
        tracker = tracking.start(args.report_to, out, config, resumed_at=start)
    dist.barrier()
    ddp = DDP(model) if info.world_size > 1 else model
    sampler = Sampler(model, tok)                              # the live policy: no weight copy
    prompt_ids = [tok.encode(prompt_text(r, tok), add_special_tokens=False) for r in rows]
    params = SamplingParams(n=args.group_size, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens)
    cfg = UpdateConfig(args.temperature, args.mini_batches, args.micro_tokens, args.clip_low, args.clip_high,
                       args.dual_clip, args.loss_agg, args.max_new_tokens, args.grad_clip, args.kl_coef)

    def save(step):
        save_checkpoint(out, step, lambda d: save_model(model, d, tok),
                        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                         "config": config}, {"rng": rng_state(generators), "sampler_rng": gen.get_state()}, info, args.keep)

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not info.is_main)
    with GracefulStop() as stop:
        for step in bar:
            t0 = time.time()
            idx = shard(batch_indices(len(rows), args.prompts_per_step, step, args.seed), info.rank, info.world_size)
            model.eval()
            samples = sampler.generate([prompt_ids[i] for i in idx], params, generator=gen)
            t1 = time.time()
            rewards, counts = reward_fn([rows[i] for i in idx], samples)     # (N,), rollouts group after group
            lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.float32)
            if args.overlong_buffer:
                rewards = rewards + grpo.overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer)
            adv = grpo.group_advantages(rewards, args.group_size)
            t2 = time.time()
            ro = Rollouts([prompt_ids[idx[s.prompt_index]] for s in samples], [s.token_ids for s in samples],
                          [s.logprobs for s in samples], adv)
            try:
                stats = ppo_update(ddp, opt, sched, ro, cfg, info.world_size, ref_model)
            except FloatingPointError as e:
                raise SystemExit(f"step {step + 1}: {e}; stopping, the last checkpoint is left as it was")
            t3 = time.time()
            groups = rewards.view(-1, args.group_size)
            counts.update(reward=(rewards.sum().item(), len(rewards)),
                          response_len=(lengths.sum().item(), len(lengths)),
                          truncated=(sum(s.finish_reason == "length" for s in samples), len(samples)),
                          zero_var_groups=(((groups == groups[:, :1]).all(1)).sum().item(), len(groups)))
            keys = sorted(counts)
            tot = all_reduce_sum(torch.tensor([x for k in keys for x in counts[k]], dtype=torch.float64,
                                              device=info.device)).tolist()
            mx = torch.tensor([lengths.max().item()], device=info.device)
            if info.world_size > 1:
                torch.distributed.all_reduce(mx, op=torch.distributed.ReduceOp.MAX)
            line = {"step": step + 1, **{k: tot[2 * i] / tot[2 * i + 1] if tot[2 * i + 1] else None for i, k in enumerate(keys)},
                    "response_len_max": mx.item(), **stats,
                    "time_sample": t1 - t0, "time_judge": t2 - t1, "time_train": t3 - t2}
            if info.device.type == "cuda":                          # policy + GenRM + optimizer + activations
                line["max_memory_gb"] = torch.cuda.max_memory_allocated(info.device) / 2**30
            if info.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
                tracker.log(line)
                bar.set_postfix({k: round(line[k], 3) for k in ("accuracy", "fp_ratio") if line.get(k) is not None})
            last = step + 1 == args.steps
            stopping = stop.should_stop(info.device)
            if last or stopping or (args.save_every and (step + 1) % args.save_every == 0):
                save(step + 1)
            if stopping:
                dist.print0(f"stopped at step {step + 1}; run the same command to resume")
                break
    dist.cleanup()
