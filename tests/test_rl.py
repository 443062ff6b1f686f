"""Tests of the RL update and loop (fapo_mini/update.py, rl.py, train_policy.py, train_genrm.py).

Why this file exists: the GRPO update is where silent bugs hide (an off-by-one in the
packed log-prob positions, a token-mean normaliser that is per micro-batch or per rank,
DDP's gradient average left in), and none of them crash. Each test compares numbers
with an independent reference:
  - the sampler's log-probs and a loop of unpacked forwards (the ratio starts at 1);
  - AdamW's first step computed by hand from a loop-version gradient;
  - the same update with one micro-batch, and with two gloo DDP ranks;
  - the reward identity reward = 2 acc - 1 - lam acc fp in the scripts' metrics.
Everything is CPU fp32 on a d64-l2 toy model; subprocesses run with OMP_NUM_THREADS=1.
Checkpoint resume and bad-input errors are tested in test_resume.py, not here.
"""
import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from conftest import free_port
from fapo_mini import dist, grpo, sft, toycritic, toyworld, update
from fapo_mini.model import load_model, save_model
from fapo_mini.sampler import Sampler, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
GROUP = 4
# one reward per rollout, 4 groups of 4: every group has non-zero variance, so every rollout has A != 0
REWARDS = [1, -1, -1, -1, 1, 1, -1, -1, 1, 0, -1, -1, 0, 1, 1, -1]
KEEP = [10, 3, 7, 10, 5, 9, 4, 8, 6, 10, 2, 7, 9, 4, 10, 6]   # response lengths: prefixes of the samples


@pytest.fixture(scope="module")
def tok():
    return toyworld.make_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("random_policy")
    save_model(sft.new_model("d64-l2", tok, seed=0), d, tok)
    return d


def sample_rollouts(model, tok, temperature):
    """16 rollouts (4 prompts x GROUP) sampled by the model, responses cut to KEEP tokens
    (a prefix of a sample keeps its log-probs) so that lengths differ, fixed advantages."""
    prompts = [tok.encode(p.prompt, add_special_tokens=False) for p in toyworld.generate(4, 0, "train")]
    samples = Sampler(model, tok).generate(prompts, SamplingParams(n=GROUP, temperature=temperature,
                                                                   max_new_tokens=max(KEEP)))
    assert all(len(s.token_ids) >= k for s, k in zip(samples, KEEP)), "a sample ended early; change the seed"
    return update.Rollouts([prompts[s.prompt_index] for s in samples], [s.token_ids[:k] for s, k in zip(samples, KEEP)],
                       [s.logprobs[:k] for s, k in zip(samples, KEEP)], grpo.group_advantages(REWARDS, GROUP))


def subset(ro, ids):
    return update.Rollouts([ro.prompt_ids[i] for i in ids], [ro.response_ids[i] for i in ids],
                       [ro.old_logp[i] for i in ids], ro.advantages[ids])


def loop_logprobs(model, ro, temperature):
    """Reference: one unpacked forward per rollout, log_softmax(logits / T) of each response token."""
    out = []
    for p, r in zip(ro.prompt_ids, ro.response_ids):
        ids = torch.tensor(p + r)
        hidden = model(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
        logits = model.lm_head(hidden[len(p) - 1:-1]) / temperature               # (len(r), V)
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0])
    return out


def constant_sgd(model, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def params(model):
    return {k: v.detach().clone() for k, v in getattr(model, "module", model).named_parameters()}


def assert_same_params(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"parameters differ by {worst:.3g} > {atol}"


# ----------------------------------------------------------------------------
# 1. the first PPO ratio is 1: trainer log-probs == sampler log-probs

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_trainer(model_dir, tok, temperature):
    model = load_model(model_dir).eval()
    ro = sample_rollouts(model, tok, temperature)
    b = update.pack(ro, range(len(ro.response_ids)), "cpu")
    with torch.no_grad():
        packed = update.response_logprobs(model, b, temperature)                     # (T_r,)
        loop = torch.cat(loop_logprobs(model, ro, temperature))
        other_t = update.response_logprobs(model, b, 1.7 - temperature)
    assert (packed - b["old"]).abs().max() < 1e-5                                 # sampler == packed trainer
    assert (packed - loop).abs().max() < 1e-5                                     # packed == one by one
    assert (other_t - b["old"]).abs().max() > 1e-2                                # the check sees the temperature
    opt, sched = constant_sgd(model, 0.0)
    stats = update.ppo_update(model, opt, sched, ro, update.UpdateConfig(temperature=temperature))
    assert stats["logp_gap"] == pytest.approx((packed - b["old"]).abs().mean().item(), abs=1e-7)
    assert stats["logp_gap"] < 1e-5 and stats["clip_frac"] == 0.0 and stats["kl_to_sampler"] < 1e-9
    # old_logp = the trainer's own log-probs: the first ratio is 1 up to fp32 rounding (another pack order)
    ro.old_logp = [x.tolist() for x in packed.split([len(r) for r in ro.response_ids])]
    stats = update.ppo_update(model, opt, sched, ro, update.UpdateConfig(temperature=temperature, mini_batches=2),
                          generator=torch.Generator().manual_seed(0))
    assert stats["logp_gap"] < 1e-6 and stats["kl_to_sampler"] < 1e-12 and stats["clip_frac"] == 0.0
    assert 0 < stats["entropy"] < math.log(len(tok))


# ----------------------------------------------------------------------------
# 2. one AdamW step equals the hand-computed step from a loop-version gradient

def test_adamw_step_matches_hand_computation(model_dir, tok):
    lr, wd, clip = 1e-3, 0.1, 1.0
    model = load_model(model_dir).eval()
    ro = sample_rollouts(model, tok, 1.0)
    ref = copy.deepcopy(model)
    # reference gradient: token-mean of -A_i * ratio_t, one unpacked sequence at a time (ratio ~ 1: no clipping)
    logps = loop_logprobs(ref, ro, 1.0)
    n_tok = sum(len(r) for r in ro.response_ids)
    loss = sum(-(a * torch.exp(lp - torch.tensor(old))).sum() for a, lp, old in zip(ro.advantages, logps, ro.old_logp))
    (loss / n_tok).backward()
    g = {k: p.grad for k, p in ref.named_parameters()}
    norm = math.sqrt(sum((x.double() ** 2).sum().item() for x in g.values()))
    scale = min(1.0, clip / (norm + 1e-6))                                        # clip_grad_norm_
    before = params(model)
    # AdamW step 1: m_hat = g, v_hat = g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps)
    expect = {k: before[k] * (1 - lr * wd) - lr * scale * g[k] / (scale * g[k].abs() + 1e-8) for k in before}
    opt, sched = update.make_optimizer(model, lr, warmup_steps=1, weight_decay=wd)
    stats = update.ppo_update(model, opt, sched, ro, update.UpdateConfig(grad_clip=clip))
    after = params(model)
    # g / (|g| + eps) is ill-conditioned where |g| is near the float error of g (~1e-8): compare elsewhere
    sure = {k: scale * g[k].abs() > 1e-6 for k in g}
    assert sum(m.sum() for m in sure.values()) > 0.99 * sum(m.numel() for m in sure.values())
    assert_same_params({k: after[k][sure[k]] for k in after}, {k: expect[k][sure[k]] for k in after}, atol=1e-6)
    assert_same_params(after, expect, atol=2 * lr)
    for k in before:  # every parameter moved by its gradient, not only by weight decay
        assert (after[k] - before[k] * (1 - lr * wd)).abs().max() > 0.5 * lr, k
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-4)


# ----------------------------------------------------------------------------
# 3. micro-batching does not change the update

@pytest.mark.parametrize("loss_agg", grpo.AGG_MODES)
def test_micro_batching_invariance(model_dir, tok, loss_agg):
    base = load_model(model_dir).eval()
    ro = sample_rollouts(base, tok, 1.0)
    results = []
    for micro_tokens in (10_000, 40):  # one micro-batch per mini-batch vs one or two rollouts each
        model = copy.deepcopy(base)
        opt, sched = constant_sgd(model, 0.5)    # SGD: an error in the gradient's scale is not normalised away
        cfg = update.UpdateConfig(mini_batches=2, micro_tokens=micro_tokens, loss_agg=loss_agg, max_response=max(KEEP),
                              grad_clip=1e9)
        stats = update.ppo_update(model, opt, sched, ro, cfg, generator=torch.Generator().manual_seed(0))
        results.append((params(model), stats))
    (p_one, s_one), (p_many, s_many) = results
    assert_same_params(p_one, p_many, atol=1e-6)
    assert max((p_one[k] - params(base)[k]).abs().max() for k in p_one) > 1e-3      # the update is not tiny
    for k in ("clip_frac", "kl_to_sampler", "entropy", "logp_gap", "grad_norm"):
        assert s_one[k] == pytest.approx(s_many[k], rel=1e-5, abs=1e-7), k


# ----------------------------------------------------------------------------
# 4. two gloo DDP ranks == one process on the whole batch

WORLD = 2
DDP_CONFIGS = [  # (optimizer, mini_batches, micro_tokens, loss_agg)
    ("sgd", 1, 10_000, "token-mean"),
    ("sgd", 2, 40, "token-mean"),
    ("sgd", 2, 40, "seq-mean-token-mean"),
    ("adamw", 2, 40, "token-mean"),
]


def rank_rollout_ids(n, world):
    """Rank r's rollouts as the loop assigns them: data.shard gives it prompts r, r + W, ...,
    and the sampler returns them group after group."""
    return [[g * GROUP + j for g in range(r, n // GROUP, world) for j in range(GROUP)] for r in range(world)]


def run_update(model, ro, config, world_size, seed):
    opt_name, mini_batches, micro_tokens, loss_agg = config
    if opt_name == "sgd":
        opt, sched, clip = *constant_sgd(model, 0.5), 1e9
    else:
        (opt, sched), clip = update.make_optimizer(model, 1e-3, warmup_steps=1), 1.0
        # Adam's first steps move each weight by about lr * g / (|g| + eps): for a gradient near eps
        # (rare tokens' embedding rows) that is ill-conditioned, and the ranks' other float sums in g
        # (~1e-11) moved weights by 2e-6 on an AVX-512 CPU. eps 1e-6 bounds that amplification to
        # lr / eps = 1e3, so 1e-6 compares DDP with one process, not CPUs' rounding.
        opt.param_groups[0]["eps"] = 1e-6
    cfg = update.UpdateConfig(mini_batches=mini_batches, micro_tokens=micro_tokens, loss_agg=loss_agg,
                          max_response=max(KEEP), grad_clip=clip)
    return update.ppo_update(model, opt, sched, ro, cfg, world_size, generator=torch.Generator().manual_seed(seed))


def ddp_worker(rank, port, model_dir, ro, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")      # CPU and gloo even on a GPU machine
    torch.set_num_threads(1)
    info = dist.setup()
    mine = subset(ro, rank_rollout_ids(len(ro.response_ids), WORLD)[rank])
    results = []
    for config in DDP_CONFIGS:
        model = DDP(load_model(model_dir))
        stats = run_update(model, mine, config, info.world_size, seed=100 + rank)
        results.append((params(model), stats))
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.cleanup()


def one_process_order(n, mini_batches):
    """Where to put each rollout in the 1-process batch so that its mini-batch m holds exactly
    the rollouts of the ranks' mini-batches m. ppo_update takes mini-batch m as positions
    perm[m * size:(m + 1) * size] of perm = randperm(N, generator); each rank does the same
    with randperm(N / W) over its own rollouts. We replay all those permutations with the
    seeds the runs use (rank r: 100 + r, one process: 0) and place rollout S[j] at perm[j],
    where S lists the ranks' mini-batches in order. Order inside a mini-batch only changes
    float summation order."""
    s = []
    ranks = rank_rollout_ids(n, WORLD)
    perms = [torch.randperm(len(ids), generator=torch.Generator().manual_seed(100 + r)).tolist()
             for r, ids in enumerate(ranks)]
    for m in range(mini_batches):
        for ids, perm in zip(ranks, perms):
            size = len(perm) // mini_batches
            s += [ids[i] for i in perm[m * size:(m + 1) * size]]
    order = [0] * n
    for j, pos in enumerate(torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()):
        order[pos] = s[j]
    return order


def test_ddp_two_ranks_equal_one_process(model_dir, tok, tmp_path):
    ro = sample_rollouts(load_model(model_dir).eval(), tok, 1.0)
    mp.spawn(ddp_worker, args=(free_port(), model_dir, ro, tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for i, config in enumerate(DDP_CONFIGS):
        model = load_model(model_dir)
        stats = run_update(model, subset(ro, one_process_order(len(ro.response_ids), config[1])), config, 1, seed=0)
        for p_rank, s_rank in (r[i] for r in ranks):
            assert_same_params(p_rank, params(model), atol=1e-6)
            for k in ("clip_frac", "kl_to_sampler", "entropy", "logp_gap", "grad_norm", "lr"):
                assert s_rank[k] == pytest.approx(stats[k], rel=1e-5, abs=1e-7), (config, k)
        before, after = params(load_model(model_dir)), params(model)
        assert max((after[k] - before[k]).abs().max() for k in after) > 1e-4        # the update is not tiny


# ----------------------------------------------------------------------------
# 5-6. the scripts end to end: metrics, the FAPO reward wiring, checkpoints, torchrun

POLICY_KEYS = {"step", "accuracy", "fp_ratio", "reward", "response_len", "response_len_max", "truncated",
               "zero_var_groups", "clip_frac", "kl_to_sampler", "entropy", "grad_norm", "logp_gap", "lr",
               "time_sample", "time_judge", "time_train"}
GENRM_KEYS = POLICY_KEYS - {"accuracy", "fp_ratio"} | {"valid", "exact_step_acc", "decision_acc"}


@pytest.fixture(scope="module")
def toy_problems():
    return toyworld.generate(2, 0, "train", steps=(2, 2))


@pytest.fixture(scope="module")
def mixed_policy_dir(tmp_path_factory, tok, toy_problems):
    """A policy that has memorised two answers per prompt, so its groups hold every kind of rollout:
    prompt 0 -> a clean solution or a flawed positive (wrong step, right answer), about half each;
    prompt 1 -> a clean solution or a wrong answer."""
    rng = random.Random(0)
    (p0, p1) = (p.prompt for p in toy_problems)
    clean0, clean1 = (toyworld.teacher_solution(p, "clean", rng) for p in (p0, p1))
    wrong1 = clean1[:-1] + str((int(clean1[-1]) + 1) % 10)
    pairs = [(p0, clean0), (p0, toyworld.teacher_solution(p0, "sloppy", rng)), (p1, clean1), (p1, wrong1)]
    assert [toyworld.first_error(p, s) for p, s in pairs] == [-1, 0, -1, 2]
    model = sft.new_model("d64-l2", tok, seed=0)
    sft.train(model, sft.tokenize_pairs(pairs, tok), steps=60, batch_size=4, lr=1e-2)
    d = tmp_path_factory.mktemp("mixed_policy")
    save_model(model, d, tok)
    return d


def run_script(script, args, nproc=1):
    """python SCRIPT or torchrun --nproc_per_node=nproc SCRIPT (gloo on CPU); fails the test on a non-zero exit.
    Returns its stdout."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(launcher + [str(ROOT / script)] + [str(a) for a in args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def policy_args(model, data, out, lam, steps, prompts):
    return ["--model", model, "--data", data, "--out", out, "--judge", "oracle", "--lam", lam, "--steps", steps,
            "--prompts-per-step", prompts, "--group-size", 4, "--max-new-tokens", 24, "--lr", 1e-4, "--warmup", 1]


def check_policy_line(line, lam):
    assert POLICY_KEYS <= line.keys()
    acc, fp = line["accuracy"], line["fp_ratio"]
    # docs/method.md §4: mean reward = acc * 1 + (1 - acc) * (-1) - lam * (share of flawed positives) = 2 acc - 1 - lam acc fp
    assert line["reward"] == pytest.approx(2 * acc - 1 - lam * acc * (fp or 0.0), abs=1e-12)
    for k in ("accuracy", "truncated", "zero_var_groups", "clip_frac"):
        assert 0 <= line[k] <= 1, k
    assert line["logp_gap"] < 1e-5 and line["kl_to_sampler"] < 1e-6        # rollouts are on-policy
    assert 0 <= line["entropy"] < math.log(257) and line["response_len"] <= line["response_len_max"] <= 24


def test_train_policy_fapo_oracle(tmp_path, mixed_policy_dir, toy_problems):
    data = tmp_path / "train.jsonl"
    toyworld.write_jsonl(data, toyworld.policy_rows(toy_problems, "train"))
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, tmp_path / "run", 1.0, 2, 2))
    lines = metrics(tmp_path / "run")
    assert [l["step"] for l in lines] == [1, 2]
    for line in lines:
        check_policy_line(line, lam=1.0)
    # both prompts every step, 8 rollouts: flawed positives are sampled and cost their reward
    assert any(l["fp_ratio"] and l["reward"] < 2 * l["accuracy"] - 1 for l in lines)
    assert any(l["grad_norm"] > 0 for l in lines)
    ckpt = tmp_path / "run" / "ckpt" / "step_00000002"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "state.pt").is_file() and (ckpt / "rank0.pt").is_file()
    assert load_model(ckpt / "model").cfg.vocab_size == 257


def test_train_policy_torchrun_grpo(tmp_path, mixed_policy_dir, toy_problems):
    data = tmp_path / "train.jsonl"
    toyworld.write_jsonl(data, toyworld.policy_rows(toy_problems, "train"))
    run_script("train_policy.py", policy_args(mixed_policy_dir, data, tmp_path / "run", 0.0, 1, 2), nproc=2)
    (line,) = metrics(tmp_path / "run")
    check_policy_line(line, lam=0.0)          # lam 0 (GRPO): flawed positives are measured, not penalised
    assert line["fp_ratio"] > 0 and line["reward"] == pytest.approx(2 * line["accuracy"] - 1, abs=1e-12)
    assert {p.name for p in (tmp_path / "run" / "ckpt" / "step_00000001").iterdir()} >= {"rank0.pt", "rank1.pt"}


def test_train_policy_torchrun_mixed_sources(tmp_path, mixed_policy_dir, toy_problems):
    # one toy-world row and one boxed-answer row: each rank holds one of them each step, and both
    # must report the same metric keys (they are all-reduced key by key); fp_ratio counts the
    # toy row's correct rollouts only (the other row's answers are `ans=`, never boxed: all wrong)
    rows = toyworld.policy_rows(toy_problems, "train")
    rows[1] = {**rows[1], "data_source": "math"}
    data = tmp_path / "train.jsonl"
    toyworld.write_jsonl(data, rows)
    args = policy_args(mixed_policy_dir, data, tmp_path / "run", 0.0, 2, 2)
    args[args.index("--judge") + 1] = "none"
    run_script("train_policy.py", args, nproc=2)
    lines = metrics(tmp_path / "run")
    assert [l["step"] for l in lines] == [1, 2]
    for line in lines:
        check_policy_line(line, lam=0.0)
        assert line["accuracy"] <= 0.5                    # 4 of the 8 rollouts can never be right
    assert any(l["fp_ratio"] for l in lines)              # prompt 0 samples flawed positives


def test_train_genrm_torchrun(tmp_path, model_dir, toy_problems):
    rng = random.Random(0)
    items = [(p.prompt, toyworld.teacher_solution(p.prompt, "sloppy", rng)) for p in toy_problems]  # all flawed
    data = tmp_path / "critic.jsonl"
    toyworld.write_jsonl(data, toycritic.critic_rows(items))
    run_script("train_genrm.py", ["--model", model_dir, "--data", data, "--out", tmp_path / "run", "--steps", 1,
                                  "--prompts-per-step", 2, "--group-size", 2, "--max-new-tokens", 8], nproc=2)
    (line,) = metrics(tmp_path / "run")
    assert GENRM_KEYS <= line.keys()
    for k in ("valid", "exact_step_acc", "decision_acc"):
        assert 0 <= line[k] <= 1, k
    # 8 new tokens cannot hold "\boxed{k}" (9 bytes): every critique is invalid, and invalid scores -1 (docs/method.md §3)
    assert line["valid"] == 0 and line["exact_step_acc"] == 0 and line["late_flag_share"] is None and line["reward"] == -1.0
    assert line["zero_var_groups"] == 1.0 and line["grad_norm"] == 0.0      # all -1: no advantage, no gradient

