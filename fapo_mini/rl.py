"""The RL run both trainers share: sample -> reward (the caller's) -> advantages -> update -> log -> save.

Why this file exists: train_policy.py and train_genrm.py differ only in `reward_fn`; the
flags, the loop, resume, logging and checkpoints live here once. The update itself is
update.py; how the model is spread over ranks (DDP, FSDP2) and the sampler's copy of it
are parallel.py.

One step, on every rank:
  1. sample n rollouts for this rank's shard of the step's prompts (the rollout copy);
  2. reward them (`reward_fn`), plus the optional DAPO overlong shaping;
     with --filter-groups (DAPO's dynamic sampling) drop groups whose rewards are all
     equal and sample more prompts until the batch is full, at most --filter-max-rounds rounds
     (then equal-reward groups fill it, and the run says so). The reward_fn's metrics
     (accuracy, ...) then cover every sampled rollout; reward, response lengths, truncation
     and zero_var_groups cover the trained batch; kept_groups, sampled_groups,
     sampling_rounds and filter_cap_hit say what the filter did;
  3. group advantages, one update (update.ppo_update), refresh the rollout copy;
  4. one metrics line (rank 0), a checkpoint every --save-every steps and at the end.

Simplified away: asynchronous rollouts (sampling and training alternate), a separate
inference engine (the sampler is ours, sampler.py).
"""
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fapo_mini import dist, grpo, parallel, tracking
from fapo_mini.checkpoint import (GracefulStop, check_config, latest_checkpoint, load_sharded, load_state,
                                  rng_state, save_checkpoint, set_rng_state)
from fapo_mini.data import batch_indices, shard
from fapo_mini.dist import all_reduce_sum
from fapo_mini.errors import UserError
from fapo_mini.model import load_model, load_tokenizer, save_model
from fapo_mini.sampler import Sampler, SamplingParams
from fapo_mini.update import Rollouts, UpdateConfig, make_optimizer, ppo_update


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
    g.add_argument("--rollout-max-rows", type=int, default=256,
                   help="sampler cache slots (rows decoded at once); the KV cache is slots x (longest prompt + max-new-tokens)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay the sampler's decode step as CUDA graphs, one per batch bucket (GPU only)")
    g.add_argument("--filter-groups", action="store_true",
                   help="DAPO dynamic sampling: train only on groups whose rewards differ, sampling more prompts to fill the batch")
    g.add_argument("--filter-max-rounds", type=int, default=10,
                   help="with --filter-groups: sampling rounds per step at most; then the batch is topped up with equal-reward groups")
    g = ap.add_argument_group("update")
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--warmup", type=int, default=10, help="LR warm-up, in RL steps (as verl): step s runs at lr * min(1, (s + 1) / warmup)")
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
    g.add_argument("--fsdp", action="store_true",
                   help="shard the trained model with FSDP2 (bf16 compute on GPU, fp32 grads and AdamW); default DDP")
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
RESUMABLE = ("steps", "save_every", "keep", "fresh", "out", "micro_tokens", "grad_checkpointing", "report_to",
             "cuda_graphs")


def log_metrics(metrics_path: Path, line: dict) -> None:
    """Every metrics line goes through here (rank 0 only): one JSON object per step."""
    with open(metrics_path, "a") as f:
        f.write(json.dumps(line) + "\n")


def mixed_groups(rewards: torch.Tensor, group_size: int) -> list[bool]:
    """Per group: do its rewards differ? rewards (N,) group after group -> N / group_size bools.
    Example: [1, 1, -1, -1, 0, 0], group_size 2 -> [False, False, False]; [1, -1] -> [True]."""
    groups = rewards.view(-1, group_size)
    return (~(groups == groups[:, :1]).all(1)).tolist()


def train(args, info: dist.DistInfo, reward_fn, rows, prompt_ids, generators=None):
    """The RL run, on the ranks `info` describes (the script's one dist.setup()), over `rows` and
    their tokenized prompts `prompt_ids` (preflight.check_run_inputs has read and checked both).
    `reward_fn(rows, samples)` -> (rewards (N,), counts) where counts maps a
    metric name to a local (numerator, denominator) pair; the loop sums both over ranks, key by
    key, so every rank must return the same keys at every step (decide them from the dataset and
    flags, never from this batch's rows; a key with nothing to count is (0, 0)).
    `generators`: name -> the torch.Generator a reward draws from (a sampling GenRM's), checkpointed.
    Resumes from the newest checkpoint in --out unless --fresh."""
    out = Path(args.out)
    try:  # bad data, model folder, checkpoint or flags: end with the message, not a traceback
        if len(rows) < args.prompts_per_step or args.prompts_per_step % info.world_size:
            raise UserError(f"--prompts-per-step {args.prompts_per_step} must be <= {len(rows)} rows and a "
                             f"multiple of {info.world_size} ranks")
        per_rank = args.prompts_per_step // info.world_size * args.group_size
        if per_rank % args.mini_batches:
            raise UserError(f"--mini-batches {args.mini_batches} must divide the {per_rank} rollouts per rank "
                            f"(--prompts-per-step {args.prompts_per_step} / {info.world_size} ranks x --group-size "
                            f"{args.group_size})")
        if args.fsdp and info.world_size < 2:
            raise UserError("--fsdp shards over ranks: run under torchrun with --nproc_per_node >= 2")
        if args.cuda_graphs and info.device.type != "cuda":
            raise UserError("--cuda-graphs needs CUDA GPUs")
        for flag in ("filter_max_rounds", "rollout_max_rows"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        tok = load_tokenizer(args.model, args.trust_remote_code)
        config = dict(vars(args))
        if args.fresh and info.is_main and (out / "ckpt").exists():
            shutil.rmtree(out / "ckpt")                            # else old, higher steps would win on resume
        dist.barrier()
        ckpt = None if args.fresh else latest_checkpoint(out, info.world_size)
        model = load_model(ckpt / "model" if ckpt else args.model, info.device)
        model.gradient_checkpointing = args.grad_checkpointing
        ref_model = None
        if args.kl_coef > 0:                                       # inference only: bf16 on GPU, no grads
            ref_dtype = torch.bfloat16 if info.device.type == "cuda" else torch.float32
            ref_model = load_model(args.model, info.device, ref_dtype).eval().requires_grad_(False)
        trained = parallel.wrap(model, info, args.fsdp)            # DDP, FSDP2 (shards `model` in place) or model
        opt, sched = make_optimizer(model, args.lr, args.warmup, args.weight_decay)
        gen = torch.Generator(device=info.device).manual_seed(args.seed * 1000 + info.rank)
        torch.manual_seed(args.seed * 1000 + info.rank)
        random.seed(args.seed * 1000 + info.rank)
        np.random.seed(args.seed * 1000 + info.rank)
        metrics_path, start = out / "metrics.jsonl", 0
        if ckpt is not None:
            state, rank_state = load_state(ckpt, info.rank)
            check_config(state["config"], config, ignore=RESUMABLE, paths=("model", "data", "genrm"))
            if args.fsdp:
                from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
                opt_state = load_sharded(ckpt, {"optimizer": get_optimizer_state_dict(model, opt)})["optimizer"]
                set_optimizer_state_dict(model, opt, opt_state)
            else:
                opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(rank_state["rng"], generators)
            gen.set_state(rank_state["sampler_rng"])
            start = state["step"]
            if start > args.steps:   # else the run would end at once and config.json would say the smaller --steps
                raise UserError(f"--steps {args.steps}: {out} is already at step {start}; give --steps >= {start} "
                                "to continue it, or --fresh to start over")
            dist.print0(f"resuming from {ckpt} at step {start}")
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        lines = metrics_path.read_text().splitlines(keepends=True)[:start] if ckpt and metrics_path.exists() else []
        metrics_path.write_text("".join(lines))                # drop lines logged after the checkpoint
        tracker = tracking.start(args.report_to, out, config, resumed_at=start)
    dist.barrier()
    rollout = parallel.RolloutCopy(model, info, args.fsdp)     # CPU + DDP: the live policy itself
    sampler = Sampler(rollout.model, tok, max_rows=args.rollout_max_rows, cuda_graphs=args.cuda_graphs)
    params = SamplingParams(n=args.group_size, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens)
    cfg = UpdateConfig(temperature=args.temperature, mini_batches=args.mini_batches, micro_tokens=args.micro_tokens,
                       clip_low=args.clip_low, clip_high=args.clip_high, dual_clip=args.dual_clip,
                       loss_agg=args.loss_agg, max_response=args.max_new_tokens, grad_clip=args.grad_clip,
                       kl_coef=args.kl_coef)

    def rank_state():
        """Everything this rank draws random numbers from: the one place a checkpoint gathers RNG state."""
        return {"rng": rng_state(generators), "sampler_rng": gen.get_state()}

    def save(step):
        full = parallel.full_state_dict(trained)                   # FSDP2: gathered on rank 0 (a collective)

        def export(folder):                                        # an HF folder, generation_config.json kept
            exported = parallel.model_from_state_dict(model.cfg, full)
            exported.generation_config = model.generation_config
            save_model(exported, folder, tok)

        sharded = None
        state = {"scheduler": sched.state_dict(), "step": step, "config": config}
        if args.fsdp:                                              # each rank writes its shard of AdamW (DCP)
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
            sharded = {"optimizer": get_optimizer_state_dict(model, opt)}
        else:
            state["optimizer"] = opt.state_dict()
        save_checkpoint(out, step, export,
                        state, rank_state(), info, args.keep, sharded=sharded)

    def sample_round(step, round_):
        """Round `round_` of a step: this rank's prompts, rollouts and rewards. Round 0 is the step's
        own batch; --filter-groups draws later rounds from a stream with another seed."""
        idx = shard(batch_indices(len(rows), args.prompts_per_step, step, args.seed + 1_000_003 * round_),
                    info.rank, info.world_size)
        t0 = time.time()
        samples = sampler.generate([prompt_ids[i] for i in idx], params, generator=gen)
        t1 = time.time()
        rewards, counts = reward_fn([rows[i] for i in idx], samples)     # (N,), rollouts group after group
        seconds["sample"] += t1 - t0
        seconds["judge"] += time.time() - t1
        for s in samples:
            s.prompt_index = idx[s.prompt_index]                         # now a row index
        return samples, torch.as_tensor(rewards, dtype=torch.float32), counts

    def collect(step):
        """This rank's batch of the step: (samples, rewards, summed counts, filter stats or None)."""
        samples, rewards, counts = sample_round(step, 0)
        if not args.filter_groups:
            return samples, rewards, counts, None
        n, need = args.group_size, len(samples) // args.group_size
        kept, dropped, rounds, sampled = [], [], 1, need               # groups: (samples, rewards)
        while True:
            for g, mixed in enumerate(mixed_groups(rewards, n)):
                group = (samples[g * n:(g + 1) * n], rewards[g * n:(g + 1) * n])
                (kept if mixed else dropped).append(group)
            short = torch.tensor([float(len(kept) < need)], device=info.device)
            if all_reduce_sum(short).item() == 0 or rounds == args.filter_max_rounds:
                break
            rounds += 1
            if len(kept) < need:                                       # a full rank waits for the others
                samples, rewards, more = sample_round(step, rounds - 1)
                sampled += len(samples) // n
                for k, (num, den) in more.items():
                    num_before, den_before = counts.get(k, (0, 0))
                    counts[k] = (num_before + num, den_before + den)
            else:
                samples, rewards = [], torch.zeros(0)
        topped_up = max(0, need - len(kept))
        batch = kept[:need] + dropped[:topped_up]                      # at the cap: equal-reward groups fill up
        stats = dict(kept=min(len(kept), need), sampled=sampled, rounds=rounds, topped_up=topped_up)
        return ([s for grp, _ in batch for s in grp], torch.cat([r for _, r in batch]), counts, stats)

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not info.is_main)
    with GracefulStop() as stop:
        for step in bar:
            seconds = {"sample": 0.0, "judge": 0.0}                # sample_round adds to both
            model.eval()
            samples, rewards, counts, filter_stats = collect(step)
            t1 = time.time()
            lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.float32)
            if args.overlong_buffer:
                rewards = rewards + grpo.overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer)
            adv = grpo.group_advantages(rewards, args.group_size)
            t2 = time.time()
            rollouts = Rollouts([prompt_ids[s.prompt_index] for s in samples], [s.token_ids for s in samples],
                                [s.logprobs for s in samples], adv)
            try:
                update_stats = ppo_update(trained, opt, sched, rollouts, cfg, info.world_size, ref_model)
            except FloatingPointError as e:
                raise SystemExit(f"step {step + 1}: {e}; stopping, the last checkpoint is left as it was")
            rollout.refresh()                                      # once per RL step: the sampler's weights
            t3 = time.time()
            groups = rewards.view(-1, args.group_size)
            counts.update(reward=(rewards.sum().item(), len(rewards)),
                          response_len=(lengths.sum().item(), len(lengths)),
                          truncated=(sum(s.finish_reason == "length" for s in samples), len(samples)),
                          zero_var_groups=(((groups == groups[:, :1]).all(1)).sum().item(), len(groups)))
            keys = sorted(counts)
            totals = all_reduce_sum(torch.tensor([x for k in keys for x in counts[k]], dtype=torch.float64,
                                                 device=info.device)).tolist()
            longest = torch.tensor([lengths.max().item()], device=info.device)
            if info.world_size > 1:
                torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
            line = {"step": step + 1,
                    **{k: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None for i, k in enumerate(keys)},
                    "response_len_max": longest.item(), **update_stats,
                    "time_sample": seconds["sample"], "time_judge": seconds["judge"] + t2 - t1, "time_train": t3 - t2}
            if filter_stats is not None:                           # what the step trained on, summed over ranks
                f = torch.tensor([float(filter_stats[k]) for k in ("kept", "sampled", "topped_up")], device=info.device)
                kept, sampled, topped_up = all_reduce_sum(f).tolist()
                rounds = torch.tensor([float(filter_stats["rounds"])], device=info.device)
                if info.world_size > 1:
                    torch.distributed.all_reduce(rounds, op=torch.distributed.ReduceOp.MAX)
                line.update(kept_groups=int(kept), sampled_groups=int(sampled), sampling_rounds=int(rounds.item()),
                            filter_cap_hit=int(topped_up > 0))
                if topped_up:
                    dist.print0(f"step {step + 1}: --filter-max-rounds {args.filter_max_rounds} reached with "
                                f"{int(kept)} of {args.prompts_per_step} mixed-reward groups; "
                                f"{int(topped_up)} equal-reward groups fill the batch")
            if info.device.type == "cuda":                          # policy + GenRM + optimizer + activations
                line["max_memory_gb"] = torch.cuda.max_memory_allocated(info.device) / 2**30
            if info.is_main:
                log_metrics(metrics_path, line)
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
