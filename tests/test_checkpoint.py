"""checkpoint.py (+ dist.py): atomic save, fallback to the last complete checkpoint, exact resume, graceful stop."""

import os
import random
import signal
import time

import numpy as np
import pytest
import torch

from fapo_mini import dist
from fapo_mini.checkpoint import (
    GracefulStop,
    check_config,
    latest_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fapo_mini.dist import DistInfo
from conftest import fork_ranks

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def write_model(folder):
    """Stands in for the HF save: two files, as config.json + safetensors would be."""
    (folder / "config.json").write_text('{"model_type": "qwen3"}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)


def save(run_dir, step, keep=3, state=None):
    return save_checkpoint(run_dir, step, write_model, state or {"step": step}, {"rng": rng_state()}, ONE, keep=keep)


def test_save_three_keep_two(tmp_path):
    paths = [save(tmp_path, s, keep=2) for s in (5, 10, 15)]
    assert paths[-1] == tmp_path / "ckpt" / "step_00000015"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000010", "step_00000015"]
    assert (paths[-1] / "COMPLETE").read_text().splitlines() == [
        "model/config.json",
        "model/model.safetensors",
        "rank0.pt",
        "state.pt",
    ]
    assert latest_checkpoint(tmp_path, world_size=1) == paths[-1]
    assert load_state(paths[-1], rank=0)[0] == {"step": 15}


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path, world_size=1) is None


def test_incomplete_checkpoints_fall_back_to_previous(tmp_path):
    for s in (1, 2, 3):
        save(tmp_path, s)
    ckpt = tmp_path / "ckpt"
    (ckpt / "step_00000003" / "state.pt").unlink()
    assert latest_checkpoint(tmp_path, world_size=1) == ckpt / "step_00000002"
    (ckpt / "step_00000002" / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path, world_size=1) == ckpt / "step_00000001"
    (ckpt / "step_00000001" / "model" / "model.safetensors").unlink()
    assert latest_checkpoint(tmp_path, world_size=1) is None


def test_leftover_tmp_folder_is_ignored_and_cleaned(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / "ckpt" / ".tmp-step_00000002"
    leftover.mkdir()
    for name in ("state.pt", "rank0.pt", "COMPLETE"):
        (leftover / name).write_text("")  # a save that died just before its rename
    assert latest_checkpoint(tmp_path, world_size=1) == tmp_path / "ckpt" / "step_00000001"
    save(tmp_path, 3)
    assert not leftover.exists()


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 4, state={"step": 4, "v": "old"})
    save(tmp_path, 4, state={"step": 4, "v": "new"})
    assert load_state(latest_checkpoint(tmp_path, 1), 0)[0]["v"] == "new"


def test_world_size_change_is_an_error(tmp_path):
    save(tmp_path, 1)
    with pytest.raises(ValueError, match="saved by 1 ranks, this run has 2"):
        latest_checkpoint(tmp_path, world_size=2)


def draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + np.random.randn(1).tolist(),
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_round_trip_through_save_and_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn(1)  # leave a cached gaussian in both states
    path = save_checkpoint(tmp_path, 1, write_model, {"step": 1}, {"rng": rng_state()}, ONE)
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # scramble
    assert draws() != expected
    _, rank_state = load_state(path, rank=0)  # weights_only=True inside
    set_rng_state(rank_state["rng"])
    assert draws() == expected


def test_optimizer_and_scheduler_resume_exactly(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        return model, opt, sched

    def step(model, opt, sched, x):
        model(x).square().mean().backward()
        opt.step(), sched.step(), opt.zero_grad()

    xs = torch.randn(5, 3, 4)
    model, opt, sched = make()
    for x in xs[:3]:
        step(model, opt, sched, x)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": 3, "config": {"lr": 1e-2}}
    path = save_checkpoint(tmp_path, 3, write_model, state, {"rng": rng_state()}, ONE)
    torch.save(model.state_dict(), path / "weights.pt")  # the model folder's job in real runs
    for x in xs[3:]:
        step(model, opt, sched, x)

    resumed, opt2, sched2 = make()
    state, _ = load_state(path, rank=0)
    resumed.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
    opt2.load_state_dict(state["optimizer"]), sched2.load_state_dict(state["scheduler"])
    for x in xs[3:]:
        step(resumed, opt2, sched2, x)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_check_config_names_the_field():
    saved = {"lam": 1.0, "lr": 1e-6, "steps": 100, "out": "runs/a"}
    check_config(saved, {**saved, "steps": 200, "out": "runs/b"}, ignore=("steps", "out"))
    with pytest.raises(ValueError, match=r"--lam is 0\.0 here, 1\.0 in the checkpoint; pass --fresh"):
        check_config(saved, {**saved, "lam": 0.0}, ignore=("steps",))
    with pytest.raises(ValueError, match=r"--steps is 200 here, 100 in the checkpoint"):
        check_config(saved, {**saved, "steps": 200})
    with pytest.raises(ValueError, match=r"--seed is 3 here, unset in the checkpoint"):
        check_config(saved, {**saved, "seed": 3})
    with pytest.raises(ValueError, match=r"--lr is unset here, 1e-06 in the checkpoint"):
        check_config(saved, {k: v for k, v in saved.items() if k != "lr"})


def test_check_config_compares_paths_as_the_files_they_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    saved = {"model": "runs/sft", "data": "train.jsonl", "lam": 1.0}
    for model in ("runs/sft/", "./runs/sft", str(tmp_path / "runs" / "sft")):
        check_config(saved, {**saved, "model": model, "data": str(tmp_path / "train.jsonl")}, paths=("model", "data"))
    with pytest.raises(ValueError, match=r"--model is 'runs/sft2' here, 'runs/sft' in the checkpoint"):
        check_config(saved, {**saved, "model": "runs/sft2"}, paths=("model", "data"))
    with pytest.raises(ValueError, match=r"--model is 'runs/sft/' here"):     # not a path key: compared as text
        check_config(saved, {**saved, "model": "runs/sft/"})


def test_graceful_stop_on_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested and not stop.should_stop(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert stop.requested and stop.should_stop(torch.device("cpu"))
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_graceful_stop_second_sigint_interrupts():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested  # the first Ctrl-C only asks
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def _rank_main(rank, port, world_size, run_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = dist.setup()
    assert (info.rank, info.world_size, info.is_main) == (rank, world_size, rank == 0)
    total = dist.all_reduce_sum(torch.tensor([rank + 1.0]))
    assert total.item() == sum(range(1, world_size + 1))

    def write_model_rank(folder):
        (folder / f"written_by_rank{rank}").write_text("")

    save_checkpoint(run_dir, 7, write_model_rank, {"step": 7}, {"rank": rank}, info)
    assert latest_checkpoint(run_dir, world_size) is not None  # visible to every rank on return
    dist.cleanup()


@pytest.mark.skipif(torch.cuda.is_available(), reason="forks CPU ranks (gloo); CUDA must not be initialised")
def test_two_ranks_save_one_checkpoint(tmp_path):
    assert fork_ranks(_rank_main, 2, 2, tmp_path) == [0, 0]
    ckpt = latest_checkpoint(tmp_path, world_size=2)
    assert ckpt == tmp_path / "ckpt" / "step_00000007"
    listed = (ckpt / "COMPLETE").read_text().splitlines()
    assert listed == ["model/written_by_rank0", "rank0.pt", "rank1.pt", "state.pt"]  # write_model ran on rank 0 only
    assert [load_state(ckpt, r)[1] for r in range(2)] == [{"rank": 0}, {"rank": 1}]
