"""FSDP2 (fapo_mini/parallel.py, `--fsdp`) against DDP, on 2 gloo ranks.

Why this file exists: sharding must not change the update. The same rollouts are
trained once under DDP and once under torch.distributed.fsdp.fully_shard (fp32
mixed-precision policy, as on CPU), on a tied-head model and on an untied one, and the parameters must agree within 1e-6 after SGD steps (1e-5 after AdamW steps). The sampler's rollout copy,
refreshed from the FSDP2 shards, must hold exactly the trained parameters.
Kill-and-resume under --fsdp is tested in test_resume.py; here, that `dist.cleanup` at the end
of a run waits for every rank before tearing the process group down.
"""
import itertools
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from fapo_mini import dist, parallel, sft, update
from fapo_mini.model import load_model, save_model
from fapo_mini.sampler import Sampler, SamplingParams
from fapo_mini.toyworld import make_tokenizer
from test_rl import (KEEP, WORLD, free_port, model_dir, rank_rollout_ids, sample_rollouts,  # noqa: F401 (fixtures)
                     subset, tok)

STATS = ("clip_frac", "kl_to_sampler", "entropy", "logp_gap", "grad_norm", "lr")


def full_params(model):
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in parallel.unwrap(model).named_parameters()}


# SGD passes any error in the gradient straight into the parameters; AdamW's g / (|g| + eps)
# turns float rounding of a gradient near 0 into up to lr of difference, so it gets 1e-5 (1% of lr)
OPTIMIZERS = {"sgd": 1e-6, "adamw": 1e-5}


def one_update(model, ro, rank, optimizer):
    """2 mini-batches, micro-batches of ~40 tokens (the ranks get different counts)."""
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        opt, sched, clip = opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), 1e9
    else:
        (opt, sched), clip = update.make_optimizer(model, 1e-3, warmup_steps=1), 1.0
    cfg = update.UpdateConfig(mini_batches=2, micro_tokens=40, max_response=max(KEEP), grad_clip=clip)
    return update.ppo_update(model, opt, sched, ro, cfg, WORLD, generator=torch.Generator().manual_seed(100 + rank))


def worker(rank, port, model_dirs, rollouts, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    info = dist.setup()
    results = {}
    for (name, model_dir), optimizer in itertools.product(model_dirs.items(), OPTIMIZERS):
        ro = rollouts[name]
        mine = subset(ro, rank_rollout_ids(len(ro.response_ids), WORLD)[rank])
        ddp = DDP(load_model(model_dir), gradient_as_bucket_view=True)
        ddp_stats = one_update(ddp, mine, rank, optimizer)
        fsdp = parallel.shard_model(load_model(model_dir), MixedPrecisionPolicy(torch.float32, torch.float32))
        assert all(isinstance(p, DTensor) for p in fsdp.parameters())
        fsdp_stats = one_update(fsdp, mine, rank, optimizer)
        copy = parallel.RolloutCopy(fsdp, info, fsdp=True)         # refreshed from the shards once
        params = SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
        prompts = [ro.prompt_ids[0], ro.prompt_ids[-1]]
        greedy = [[s.token_ids for s in Sampler(m, make_tokenizer()).generate(prompts, params)]
                  for m in (copy.model, ddp.module)]
        results[name, optimizer] = dict(ddp=(full_params(ddp), ddp_stats), fsdp=(full_params(fsdp), fsdp_stats),
                             copy=full_params(copy.model), greedy=greedy)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.cleanup()


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory, tok):
    """The d64-l2 policy of test_rl.py with its own lm_head (not tied to the embeddings)."""
    model = sft.new_model("d64-l2", tok, seed=1)
    model.cfg.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    d = tmp_path_factory.mktemp("untied_policy")
    save_model(model, d, tok)
    return d


def test_fsdp2_update_equals_ddp(model_dir, untied_dir, tok, tmp_path):
    dirs = {"tied": model_dir, "untied": untied_dir}
    rollouts = {k: sample_rollouts(load_model(d).eval(), tok, 1.0) for k, d in dirs.items()}
    mp.spawn(worker, args=(free_port(), dirs, rollouts, tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, optimizer in itertools.product(dirs, OPTIMIZERS):
        before = full_params(load_model(dirs[name]))
        for res in (r[name, optimizer] for r in ranks):
            (p_ddp, s_ddp), (p_fsdp, s_fsdp) = res["ddp"], res["fsdp"]
            assert p_ddp.keys() == p_fsdp.keys() == before.keys()
            worst = max((p_ddp[k] - p_fsdp[k]).abs().max().item() for k in p_ddp)
            assert worst <= OPTIMIZERS[optimizer], f"{name}, {optimizer}: FSDP2 and DDP parameters differ by {worst:.3g}"
            assert max((p_ddp[k] - before[k]).abs().max().item() for k in p_ddp) > 1e-4   # the update is not tiny
            for k in STATS:
                assert s_fsdp[k] == pytest.approx(s_ddp[k], rel=1e-5, abs=1e-7), (name, k)
            assert all(torch.equal(res["copy"][k], p_fsdp[k]) for k in p_fsdp)            # the rollout copy
            copy_tokens, ddp_tokens = res["greedy"]
            assert copy_tokens == ddp_tokens                                                # samples the same


def cleanup_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
    dist.setup()
    if rank == 0:
        time.sleep(1.0)                                   # still busy, as rank 0 is pruning old checkpoints
    entered = time.time()
    dist.cleanup()
    times = {"entered": entered, "left": time.time(), "initialized": torch.distributed.is_initialized()}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(times))


def test_setup_gives_the_process_group_the_timeout(monkeypatch):
    """--dist-timeout reaches init_process_group: NCCL's own default (10 min) is shorter than one
    rank's judge can take, and the other ranks wait for it at the update."""
    from datetime import timedelta
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: seen.update(kw))
    info = dist.setup(90)
    assert (info.rank, info.world_size) == (1, 2) and seen == {"backend": "gloo", "timeout": timedelta(minutes=90)}


def test_cleanup_waits_for_every_rank(tmp_path):
    """No rank tears the group down (and exits, closing its connections) before every rank got
    to the end: rank 1 leaves cleanup only after rank 0, a second late, came into it."""
    mp.spawn(cleanup_worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r1["left"] >= r0["entered"] >= r1["entered"] + 0.9
    assert not r0["initialized"] and not r1["initialized"]
