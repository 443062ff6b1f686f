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
