"""fapo_mini/update.py beyond test_rl.py: the packing shared with sft.py, and the warm-up's clock.

Why this file exists: the learning-rate warm-up counts RL steps, as verl steps its scheduler
once per actor update: with --mini-batches 2 and --warmup 4, the 2 optimizer steps of RL step s
both run at lr * (s + 1) / 4. Stepping the scheduler per mini-batch instead would end the
warm-up after 2 RL steps and raise no error, so the rates are checked three ways: the logged
`lr`, the optimizer's rate at each step (a hook), and a weight-decay-only AdamW step by hand.
"""
import copy

import pytest
import torch

from fapo_mini import sft, toyworld, update

LR, WARMUP = 1e-3, 4
WANT = [0.00025, 0.0005, 0.00075, 0.001]  # lr * min(1, (s + 1) / 4), RL steps s = 0..3


def test_pack_pairs_docstring_example():
    b = update.pack_pairs([([5, 6], [7, 8]), ([9], [3])], "cpu")
    assert b["ids"].tolist() == [5, 6, 7, 8, 9, 3] and b["pos"].tolist() == [0, 1, 2, 3, 0, 1]
    assert b["cu"].tolist() == [0, 4, 6] and b["cu"].dtype == torch.int32 and b["max_len"] == 4
    assert b["nxt"].tolist() == [6, 7, 8, 0, 3, 0]
    assert b["sel"].tolist() == [1, 2, 4] and b["seq"].tolist() == [0, 0, 1]
    # the scored positions' next tokens are the responses, in order
    assert b["nxt"][b["sel"]].tolist() == [7, 8, 3]


def rollouts(model, advantages):
    """4 rollouts of a toy prompt with made-up responses; old_logp are the model's own (ratio 1)."""
    tok = toyworld.make_tokenizer()
    prompt = tok.encode(toyworld.generate(1, 0, "train")[0].prompt, add_special_tokens=False)
    responses = [tok.encode(t, add_special_tokens=False) for t in ("b=1+2=3", "ans=3", "b=2\nans=4", "ans=7")]
    ro = update.Rollouts([prompt] * 4, responses, [[0.0] * len(r) for r in responses], torch.tensor(advantages))
    b = update.pack(ro, range(4), "cpu")
    with torch.no_grad():
        logp = update.response_logprobs(model, b, 1.0)
    ro.old_logp = [x.tolist() for x in logp.split([len(r) for r in responses])]
    return ro


def run(model, opt, sched, ro, mini_batches, calls):
    """`calls` ppo_update calls; returns the logged lr of each and the rate of each optimizer step."""
    used = []
    hook = opt.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
    cfg = update.UpdateConfig(mini_batches=mini_batches)
    logged = [update.ppo_update(model, opt, sched, ro, cfg, generator=torch.Generator().manual_seed(k))["lr"]
              for k in calls]
    hook.remove()
    return logged, used


@pytest.mark.parametrize("mini_batches", [1, 2, 4])
def test_warmup_counts_rl_steps(mini_batches):
    model = sft.new_model("d32-l1", toyworld.make_tokenizer(), seed=0)
    opt, sched = update.make_optimizer(model, LR, WARMUP)
    logged, used = run(model, opt, sched, rollouts(model, [1.0, -1.0, 0.5, -0.5]), mini_batches, range(4))
    assert logged == pytest.approx(WANT, rel=1e-12)
    assert used == pytest.approx([lr for lr in WANT for _ in range(mini_batches)], rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR, rel=1e-12)  # past the warm-up: constant


def test_weight_decay_step_by_hand():
    """Zero advantages give zero gradients, so each AdamW step only decays: p <- p (1 - lr wd).
    Over RL step s with 2 mini-batches that is p (1 - lr_s wd)^2, lr_s the step's logged rate."""
    wd = 10.0  # large, so that one step's decay (2.5e-3 at lr 2.5e-4) dwarfs float32 rounding
    model = sft.new_model("d32-l1", toyworld.make_tokenizer(), seed=0)
    opt, sched = update.make_optimizer(model, LR, WARMUP, weight_decay=wd)
    ro = rollouts(model, [0.0, 0.0, 0.0, 0.0])
    w = model.model.embed_tokens.weight
    for s, lr in enumerate(WANT):
        before = w.detach().double().clone()
        logged, _ = run(model, opt, sched, ro, 2, [s])
        assert logged == [pytest.approx(lr, rel=1e-12)]
        ratio = (w.detach().double() / before)[before.abs() > 1e-3]
        torch.testing.assert_close(ratio, torch.full_like(ratio, (1 - lr * wd) ** 2), atol=1e-6, rtol=0)


def test_resume_mid_warmup_is_exact():
    """The loop checkpoints optimizer.state_dict() and scheduler.state_dict() after a step; a fresh
    optimizer and scheduler loaded from them take the same remaining steps at the same rates."""
    tok = toyworld.make_tokenizer()
    model = sft.new_model("d32-l1", tok, seed=0)
    ro = rollouts(model, [1.0, -1.0, 0.5, -0.5])
    opt, sched = update.make_optimizer(model, LR, WARMUP)
    run(model, opt, sched, ro, 2, range(2))
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    straight, _ = run(model, opt, sched, ro, 2, range(2, 4))

    resumed = sft.new_model("d32-l1", tok, seed=1)
    resumed.load_state_dict(saved[0])
    opt2, sched2 = update.make_optimizer(resumed, LR, WARMUP)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    logged, used = run(resumed, opt2, sched2, ro, 2, range(2, 4))
    assert logged == straight == pytest.approx(WANT[2:], rel=1e-12)
    assert used == pytest.approx([WANT[2]] * 2 + [WANT[3]] * 2, rel=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def sampled_by_bf16_copy(model, n=8):
    """n rollouts of one toy prompt sampled by a bf16 copy of the fp32 `model`, as a GPU's rollout
    copy samples: their log-probs are the copy's, not the trained model's."""
    from fapo_mini.sampler import Sampler, SamplingParams
    tok = toyworld.make_tokenizer()
    copy_bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    prompt = tok.encode(toyworld.generate(1, 0, "train")[0].prompt, add_special_tokens=False)
    samples = Sampler(copy_bf16, tok).generate([prompt], SamplingParams(n=n, max_new_tokens=12),
                                               generator=torch.Generator().manual_seed(0))
    return update.Rollouts([prompt] * n, [s.token_ids for s in samples], [s.logprobs for s in samples],
                           torch.tensor([1.0, -1.0] * (n // 2)))


@pytest.mark.parametrize("recompute", [True, False])
def test_old_logprobs_recomputed_by_the_trainer_give_a_first_ratio_of_one(monkeypatch, recompute):
    """A bf16 rollout copy of an fp32 policy: with the old log-probs recomputed by the trained model
    (docs/method.md §8), every ratio of the first mini-batch is exactly 1; with the sampler's, the
    ratios start off 1 by the copy's rounding. The gap is logged either way."""
    model = sft.new_model("d64-l2", toyworld.make_tokenizer(), seed=1)
    ro = sampled_by_bf16_copy(model)
    seen = []                                           # per clipped_loss call: max |logp - old|
    real = update.grpo.clipped_loss
    monkeypatch.setattr(update.grpo, "clipped_loss",
                        lambda logp, old, *a: seen.append((logp.detach() - old).abs().max().item()) or real(logp, old, *a))
    # the fp32 trainer's log-probs before the update, by a loop of unpacked forwards
    with torch.no_grad():
        ref = torch.cat([update.response_logprobs(model, update.pack(ro, [i], "cpu"), 1.0) for i in range(8)])
    opt, sched = update.make_optimizer(model, 1e-3, 1)
    cfg = update.UpdateConfig(mini_batches=2, recompute_old=recompute)
    stats = update.ppo_update(model, opt, sched, ro, cfg, generator=torch.Generator().manual_seed(0))
    sampler = torch.cat([torch.tensor(x) for x in ro.old_logp])
    gap = (ref - sampler).abs()
    assert gap.max() > 1e-3                             # bf16 rounding, not numeric dust
    if recompute:
        assert seen[0] == 0.0                           # the first mini-batch: ratio exactly 1
        assert stats["logp_gap"] == pytest.approx(gap.mean().item(), rel=1e-4)     # over every token
        assert stats["logp_gap_max"] == pytest.approx(gap.max().item(), rel=1e-4)
    else:
        assert seen[0] > 1e-3                           # the ratio starts away from 1
    print(f"recompute={recompute}: clip_frac {stats['clip_frac']:.4f}, first-mini-batch max |log ratio| "
          f"{seen[0]:.2e}, logp_gap {stats['logp_gap']:.2e}")


def test_truncated_importance_sampling_weights_by_hand(monkeypatch):
    """--tis-cap C: each token's loss times min(exp(old - sampler), C) (docs/method.md §8)."""
    model = sft.new_model("d64-l2", toyworld.make_tokenizer(), seed=1)
    ro = sampled_by_bf16_copy(model)
    losses = {}
    real = update.grpo.aggregate
    for cap in (0.0, 1.001):
        calls = []
        monkeypatch.setattr(update.grpo, "aggregate", lambda per_tok, *a: calls.append(per_tok.detach()) or real(per_tok, *a))
        m = copy.deepcopy(model)
        opt, sched = update.make_optimizer(m, 1e-3, 1)
        update.ppo_update(m, opt, sched, ro, update.UpdateConfig(recompute_old=True, tis_cap=cap),
                          generator=torch.Generator().manual_seed(0))
        losses[cap] = calls[0]
    b = update.pack(ro, torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist(), "cpu")
    with torch.no_grad():
        old = update.response_logprobs(model, b, 1.0)
    w = torch.exp(old - b["old"]).clamp(max=1.001)      # b["old"] here is the sampler's (nothing recomputed)
    assert (w < 1.001).any() and (w == 1.001).any()     # both sides of the cap are exercised
    torch.testing.assert_close(losses[1.001], losses[0.0] * w, rtol=1e-5, atol=1e-7)
