"""The RL run both trainers share: sample -> reward (the caller's) -> advantages -> update -> log -> save.

Why this file exists: train_policy.py and train_genrm.py differ only in `reward_fn`; the
loop, resume, logging, evaluation and checkpoints live here once (their flags: flags.py).
The update itself is update.py; how the model is spread over ranks (DDP, FSDP2) and the
sampler's copy of it are parallel.py.

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
  4. every --eval-every steps, the held-out rows (`evaluate`);
  5. one metrics line (rank 0), a checkpoint every --save-every steps and at the end.
A judge that stops answering (JudgeUnavailable) ends the run after a checkpoint of the last
step taken.

Simplified away: asynchronous rollouts (sampling and training alternate), a separate
inference engine (the sampler is ours, sampler.py).
"""
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from fapo_mini import dist, grpo, parallel, tracking
from fapo_mini.flags import RESUMABLE, RETIRED
from fapo_mini.checkpoint import (GracefulStop, check_config, latest_checkpoint, load_sharded, load_state,
                                  rng_state, save_checkpoint, set_rng_state)
from fapo_mini.data import batch_indices, shard
from fapo_mini.dist import all_reduce_sum
from fapo_mini.errors import UserError
from fapo_mini.judge import JudgeUnavailable
from fapo_mini.model import load_model, load_tokenizer, save_model
from fapo_mini.preflight import check_layout
from fapo_mini.sampler import Sampler, SamplingParams
from fapo_mini.update import Rollouts, UpdateConfig, make_optimizer, ppo_update


@dataclass
class Run:
    """What the loop trains, set up once by `start`, fresh or from a checkpoint."""
    model: torch.nn.Module          # the policy's weights (sharded in place under FSDP2)
    trained: torch.nn.Module        # `model` as DDP / FSDP2 wraps it for the update
    ref_model: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    tok: object
    gen: torch.Generator            # the sampler's random stream on this rank
    step: int                       # RL steps already done
    config: dict
    resumed_from: Path | None


@dataclass
class Batch:
    """This rank's rollouts of one step, group after group."""
    samples: list                   # sampler.Sample, prompt_index = row index
    rewards: torch.Tensor           # (N,)
    counts: dict                    # metric -> local (numerator, denominator), summed over ranks when logged
    seconds: dict = field(default_factory=lambda: {"sample": 0.0, "judge": 0.0})
    filter: dict | None = None      # what --filter-groups did: kept, sampled, rounds, topped_up


@dataclass
class Evaluation:
    """Held-out rows (--eval-data), checked and tokenized by the trainer, and how to score them:
    score(rows with `response`, n per prompt) -> metric -> local (numerator, denominator)."""
    rows: list
    prompt_ids: list
    score: Callable[[list, int], dict]


def train(args, info: dist.DistInfo, reward_fn, rows, prompt_ids, generators=None, evaluation=None):
    """The RL run, on the ranks `info` describes (the script's one dist.setup()), over `rows` and
    their tokenized prompts `prompt_ids` (preflight.check_run_inputs has read and checked both).
    `reward_fn(rows, samples)` -> (rewards (N,), counts) where counts maps a
    metric name to a local (numerator, denominator) pair; the loop sums both over ranks, key by
    key, so every rank must return the same keys at every step (decide them from the dataset and
    flags, never from this batch's rows; a key with nothing to count is (0, 0)).
    `generators`: name -> the torch.Generator a reward draws from (a sampling GenRM's), checkpointed.
    `evaluation`: held-out rows scored every --eval-every steps and after the last (add_eval_args).
    Resumes from the newest checkpoint in --out unless --fresh."""
    check_layout(args, info.world_size, len(rows), info.device)
    run = start(args, info, generators)
    metrics_path, tracker = open_log(args, info, run)
    rollout = parallel.RolloutCopy(run.model, info, args.fsdp)     # CPU + DDP: the live policy itself
    sampler = Sampler(rollout.model, run.tok, max_rows=args.rollout_max_rows, cuda_graphs=args.cuda_graphs)
    params = SamplingParams(n=args.group_size, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens)
    cfg = UpdateConfig(temperature=args.temperature, mini_batches=args.mini_batches, micro_tokens=args.micro_tokens,
                       clip_low=args.clip_low, clip_high=args.clip_high, dual_clip=args.dual_clip, loss_agg=args.loss_agg,
                       max_response=args.max_new_tokens, grad_clip=args.grad_clip, kl_coef=args.kl_coef,
                       tis_cap=args.tis_cap, recompute_old=rollout.is_copy)   # the copy is not the trained weights
    collector = Collector(args, info, sampler, params, run.gen, rows, prompt_ids, reward_fn)
    bar = tqdm(range(run.step, args.steps), initial=run.step, total=args.steps, disable=not info.is_main)
    with GracefulStop() as stop:
        for step in bar:
            run.model.eval()
            streams = rank_state(run, generators)                   # as the step starts: what a save of `step` needs
            try:
                batch = collector.collect(step)                     # sample (+ --filter-groups rounds), reward
            except JudgeUnavailable as e:                           # every rank: the judge could not answer
                saved = step == run.step or (args.save_every and step % args.save_every == 0)
                if not saved:
                    save(args, info, run, step, generators, streams)
                raise UserError(f"{e}; step {step + 1} was not taken; {args.out} holds step {step}: run the same "
                                "command to resume once the judge answers") from None
            t1 = time.time()
            lengths = torch.tensor([len(s.token_ids) for s in batch.samples], dtype=torch.float32)
            if args.overlong_buffer:                                # docs/method.md §8
                batch.rewards = batch.rewards + grpo.overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer)
            adv = grpo.group_advantages(batch.rewards, args.group_size)  # docs/method.md §6
            t2 = time.time()
            rollouts = Rollouts([prompt_ids[s.prompt_index] for s in batch.samples],
                                [s.token_ids for s in batch.samples], [s.logprobs for s in batch.samples], adv)
            try:
                stats = ppo_update(run.trained, run.opt, run.sched, rollouts, cfg, info.world_size, run.ref_model)
            except FloatingPointError as e:
                raise SystemExit(f"step {step + 1}: {e}; stopping, the last checkpoint is left as it was")
            rollout.refresh()                                       # once per RL step: the sampler's weights
            stats.update(time_sample=batch.seconds["sample"], time_judge=batch.seconds["judge"] + t2 - t1,
                         time_train=time.time() - t2)
            line = metrics_line(args, info, step, batch, lengths, stats)
            if evaluation is not None and args.eval_every and ((step + 1) % args.eval_every == 0 or
                                                               step + 1 == args.steps):
                line.update(evaluate(args, info, sampler, evaluation))
            if info.is_main:
                log_metrics(metrics_path, line)
                tracker.log(line)
                bar.set_postfix({k: round(line[k], 3) for k in ("accuracy", "fp_ratio") if line.get(k) is not None})
            stopping = stop.should_stop(info.device)
            if step + 1 == args.steps or stopping or (args.save_every and (step + 1) % args.save_every == 0):
                save(args, info, run, step + 1, generators)
            if stopping:
                dist.print0(f"stopped at step {step + 1}; run the same command to resume")
                break
    dist.cleanup()


def start(args, info: dist.DistInfo, generators) -> Run:
    """Model, optimizer and random streams: fresh, or restored from the newest checkpoint in --out."""
    out = Path(args.out)
    try:  # bad model folder, checkpoint or a changed flag: end with the message, not a traceback
        tok = load_tokenizer(args.model, args.trust_remote_code)
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
        seed = args.seed * 1000 + info.rank
        gen = torch.Generator(device=info.device).manual_seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        run = Run(model, trained, ref_model, opt, sched, tok, gen, 0, dict(vars(args)), ckpt)
        if ckpt is not None:
            restore(args, info, run, ckpt, generators)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    return run


def restore(args, info, run: Run, ckpt: Path, generators) -> None:
    """Optimizer, scheduler, RNG states and step from `ckpt`; the weights were loaded from it already."""
    state, rank_state = load_state(ckpt, info.rank)
    check_config(state["config"], run.config, ignore=RESUMABLE + RETIRED, paths=("model", "data", "genrm"))
    # AdamW's moments follow our parameters (fused qkv_proj, gate_up_proj), not the model folder's HF names
    if state.get("params") != [name for name, _ in run.model.named_parameters()]:
        why = "saved before q/k/v and gate/up were fused" if "params" not in state else "saved for other parameters"
        raise ValueError(f"{ckpt}: its optimizer state does not fit this model ({why}); its weights, "
                         f"{ckpt / 'model'}, still load as a --model; pass --fresh to start over")
    if args.fsdp:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
        opt_state = load_sharded(ckpt, {"optimizer": get_optimizer_state_dict(run.model, run.opt)})["optimizer"]
        set_optimizer_state_dict(run.model, run.opt, opt_state)
    else:
        run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    set_rng_state(rank_state["rng"], generators)
    run.gen.set_state(rank_state["sampler_rng"])
    run.step = state["step"]
    if run.step > args.steps:   # else the run would end at once and config.json would say the smaller --steps
        raise UserError(f"--steps {args.steps}: {args.out} is already at step {run.step}; give --steps >= "
                        f"{run.step} to continue it, or --fresh to start over")
    dist.print0(f"resuming from {ckpt} at step {run.step}")


def open_log(args, info, run: Run):
    """Rank 0: config.json, metrics.jsonl cut back to the resumed step, the tracker. -> (path, tracker)"""
    out, tracker = Path(args.out), None
    metrics_path = out / "metrics.jsonl"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run.config, indent=2))
        resumed = run.resumed_from is not None and metrics_path.exists()
        lines = metrics_path.read_text().splitlines(keepends=True)[:run.step] if resumed else []
        metrics_path.write_text("".join(lines))                # drop lines logged after the checkpoint
        tracker = tracking.start(args.report_to, out, run.config, resumed_at=run.step)
    dist.barrier()
    return metrics_path, tracker


class Collector:
    """Sampling and reward for one step on this rank: collect(step) -> Batch.

    Round 0 is the step's own batch of prompts. With --filter-groups (DAPO's dynamic sampling)
    groups whose rewards are all equal are dropped and more prompts are sampled, from a stream
    with another seed per round, until every rank has its batch or --filter-max-rounds is
    reached; then equal-reward groups fill it up. The reward_fn's counts cover every sampled
    rollout."""

    def __init__(self, args, info, sampler, params, gen, rows, prompt_ids, reward_fn):
        self.args, self.info, self.sampler, self.params, self.gen = args, info, sampler, params, gen
        self.rows, self.prompt_ids, self.reward_fn = rows, prompt_ids, reward_fn

    def sample(self, step: int, round_: int, seconds: dict):
        """This rank's prompts of one round -> (samples, rewards (N,), counts)."""
        a = self.args
        idx = shard(batch_indices(len(self.rows), a.prompts_per_step, step, a.seed + 1_000_003 * round_),
                    self.info.rank, self.info.world_size)
        t0 = time.time()
        samples = self.sampler.generate([self.prompt_ids[i] for i in idx], self.params, generator=self.gen)
        t1 = time.time()
        failed = None
        try:
            rewards, counts = self.reward_fn([self.rows[i] for i in idx], samples)    # (N,), group after group
        except JudgeUnavailable as e:           # a served judge that stays unreachable
            failed = e
        if all_reduce_sum(torch.tensor([float(failed is not None)], device=self.info.device)).item():
            raise failed or JudgeUnavailable("another rank's judge failed (its error line says why)")
        seconds["sample"] += t1 - t0
        seconds["judge"] += time.time() - t1
        for s in samples:
            s.prompt_index = idx[s.prompt_index]                                   # now a row index
        return samples, torch.as_tensor(rewards, dtype=torch.float32), counts

    def collect(self, step: int) -> Batch:
        seconds = {"sample": 0.0, "judge": 0.0}
        samples, rewards, counts = self.sample(step, 0, seconds)
        if not self.args.filter_groups:
            return Batch(samples, rewards, counts, seconds)
        n, need = self.args.group_size, len(samples) // self.args.group_size
        kept, dropped, rounds, sampled = [], [], 1, need           # groups: (samples, rewards)
        while True:
            same = grpo.equal_reward_groups(rewards, n).tolist()
            for g, equal in enumerate(same):
                (dropped if equal else kept).append((samples[g * n:(g + 1) * n], rewards[g * n:(g + 1) * n]))
            short = torch.tensor([float(len(kept) < need)], device=self.info.device)
            if all_reduce_sum(short).item() == 0 or rounds == self.args.filter_max_rounds:
                break
            rounds += 1
            samples, rewards = [], torch.zeros(0)                  # a full rank waits for the others
            if len(kept) < need:
                samples, rewards, more = self.sample(step, rounds - 1, seconds)
                sampled += len(samples) // n
                for k, (num, den) in more.items():
                    counts[k] = (counts[k][0] + num, counts[k][1] + den)
        topped_up = max(0, need - len(kept))
        groups = kept[:need] + dropped[:topped_up]                 # at the cap: equal-reward groups fill up
        return Batch([s for grp, _ in groups for s in grp], torch.cat([r for _, r in groups]), counts, seconds,
                     dict(kept=min(len(kept), need), sampled=sampled, rounds=rounds, topped_up=topped_up))


def metrics_line(args, info, step: int, batch: Batch, lengths, stats: dict) -> dict:
    """One metrics.jsonl line: the counts summed over ranks (numerator / denominator, None when
    nothing was counted), the longest response, the update's stats and timings, the filter's work."""
    counts = dict(batch.counts)
    counts.update(reward=(batch.rewards.sum().item(), len(batch.rewards)),
                  response_len=(lengths.sum().item(), len(lengths)),
                  truncated=(sum(s.finish_reason == "length" for s in batch.samples), len(batch.samples)),
                  zero_var_groups=(grpo.equal_reward_groups(batch.rewards, args.group_size).sum().item(),
                                   len(batch.rewards) // args.group_size))
    line = {"step": step + 1, **sum_over_ranks(counts, info),
            "response_len_max": all_reduce_max(lengths.max().item(), info), **stats}
    if batch.filter is not None:                                   # what the step trained on, summed over ranks
        f = batch.filter
        kept, sampled, topped_up = all_reduce_sum(torch.tensor([float(f[k]) for k in ("kept", "sampled", "topped_up")],
                                                               device=info.device)).tolist()
        line.update(kept_groups=int(kept), sampled_groups=int(sampled),
                    sampling_rounds=int(all_reduce_max(float(f["rounds"]), info)), filter_cap_hit=int(topped_up > 0))
        if topped_up:
            dist.print0(f"step {step + 1}: --filter-max-rounds {args.filter_max_rounds} reached with "
                        f"{int(kept)} of {args.prompts_per_step} mixed-reward groups; "
                        f"{int(topped_up)} equal-reward groups fill the batch")
    if info.device.type == "cuda":                                  # policy + GenRM + optimizer + activations
        line["max_memory_gb"] = torch.cuda.max_memory_allocated(info.device) / 2**30
    return line


def evaluate(args, info, sampler, ev: Evaluation) -> dict:
    """The live policy on the held-out rows: each rank samples its strided share, --eval-n per
    prompt, from a generator seeded the same at every evaluation (--seed + rank: on one rank these
    are rollout.py's draws with --seed and a --batch-size that takes every row in one call), and the
    counts are summed over ranks. -> {"eval/<metric>": value}"""
    t0 = time.time()
    idx = list(range(info.rank, len(ev.rows), info.world_size))
    params = SamplingParams(n=args.eval_n, temperature=args.eval_temperature, top_p=args.eval_top_p,
                            max_new_tokens=args.max_new_tokens)
    gen = torch.Generator(device=info.device).manual_seed(args.seed + info.rank)
    samples = sampler.generate([ev.prompt_ids[i] for i in idx], params, generator=gen) if idx else []
    counts = ev.score([dict(ev.rows[idx[s.prompt_index]], response=s.text) for s in samples], args.eval_n)
    counts["response_len"] = (sum(len(s.token_ids) for s in samples), len(samples))
    return {f"eval/{k}": v for k, v in sum_over_ranks(counts, info).items()} | {"time_eval": time.time() - t0}


def sum_over_ranks(counts: dict, info) -> dict:
    """metric -> (numerator, denominator) on each rank -> metric -> sum of numerators / sum of
    denominators (None where nothing was counted). Every rank must pass the same keys."""
    keys = sorted(counts)
    totals = all_reduce_sum(torch.tensor([x for k in keys for x in counts[k]], dtype=torch.float64,
                                         device=info.device)).tolist()
    return {k: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None for i, k in enumerate(keys)}


def all_reduce_max(x: float, info) -> float:
    t = torch.tensor([x], device=info.device)
    if info.world_size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def rank_state(run: Run, generators) -> dict:
    """Every random stream this rank draws from: Python, NumPy, torch, the sampler's and `generators`."""
    return {"rng": rng_state(generators), "sampler_rng": run.gen.get_state()}


def save(args, info, run: Run, step: int, generators, streams: dict | None = None) -> None:
    """A checkpoint of `step` (fapo_mini/checkpoint.py): the HF model folder, optimizer (DCP-sharded
    under FSDP2), scheduler, step, config, and every rank's random streams (`streams`: taken
    earlier, by rank_state; default: now)."""
    full = parallel.full_state_dict(run.trained)                   # FSDP2: gathered on rank 0 (a collective)

    def export(folder):                                            # an HF folder, generation_config.json kept
        exported = parallel.model_from_state_dict(run.model.cfg, full)
        exported.generation_config = run.model.generation_config
        save_model(exported, folder, run.tok)

    state, sharded = {"scheduler": run.sched.state_dict(), "step": step, "config": run.config}, None
    state["params"] = [name for name, _ in run.model.named_parameters()]   # the optimizer's layout (restore checks)
    if args.fsdp:                                                  # each rank writes its shard of AdamW (DCP)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        sharded = {"optimizer": get_optimizer_state_dict(run.model, run.opt)}
    else:
        state["optimizer"] = run.opt.state_dict()
    save_checkpoint(args.out, step, export, state, streams or rank_state(run, generators), info, args.keep,
                    sharded=sharded)


def log_metrics(metrics_path: Path, line: dict) -> None:
    """Every metrics line goes through here (rank 0 only): one JSON object per step."""
    with open(metrics_path, "a") as f:
        f.write(json.dumps(line) + "\n")
