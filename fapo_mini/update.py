"""One GRPO update on a batch of rollouts: the piece train_policy.py and train_genrm.py share.

Why this file exists: the policy and the GenRM are both trained with GRPO; they differ
only in how a rollout is rewarded. Everything after the advantages (packing, PPO
mini-batches, micro-batches with gradient accumulation, the global token-mean
normaliser, DDP / FSDP2, clipping, metrics) lives here once. The run loop around it
(sampling, rewards, logging, checkpoints) is rl.py.

    rollouts --pack--> (T,) packed tokens --forward--> log-probs of response tokens
             --grpo.clipped_loss--> per-token loss --grpo.aggregate--> backward
    (pack_pairs, the packing itself, is shared with the supervised warm start, sft.py)

The DDP trick (nanoGPT style): only the last micro-batch of a mini-batch syncs
gradients (`no_sync` on the others), and DDP *averages* gradients over ranks. Our
loss is already divided by the GLOBAL token count (all-reduced once per mini-batch),
so each rank multiplies its loss by world_size to turn DDP's average back into a sum.
FSDP2 also averages (its reduce-scatter), so the same factor holds; it reduce-scatters
after every micro-batch, so there every rank runs the same number of micro-batches.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fapo_mini import grpo
from fapo_mini.dist import all_reduce_sum
from fapo_mini.parallel import is_dtensor, is_fsdp, unwrap


@dataclass
class Rollouts:
    """This rank's rollouts of one step, group after group (n per prompt)."""
    prompt_ids: list          # list[list[int]], one per rollout
    response_ids: list        # list[list[int]]
    old_logp: list            # list[list[float]], PPO's old log-probs: the sampler's, or the trainer's (recompute)
    advantages: torch.Tensor  # (N,)
    sampler_logp: list | None = None   # the sampler's, where old_logp was recomputed by the trainer


@dataclass
class UpdateConfig:
    temperature: float = 1.0          # the rollout temperature: log-probs are of logits / T
    mini_batches: int = 1             # optimizer steps per RL step (the LR schedule steps once per RL step)
    micro_tokens: int = 4096          # max packed tokens per forward
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 10.0
    loss_agg: str = "token-mean"
    max_response: int = 0             # for seq-mean-token-sum-norm
    grad_clip: float = 1.0
    kl_coef: float = 0.0
    recompute_old: bool = False       # old log-probs by the trained model (the rollout copy differs from it)
    tis_cap: float = 0.0              # truncated importance sampling against the sampler, capped (0 = off)


def pack_pairs(pairs, device):
    """(prompt_ids, response_ids) pairs -> one packed forward's tensors, sequences end to end:
      ids, pos  (T,)    tokens, and positions counted from each sequence's start
      cu        (B+1,)  int32 sequence boundaries (cu_seqlens); max_len: the longest sequence
      nxt       (T,)    the token after each position, 0 after a sequence's last (nothing follows)
      sel       (T_r,)  the positions whose NEXT token is a response token: the only ones scored,
                        so a response is predicted from its prompt's last token on, never the prompt
      seq       (T_r,)  the pair (0..B-1) each scored position belongs to
    Example: [([5, 6], [7, 8]), ([9], [3])] -> ids [5, 6, 7, 8, 9, 3], pos [0, 1, 2, 3, 0, 1],
      cu [0, 4, 6], max_len 4, nxt [6, 7, 8, 0, 3, 0], sel [1, 2, 4], seq [0, 0, 1].
    """
    ids, pos, nxt, sel, seq, lens = [], [], [], [], [], []
    for j, (p, r) in enumerate(pairs):
        s = p + r
        sel += range(len(ids) + len(p) - 1, len(ids) + len(s) - 1)
        ids += s
        pos += range(len(s))
        nxt += s[1:] + [0]
        seq += [j] * len(r)
        lens.append(len(s))
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    cu = torch.nn.functional.pad(t(lens).cumsum(0), (1, 0)).to(torch.int32)
    return dict(ids=t(ids), pos=t(pos), cu=cu, max_len=max(lens), nxt=t(nxt), sel=t(sel), seq=t(seq))


def pack(rollouts: Rollouts, idx, device):
    """Rollouts idx -> pack_pairs' tensors plus, per scored position (T_r,), the sampled token `tgt`,
    PPO's old log-prob of it `old`, the sampler's `sampler` (the same tensor unless `old` was
    recomputed) and the rollout's advantage `adv`."""
    idx = list(idx)
    b = pack_pairs([(rollouts.prompt_ids[i], rollouts.response_ids[i]) for i in idx], device)
    b["tgt"] = b["nxt"][b["sel"]]
    cat = lambda logps: torch.cat([torch.as_tensor(logps[i], dtype=torch.float32) for i in idx]).to(device)
    b["old"] = cat(rollouts.old_logp)
    b["sampler"] = b["old"] if rollouts.sampler_logp is None else cat(rollouts.sampler_logp)
    b["adv"] = torch.tensor([float(rollouts.advantages[i]) for i in idx], dtype=torch.float32, device=device)[b["seq"]]
    return b


def micro_batches(idx, rollouts: Rollouts, max_tokens, at_least=1):
    """Split rollout indices into consecutive chunks of at most max_tokens packed tokens;
    then, while there are fewer than `at_least` chunks, halve the longest one (FSDP2: every
    rank must run as many forwards as the rank with the most)."""
    out, cur, n = [], [], 0
    for i in idx:
        L = len(rollouts.prompt_ids[i]) + len(rollouts.response_ids[i])
        if cur and n + L > max_tokens:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += L
    out.append(cur)
    while len(out) < at_least:
        k = max(range(len(out)), key=lambda j: len(out[j]))
        if len(out[k]) < 2:
            raise ValueError(f"cannot split {len(idx)} rollouts into {at_least} micro-batches")
        half = len(out[k]) // 2
        out[k:k + 1] = [out[k][:half], out[k][half:]]
    return out


def response_logprobs(model, batch, temperature, with_entropy=False):
    hidden = model(batch["ids"], batch["pos"], batch["cu"], batch["max_len"])   # (T, C), through DDP / FSDP2
    return unwrap(model).token_logprobs(hidden[batch["sel"]], batch["tgt"], temperature, with_entropy=with_entropy)


@torch.no_grad()
def trainer_old_logp(model, rollouts: Rollouts, plan, temperature, autocast) -> Rollouts:
    """PPO's old log-probs as the trained model computes them, before the update (docs/method.md §8).

    The sampler's model is a bf16 copy on GPU and under FSDP2: its log-probs differ from the
    trainer's by numeric noise, and a ratio taken against them starts away from 1, so the clip
    would act on noise. Recomputed with the update's own packing (`plan`: every mini-batch's
    micro-batches), the first mini-batch's ratio is exactly 1. The sampler's log-probs are kept
    (sampler_logp): their gap is logged and truncated importance sampling reads them."""
    old = list(rollouts.old_logp)
    for _, micros in plan:
        for mi in micros:
            batch = pack(rollouts, mi, batch_device(model))
            with autocast:
                logp = response_logprobs(model, batch, temperature).float()
            for i, lp in zip(mi, logp.split([len(rollouts.response_ids[i]) for i in mi])):
                old[i] = lp
    return Rollouts(rollouts.prompt_ids, rollouts.response_ids, old, rollouts.advantages, rollouts.old_logp)


def batch_device(model):
    return next(model.parameters()).device


# token-summed statistics of one update, all-reduced once at the end
SUMS = ("clipped",          # tokens whose ratio was clipped
        "kl_to_sampler",    # k3 KL(sampler || trainer)
        "entropy",          # the trainer's entropy
        "logp_gap",         # |old - sampler| log-prob where old was recomputed (every token), else
                            # |trainer - sampler| over the first mini-batch (before any step)
        "tokens",           # response tokens
        "tokens_first")     # response tokens of the first mini-batch


def ppo_update(model, optimizer, scheduler, rollouts: Rollouts, cfg: UpdateConfig, world_size=1,
               ref_model=None, generator=None):
    """PPO/GRPO update over this rank's rollouts (one RL step): `cfg.mini_batches` optimizer steps,
    then one step of `scheduler`, so a warm-up counts RL steps whatever the mini-batch count (as verl
    steps its scheduler once per actor update). `model` may be DDP-wrapped or FSDP2-sharded. Returns
    metrics averaged over all ranks; `lr` is the rate this update's optimizer steps used."""
    device = batch_device(model)
    N = len(rollouts.response_ids)
    assert N % cfg.mini_batches == 0, "preflight.check_layout: --mini-batches divides a rank's rollouts"
    order = torch.randperm(N, generator=generator).tolist()
    mb_size = N // cfg.mini_batches
    ac = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()
    plan = []                                      # (rollouts, micro-batches) of every mini-batch
    for m in range(cfg.mini_batches):
        idx = order[m * mb_size:(m + 1) * mb_size]
        micros = micro_batches(idx, rollouts, cfg.micro_tokens)
        if is_fsdp(model):                         # every rank: as many forwards as the rank with the most
            n_micro = torch.tensor([float(len(micros))], device=device)
            if world_size > 1:
                torch.distributed.all_reduce(n_micro, op=torch.distributed.ReduceOp.MAX)
            micros = micro_batches(idx, rollouts, cfg.micro_tokens, at_least=int(n_micro.item()))
        plan.append((idx, micros))
    if cfg.recompute_old:
        rollouts = trainer_old_logp(model, rollouts, plan, cfg.temperature, ac)
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in SUMS}
    gap_max = torch.zeros((), device=device)
    grad_norms = []
    lr = optimizer.param_groups[0]["lr"]                                  # this RL step's rate, all mini-batches
    model.train()
    for m, (idx, micros) in enumerate(plan):
        counts = torch.tensor([sum(len(rollouts.response_ids[i]) for i in idx), len(idx)], dtype=torch.float64,
                              device=device)
        n_tok, n_seq = all_reduce_sum(counts).tolist()                      # global, once per optimizer step
        denom = grpo.loss_denominator(cfg.loss_agg, n_tok, n_seq)
        for k, mi in enumerate(micros):
            batch = pack(rollouts, mi, device)
            sync = k == len(micros) - 1 or not hasattr(model, "no_sync")
            with nullcontext() if sync else model.no_sync():                 # only the last micro-batch syncs
                with ac:
                    logp, ent = response_logprobs(model, batch, cfg.temperature, with_entropy=True)
                    per_tok, clip_stats = grpo.clipped_loss(logp, batch["old"], batch["adv"], cfg.clip_low,
                                                            cfg.clip_high, cfg.dual_clip)
                    if cfg.tis_cap:                # docs/method.md §8: truncated IS, old policy / sampler, capped
                        per_tok = per_tok * torch.exp(batch["old"] - batch["sampler"]).clamp(max=cfg.tis_cap)
                    if ref_model is not None:
                        with torch.no_grad():
                            ref = response_logprobs(ref_model, batch, cfg.temperature)
                        per_tok = per_tok + cfg.kl_coef * grpo.kl_k3(logp, ref)   # k3 KL penalty in the loss
                    loss = grpo.aggregate(per_tok, batch["seq"], cfg.loss_agg, denom, cfg.max_response) * world_size
                loss.backward()
            # the rollout-vs-trainer gap: old - sampler over every token where old was recomputed,
            # else trainer - sampler over the first mini-batch, before any step
            first = m == 0 or cfg.recompute_old
            gap = (batch["old"] if cfg.recompute_old else logp.detach()) - batch["sampler"]
            sums["clipped"] += clip_stats["clipped"].sum().double()
            sums["kl_to_sampler"] += grpo.kl_k3(batch["sampler"], logp.detach()).sum().double()
            sums["entropy"] += ent.sum().double()
            sums["logp_gap"] += (gap.abs().sum() if first else gap.new_zeros(())).double()
            sums["tokens"] += float(len(logp))
            sums["tokens_first"] += float(len(logp)) if first else 0.0
            if first and len(gap):
                gap_max = torch.maximum(gap_max, gap.abs().max())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if is_dtensor(grad_norm):                                    # FSDP2: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        grad_norms.append(grad_norm.item())
        if not math.isfinite(grad_norms[-1]):
            raise FloatingPointError(f"grad norm is {grad_norms[-1]}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scheduler.step()                                                      # once per RL step: the next step's rate
    total = dict(zip(SUMS, all_reduce_sum(torch.stack([sums[k] for k in SUMS])).tolist()))
    if world_size > 1:
        torch.distributed.all_reduce(gap_max, op=torch.distributed.ReduceOp.MAX)
    return {"clip_frac": total["clipped"] / total["tokens"], "kl_to_sampler": total["kl_to_sampler"] / total["tokens"],
            "entropy": total["entropy"] / total["tokens"], "logp_gap": total["logp_gap"] / max(total["tokens_first"], 1),
            "logp_gap_max": gap_max.item(), "grad_norm": sum(grad_norms) / len(grad_norms), "lr": lr}


def make_optimizer(model, lr, warmup_steps, weight_decay=0.1):
    """AdamW with linear warm-up then a constant rate (docs/method.md §6; paper App. B, Table 1).
    The warm-up counts RL steps (ppo_update steps the scheduler once): RL step s (0-based) runs
    at lr * min(1, (s + 1) / warmup_steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    return opt, sched
