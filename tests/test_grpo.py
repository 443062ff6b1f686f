"""Tests for fapo_mini/grpo.py: every formula against a hand value or a plain loop."""

import math
import random
import statistics

import pytest
import torch

from fapo_mini.grpo import (
    aggregate,
    clipped_loss,
    equal_reward_groups,
    fapo_rewards,
    group_advantages,
    kl_k3,
    loss_denominator,
    overlong_penalty,
)

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ----------------------------------------------------------------------------- advantages

def loop_advantages(rewards, group_size, eps=1e-6):
    """Reference: one group at a time, with Python's statistics module (unbiased stdev)."""
    out = []
    for g in range(0, len(rewards), group_size):
        grp = rewards[g:g + group_size]
        if len(grp) == 1:
            out.append(0.0)
            continue
        mean, std = statistics.fmean(grp), statistics.stdev(grp)
        out.extend((r - mean) / (std + eps) for r in grp)
    return out


@pytest.mark.parametrize("group_size", [1, 2, 3, 8, 16])
def test_group_advantages_match_loop(group_size):
    rng = random.Random(group_size)
    rewards = []
    for g in range(12):
        if g % 3 == 0:  # zero-variance group: all right, all wrong, or all flawed
            rewards += [rng.choice([1.0, -1.0, 0.0])] * group_size
        else:
            rewards += [rng.choice([1.0, -1.0, 0.0]) + rng.uniform(-0.5, 0.0) for _ in range(group_size)]
    got = group_advantages(torch.tensor(rewards), group_size)
    want = torch.tensor(loop_advantages(rewards, group_size))
    assert got.dtype == torch.float32 and got.shape == (len(rewards),)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # zero-variance groups get exactly 0
    for g in range(0, 12, 3):
        assert torch.all(got[g * group_size:(g + 1) * group_size] == 0)


def test_group_advantages_hand_values():
    got = group_advantages([1.0, -1.0, -1.0, 0.0, 0.0, 0.0], 3)
    s = math.sqrt(4 / 3)  # unbiased std of [1, -1, -1]
    want = torch.tensor([(4 / 3) / s, (-2 / 3) / s, (-2 / 3) / s, 0.0, 0.0, 0.0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", [2 / 3, 1 - 0.3, 1 - 0.7, 1 - 0.9, 0.1])
@pytest.mark.parametrize("group_size", [3, 5, 7, 16])
def test_equal_rewards_float32_cannot_hold_get_zero_advantage(value, group_size):
    # A GenRM step reward of 2/3 or a flawed positive at lam 0.3 is not a float32 number;
    # the float32 mean of such a group is an ulp away from its members, and 0 / (std + eps)
    # turned that into a same-sign advantage of up to ~0.06 before the explicit test.
    r = torch.tensor([value] * group_size, dtype=torch.float32)
    got = group_advantages(torch.cat([r, torch.tensor([1.0] + [-1.0] * (group_size - 1))]), group_size)
    assert torch.all(got[:group_size] == 0)
    # the mixed group beside it is untouched
    want = loop_advantages([1.0] + [-1.0] * (group_size - 1), group_size)
    torch.testing.assert_close(got[group_size:], torch.tensor(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group_size", [1, 2, 3, 8])
def test_equal_reward_groups_match_loop(group_size):
    rng = random.Random(group_size)
    values = [1.0, -1.0, 0.0, 2 / 3, 1 - 0.3]
    rewards = []
    for g in range(20):
        if g % 2:  # all equal, including values float32 cannot hold
            rewards += [rng.choice(values)] * group_size
        else:
            rewards += [rng.choice(values) for _ in range(group_size)]
    r32 = torch.tensor(rewards, dtype=torch.float32)
    want = [len(set(r32[g:g + group_size].tolist())) == 1 for g in range(0, len(rewards), group_size)]
    got = equal_reward_groups(r32, group_size)
    assert got.dtype == torch.bool and got.tolist() == want
    assert sum(want) >= 10 and (group_size == 1 or not all(want))  # both kinds occur
    assert equal_reward_groups([1, 1, 0, -1, -1, -1], 3).tolist() == [False, True]  # the docstring's example


# ----------------------------------------------------------------------------- rewards

def test_fapo_rewards_table():
    correct = torch.tensor([True, True, False, False])
    flawed = torch.tensor([False, True, False, True])
    assert fapo_rewards(correct, flawed).tolist() == [1.0, 0.0, -1.0, -1.0]
    assert fapo_rewards(correct, flawed, lam=0.0).tolist() == [1.0, 1.0, -1.0, -1.0]
    assert fapo_rewards(correct, flawed, lam=0.5).tolist() == [1.0, 0.5, -1.0, -1.0]
    assert fapo_rewards([True], [True], lam=2.0).tolist() == [-1.0]
    assert fapo_rewards(correct, flawed).dtype == torch.float32


def test_overlong_penalty_hand_values():
    got = overlong_penalty(torch.tensor([0, 5, 6, 7, 8, 10]), max_len=10, buffer=4)
    assert got.tolist() == [0.0, 0.0, 0.0, -0.25, -0.5, -1.0]
    # FAPO's setting: 8192 max, 4096 buffer -> penalty starts after 4096 tokens
    got = overlong_penalty([4096, 6144, 8192], max_len=8192, buffer=4096)
    assert got.tolist() == [0.0, -0.5, -1.0]


# ----------------------------------------------------------------------------- clipped loss

# (advantage, ratio, loss, d loss / d logp, clipped, dual_clipped); eps_low 0.2, eps_high 0.28, c 10
CLIP_CASES = [
    (1.0, 1.1, -1.1, -1.1, False, False),    # A > 0, inside the range: -A r
    (1.0, 1.5, -1.28, 0.0, True, False),     # A > 0, above 1 + eps_high: clipped, no gradient
    (1.0, 0.5, -0.5, -0.5, False, False),    # A > 0, below 1 - eps_low: PPO keeps -A r (pessimistic)
    (-1.0, 1.1, 1.1, 1.1, False, False),     # A < 0, inside
    (-1.0, 0.5, 0.8, 0.0, True, False),      # A < 0, below 1 - eps_low: clipped
    (-1.0, 2.0, 2.0, 2.0, False, False),     # A < 0, above the range but under the dual cap
    (-1.0, 20.0, 10.0, 0.0, False, True),    # A < 0, dual-clip: loss capped at -A c
    (-0.5, 30.0, 5.0, 0.0, False, True),
    (2.0, 20.0, -2.56, 0.0, True, False),    # dual-clip never applies to A > 0
    (0.0, 3.0, 0.0, 0.0, False, False),
]


def test_clipped_loss_hand_values():
    adv = torch.tensor([c[0] for c in CLIP_CASES], dtype=torch.float64)
    ratio = torch.tensor([c[1] for c in CLIP_CASES], dtype=torch.float64)
    old_logp = torch.full_like(adv, -2.0)
    logp = (old_logp + ratio.log()).requires_grad_()
    loss, stats = clipped_loss(logp, old_logp, adv)
    loss.sum().backward()
    want = torch.tensor([c[2] for c in CLIP_CASES], dtype=torch.float64)
    want_grad = torch.tensor([c[3] for c in CLIP_CASES], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logp.grad, want_grad, atol=1e-12, rtol=1e-12)  # d(-A r)/dlogp = -A r
    torch.testing.assert_close(stats["ratio"], ratio)
    assert stats["clipped"].tolist() == [c[4] for c in CLIP_CASES]
    assert stats["dual_clipped"].tolist() == [c[5] for c in CLIP_CASES]


def test_clipped_loss_log_ratio_clamp():
    old_logp = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    logp = torch.tensor([30.0, -30.0, -30.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    loss, stats = clipped_loss(logp, old_logp, adv)
    torch.testing.assert_close(stats["ratio"], torch.tensor([math.exp(20), math.exp(-20), math.exp(-20)],
                                                            dtype=torch.float64))
    # A=1, log-ratio -30: the unclipped branch -A r wins, with r = e^-20 (not e^-30)
    torch.testing.assert_close(loss.detach(), torch.tensor([10.0, -math.exp(-20), 0.8], dtype=torch.float64))
    loss.sum().backward()
    assert logp.grad.tolist() == [0.0, 0.0, 0.0]  # the clamp cuts the gradient too
    loss, stats = clipped_loss(logp, old_logp, adv, log_ratio_clamp=5.0)
    torch.testing.assert_close(loss.detach()[1], torch.tensor(-math.exp(-5), dtype=torch.float64))


def test_first_minibatch_loss_is_zero_but_gradient_is_not():
    """The module docstring's claim: ratio 1 and zero-mean advantages -> token-mean loss 0."""
    torch.manual_seed(0)
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 1.0, 1.0, -1.0])
    adv_seq = group_advantages(rewards, 4)  # (8,)
    seq_len = 5  # equal lengths inside each group
    adv = adv_seq.repeat_interleave(seq_len).double()  # (40,)
    logp = (-torch.rand(40, dtype=torch.float64)).requires_grad_()
    loss, _ = clipped_loss(logp, logp.detach(), adv)
    total = aggregate(loss, torch.arange(8).repeat_interleave(seq_len), "token-mean", 40)
    total.backward()
    assert abs(total.item()) < 1e-6
    torch.testing.assert_close(logp.grad, -adv / 40)


def test_kl_k3_hand_values():
    logp = torch.tensor([0.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([math.log(2.0), -1.0, math.log(0.5), 30.0], dtype=torch.float64)
    want = [2 - math.log(2) - 1, 0.0, 0.5 + math.log(2) - 1, 10.0]  # last: clamped like verl
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor(want, dtype=torch.float64))


def test_kl_k3_is_unbiased_for_kl():
    """E_{x ~ pi}[k3] = KL(pi || ref), checked exactly by summing over a small vocabulary."""
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(7, dtype=torch.float64), 0)
    ref = torch.log_softmax(torch.randn(7, dtype=torch.float64), 0)
    expected_k3 = (logp.exp() * kl_k3(logp, ref)).sum()
    kl = (logp.exp() * (logp - ref)).sum()
    torch.testing.assert_close(expected_k3, kl)


# ----------------------------------------------------------------------------- aggregation

def reference_loss(per_seq, mode, max_len):
    """The whole mini-batch at once, one sequence at a time, no packing."""
    if mode == "token-mean":
        return torch.cat(per_seq).mean()
    if mode == "seq-mean-token-mean":
        return torch.stack([s.mean() for s in per_seq]).mean()
    return torch.stack([s.sum() / max_len for s in per_seq]).mean()


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_invariant_to_micro_batches_and_ranks(mode):
    torch.manual_seed(0)
    max_len, dim = 12, 4
    lengths = [3, 12, 1, 7, 5, 9, 2, 11, 4, 6]  # 10 sequences of very different lengths
    feats = [torch.randn(n, dim, dtype=torch.float64) for n in lengths]
    old_logp = [-torch.rand(n, dtype=torch.float64) for n in lengths]
    adv = group_advantages(torch.tensor([1.0, -1, -1, 1, 0, 1, -1, 1, 1, -1]), 5).double()
    w0 = 0.3 * torch.randn(dim, dtype=torch.float64)  # the shared "model"

    def seq_losses(w, seqs):
        out = []
        for s in seqs:  # logp moves away from old_logp so that some tokens clip
            logp = old_logp[s] + feats[s] @ w
            out.append(clipped_loss(logp, old_logp[s], adv[s].expand(lengths[s]))[0])
        return out

    w_ref = w0.clone().requires_grad_()
    ref = reference_loss(seq_losses(w_ref, range(10)), mode, max_len)
    ref.backward()

    # 2 ranks, uneven micro-batches; the normaliser is the all-reduced count of the whole mini-batch
    ranks = [[[0, 1], [2, 3, 4]], [[5], [6], [7, 8, 9]]]
    denom = loss_denominator(mode, n_tokens=sum(lengths), n_seqs=len(lengths))
    world, losses, grads = len(ranks), [], []
    for micro_batches in ranks:
        w = w0.clone().requires_grad_()
        rank_loss = 0.0
        for mb in micro_batches:
            per_token = torch.cat(seq_losses(w, mb))  # (T_mb,) packed
            seq_index = torch.cat([torch.full((lengths[s],), i) for i, s in enumerate(mb)])
            part = aggregate(per_token, seq_index, mode, denom, max_len=max_len)
            part.backward()  # gradient accumulation across micro-batches
            rank_loss += part.item()
        losses.append(rank_loss)
        grads.append(w.grad)
    ddp_grad = torch.stack(grads).mean(0) * world  # DDP averages over ranks; the trainer undoes it
    assert abs(sum(losses) - ref.item()) < 1e-6
    torch.testing.assert_close(ddp_grad, w_ref.grad, atol=1e-6, rtol=0)
    assert w_ref.grad.abs().max() > 1e-3  # the test is not vacuous


def test_aggregate_hand_values():
    per_token = torch.tensor([1.0, 2.0, 3.0])
    seq_index = torch.tensor([0, 0, 1])
    assert aggregate(per_token, seq_index, "token-mean", 6).item() == 1.0
    assert aggregate(per_token, seq_index, "seq-mean-token-mean", 4).item() == (1.5 + 3) / 4
    assert aggregate(per_token, seq_index, "seq-mean-token-sum-norm", 4, max_len=10).item() == pytest.approx((0.3 + 0.3) / 4)
    assert loss_denominator("token-mean", 17, 3) == 17
    assert loss_denominator("seq-mean-token-mean", 17, 3) == 3
    assert loss_denominator("seq-mean-token-sum-norm", 17, 3) == 3


# ----------------------------------------------------------------------------- FAPO shift point

@pytest.mark.parametrize("lam", [0.5, 0.8, 1.0, 1.5])
def test_fapo_shift_point(lam):
    """docs/method.md §5 (paper App. A, Eq. 17): a flawed positive's advantage is > 0 iff rho = alpha / beta < 2 / lam - 1."""
    threshold = 2 / lam - 1
    checked = {"+": 0, "-": 0}
    for n_right in range(0, 9):
        for n_wrong in range(1, 9):
            for n_flawed in range(1, 4):
                correct = [True] * (n_right + n_flawed) + [False] * n_wrong
                flawed = [False] * n_right + [True] * n_flawed + [False] * n_wrong
                rewards = fapo_rewards(torch.tensor(correct), torch.tensor(flawed), lam=lam)
                adv = group_advantages(rewards, len(correct))
                a_flawed = adv[n_right].item()  # the first flawed positive
                rho = n_right / n_wrong
                if abs(rho - threshold) < 1e-9:
                    assert abs(a_flawed) < 1e-5
                elif rho < threshold:
                    assert a_flawed > 0, (n_right, n_wrong, n_flawed)
                    checked["+"] += 1
                else:
                    assert a_flawed < 0, (n_right, n_wrong, n_flawed)
                    checked["-"] += 1
    assert checked["+"] > 0 and checked["-"] > 0
