"""GRPO with the FAPO reward penalty: rewards, group advantages, the clipped loss, aggregation.

Why this file exists: everything between "this rollout was right / wrong / flawed" and
"a scalar to call .backward() on" is a handful of tensor formulas. Keeping them here as
pure functions (no model, no process group) lets a reader check each against the paper
and lets the tests check each against a hand computation.

One policy step, in order:
  fapo_rewards      +1 / -1, minus lambda for a flawed positive       (§4; paper Eq. 8)
  overlong_penalty  DAPO's soft length penalty, added to the reward   (§8)
  group_advantages  (r - mean_g) / (std_g + eps), one per rollout      (§6, §8; paper Eq. 1)
  clipped_loss      PPO clip with clip-higher and dual-clip, per token (§6; paper Eq. 3)
  kl_k3             optional k3 KL to a reference policy, per token (FAPO runs without it)
  aggregate         this micro-batch's share of the mini-batch loss   (§6, §8; paper Eqs. 2-3)
The section numbers are those of docs/method.md, which derives each formula.

Why the loss is near zero on the first mini-batch (do not be alarmed): on-policy, the
first update sees logp == old_logp, so every ratio is 1 and the per-token loss is just
-A_i. Advantages are zero-mean inside each group, so the token-mean loss
-sum_i A_i L_i / sum_i L_i is exactly zero when all rollouts of a group have the same
length L_i, and small otherwise. The *gradient* -A_i * grad(logp) is not zero: the loss
value of on-policy GRPO says little about progress; watch reward, clip fraction and KL.

Simplified away: verl's registry of loss variants (only the PPO clip FAPO uses is here),
token-level rewards (FAPO's reward is one scalar per rollout), padded (B, T) layouts
(everything is packed: T tokens of many sequences end to end, with `seq_index`).
"""

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def fapo_rewards(correct, flawed, lam=1.0):
    """Outcome reward with the FAPO penalty, (N,) float32.

    correct, flawed: (N,) bool. A flawed verdict on a wrong rollout is ignored (only
    correct rollouts go to the GenRM). lam=0 is plain GRPO.
    Example: correct=[T, T, F], flawed=[F, T, T], lam=1 -> [1., 0., -1.]
    """
    correct, flawed = torch.as_tensor(correct), torch.as_tensor(flawed)
    assert correct.shape == flawed.shape, (correct.shape, flawed.shape)
    outcome = torch.where(correct, 1.0, -1.0)
    # docs/method.md §4 (paper §3.2, Eq. 8): r = (+1 if correct else -1) - lambda * [correct and flawed]
    return (outcome - lam * (correct & flawed).float()).float()


def overlong_penalty(lengths, max_len, buffer):
    """DAPO's overlong reward shaping, (N,) float32 in [-1, 0] for lengths <= max_len.

    Zero up to max_len - buffer tokens, then falls linearly to -1 at max_len.
    Example: max_len=10, buffer=4, lengths=[5, 6, 8, 10] -> [0., 0., -0.5, -1.]
    """
    lengths = torch.as_tensor(lengths, dtype=torch.float32)
    # docs/method.md §8, DAPO's soft overlong punishment: R_length = min(-(L - (L_max - B)) / B, 0)
    return torch.clamp(-(lengths - (max_len - buffer)) / buffer, max=0.0)


def equal_reward_groups(rewards, group_size):
    """(G,) bool: True where every reward of the group is the same (a group with no signal).

    rewards: (N,), laid out group after group. Exact float equality, not a std below a
    tolerance (see group_advantages). A group of one is all-equal.
    Example: rewards=[1, 1, 0, -1, -1, -1], group_size=3 -> [False, True]
    """
    r = torch.as_tensor(rewards).view(-1, group_size)  # (G, n)
    return (r == r[:, :1]).all(dim=1)


def group_advantages(rewards, group_size, eps=1e-6):
    """GRPO advantages, (N,) float32; rewards laid out group after group.

    Std is UNBIASED (N-1, as torch.std and verl). A group whose rewards are all equal gets
    exactly 0 everywhere, by an explicit test rather than 0 / eps: for a reward float32
    cannot hold exactly (2/3, 1 - 0.3) the group mean is off by an ulp, std is ~1e-8 and
    (r - mean) / (std + eps) would be a spurious same-sign advantage of a few percent.
    A group of one gets 0: with nothing to compare against there is no signal (verl
    instead uses mean 0, std 1 there, i.e. A = r / (1 + eps)).
    Example: rewards=[1, -1, -1, 0, 0, 0], group_size=3
      group 1: mean -1/3, std 1.1547 -> [1.1547, -0.5774, -0.5774]; group 2 -> [0, 0, 0]
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, (tuple(rewards.shape), group_size)
    if group_size == 1:  # all-equal too, but its std would be nan (and warn)
        return torch.zeros_like(rewards)
    r = rewards.view(-1, group_size)  # (G, n)
    # docs/method.md §6 (paper §2.1, Eq. 1): A_i = (r_i - mean_g) / (std_g + eps), std unbiased
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)  # (G, n)
    same = equal_reward_groups(rewards, group_size)[:, None]  # (G, 1): no signal in this group
    return torch.where(same, 0.0, adv).view(-1)


def clipped_loss(logp, old_logp, adv, eps_low=0.2, eps_high=0.28, dual_clip=10.0, log_ratio_clamp=20.0):
    """PPO clipped surrogate with clip-higher (DAPO) and dual-clip, per token, no reduction.

    logp: (T,) current log-probs (carry the gradient); old_logp: (T,) log-probs of the policy
    that sampled; adv: (T,) the rollout's advantage broadcast to its tokens.
    Returns (loss (T,), stats) with stats, all detached (T,):
      ratio         pi / pi_old after the log-ratio clamp
      clipped       the PPO clip is the active branch (ratio left [1-eps_low, 1+eps_high]
                    in the direction the advantage pushes: no gradient)
      dual_clipped  A < 0 and the loss hit its cap -A * dual_clip (no gradient)
    Examples (defaults): A=1, ratio=1.5 -> -1.28; A=-1, ratio=0.5 -> 0.8; A=-1, ratio=20 -> 10.
    """
    assert logp.shape == old_logp.shape == adv.shape, (logp.shape, old_logp.shape, adv.shape)
    log_ratio = torch.clamp(logp - old_logp, -log_ratio_clamp, log_ratio_clamp)  # (T,) for stability
    ratio = torch.exp(log_ratio)
    # docs/method.md §6 (paper §2.1, Eq. 3), PPO clip with clip-higher: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    # docs/method.md §6, dual-clip (Ye et al. 2020, arXiv 1912.09729): for A < 0, min(loss, -A c)
    loss_cap = -adv * dual_clip
    loss = torch.where(adv < 0, torch.minimum(loss, loss_cap), loss)
    stats = {
        "ratio": ratio.detach(),
        "clipped": (loss_clipped > loss_unclipped).detach(),
        "dual_clipped": ((adv < 0) & (loss_unclipped > loss_cap)).detach(),
    }
    return loss, stats


def kl_k3(logp, ref_logp):
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman 2020), (T,), always >= 0.

    Clamped as verl does: log-ratio to [-20, 20], the estimate to at most 10.
    """
    assert logp.shape == ref_logp.shape, (logp.shape, ref_logp.shape)
    d = torch.clamp(ref_logp - logp, -20.0, 20.0)  # (T,)
    # docs/method.md §6, k3: exp(ref - logp) - (ref - logp) - 1
    return torch.clamp(torch.exp(d) - d - 1, max=10.0)


def loss_denominator(mode, n_tokens, n_seqs):
    """The GLOBAL normaliser of `mode` for one mini-batch (all micro-batches, all ranks).

    The caller sums n_tokens / n_seqs over its micro-batches and all-reduces them once per
    optimizer step; `aggregate` then divides by this single number everywhere.
    """
    denom = n_tokens if mode == "token-mean" else n_seqs
    assert denom > 0, f"an empty mini-batch: {mode} denominator {denom}"
    return denom


def aggregate(per_token, seq_index, mode, denom, max_len=None):
    """This micro-batch's share of the mini-batch loss (a scalar).

    per_token: (T,) packed losses; seq_index: (T,) long, the sequence (0..S-1, local to this
    micro-batch) of each token; denom: `loss_denominator(...)` of the whole mini-batch.
    A sequence never straddles micro-batches, so per-sequence sums are complete here and
    only the normaliser is global. Summing this over micro-batches and ranks gives the
    mini-batch loss exactly. Under DDP, which AVERAGES gradients over W ranks, the caller
    multiplies by W (or divides denom by W) to undo it.
      token-mean               sum_t l_t / N_tokens                        (DAPO; paper Eq. 3)
      seq-mean-token-mean      sum_s mean_{t in s} l_t / N_seqs             (GRPO; paper Eq. 2)
      seq-mean-token-sum-norm  sum_s (sum_{t in s} l_t / max_len) / N_seqs  (Dr. GRPO)
    Example: per_token=[1, 2, 3], seq_index=[0, 0, 1], denom of the whole batch 6 tokens
      -> token-mean 1.0; with 4 sequences in the batch, seq-mean-token-mean (1.5 + 3) / 4.
    """
    assert per_token.dim() == 1 and per_token.shape == seq_index.shape, (per_token.shape, seq_index.shape)
    if mode == "token-mean":
        return per_token.sum() / denom
    n_local = int(seq_index.max()) + 1 if seq_index.numel() else 0
    seq_sum = per_token.new_zeros(n_local).index_add(0, seq_index, per_token)  # (S,)
    if mode == "seq-mean-token-mean":
        seq_len = torch.bincount(seq_index, minlength=n_local).clamp(min=1)  # (S,)
        return (seq_sum / seq_len).sum() / denom
    return (seq_sum / max_len).sum() / denom  # seq-mean-token-sum-norm
