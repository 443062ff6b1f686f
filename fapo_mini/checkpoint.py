"""Atomic checkpoints and exact resume.

A checkpoint is one folder, `run_dir/ckpt/step_XXXXXXXX/`:

    model/        the Hugging Face model folder (written by the caller's `write_model`)
    state.pt      rank 0's state: optimizer (DDP), scheduler, step, config, ...
    rank{r}.pt    each rank's own state: RNG states (each rank samples differently)
    sharded/      FSDP2 only: the sharded AdamW state, one file per rank, written with
                  torch.distributed.checkpoint (DCP) so no rank ever holds all of it
    COMPLETE      written last: the list of every file above

The model folder uses transformers' names (q_proj, k_proj, v_proj, gate_proj, up_proj); the
optimizer state, in state.pt or sharded/, follows the live model's own fused parameters (qkv_proj,
gate_up_proj), whose names rl.save lists in state.pt as `params` and rl.restore checks.

It is written under `.tmp-step_XXXXXXXX/` and renamed into place only after
every rank wrote its part and COMPLETE exists, so a crash mid-save never leaves
a half checkpoint as the newest one; `latest_checkpoint` also re-checks the
listed files and falls back to the previous checkpoint when one is missing.
A write that fails (a full disk: torch's writer then raises "[enforce fail at
inline_container.cc] ... unexpected pos", safetensors and Python raise ENOSPC)
stops every rank with one `error:` line, after the partial folder is removed,
so the last complete checkpoint stays the newest and the same command resumes.
Everything is loaded with `torch.load(weights_only=True)`: plain tensors and
containers, never pickled code.

Data order needs no state (data.batch_indices is a pure function of the step),
so with the RNG states restored a resumed run continues exactly.

Simplified away: resharding on resume (resume with the same number of ranks), asynchronous saving, fsync (a
killed process is covered, a power cut may not be), remote storage. Assumes
every rank sees the same file system.
"""

import errno
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fapo_mini.dist import DistInfo, all_reduce_sum, barrier, print0
from fapo_mini.errors import UserError

_STEP_DIR = re.compile(r"step_(\d{8,})")
_RANK_FILE = re.compile(r"rank\d+\.pt")


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Final (renamed) checkpoint folders, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    dirs = [p for p in ckpt_dir.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def save_checkpoint(
    run_dir,
    step: int,
    write_model: Callable[[Path], None],
    state: dict,
    rank_state: dict,
    dist_info: DistInfo,
    keep: int = 3,
    sharded: dict | None = None,
) -> Path:
    """Save one checkpoint atomically; every rank must call this. Returns the final folder.

    `write_model(folder)` is called on rank 0 with `folder` = `<checkpoint>/model`
    (already created) and must write the HF model folder there. `state` is
    written by rank 0, `rank_state` by every rank. Only the newest `keep`
    checkpoints are kept. `sharded` (FSDP2: a state dict of DTensors) is written by
    every rank together with DCP into `<checkpoint>/sharded`.

    The save runs in stages, and after each one the ranks agree (an all-reduce, which is
    also the barrier between stages) whether any rank failed, so they stop together
    instead of waiting for a rank that is gone. On a failure the temporary folder is
    removed and every rank raises: a failed write is a one-line UserError that says the
    disk is full (or what the OS said) and which checkpoint is kept; any other exception
    keeps its traceback on the rank that raised it.
    """
    if keep < 1 or step < 0:
        raise ValueError(f"need keep >= 1 and step >= 0, got keep={keep}, step={step}")
    ckpt_dir = Path(run_dir) / "ckpt"
    name = f"step_{step:08d}"
    tmp, final = ckpt_dir / f".tmp-{name}", ckpt_dir / name

    def make_folder():
        if dist_info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crashed save of this step
            (tmp / "model").mkdir(parents=True)

    def write_parts():
        if dist_info.is_main:
            write_model(tmp / "model")
            torch.save(state, tmp / "state.pt")
        torch.save(rank_state, tmp / f"rank{dist_info.rank}.pt")

    def write_sharded():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        try:
            dcp.save(sharded, checkpoint_id=tmp / "sharded")
        except CheckpointException as e:   # a BaseException, the same on every rank: rank -> (exception, trace)
            raise e.failures[min(e.failures)][0] from e

    def finish():
        if dist_info.is_main:
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            (tmp / "COMPLETE").write_text("".join(f + "\n" for f in files))
            if final.exists():  # saving a step again (e.g. right after a resume): replace it
                shutil.rmtree(final)
            tmp.rename(final)

    # after each stage: the folder exists before anyone writes into it; every rank wrote its part
    # before COMPLETE lists the files; nobody returns (or exits) before the checkpoint is in place
    for stage in (make_folder, write_parts, *([write_sharded] if sharded is not None else []), finish):
        error = None
        try:
            stage()
        except Exception as e:
            error = e
        if all_reduce_sum(torch.tensor([float(error is not None)], device=dist_info.device)).item():
            _failed_save(error, tmp, final, Path(run_dir), dist_info)
    if dist_info.is_main:
        for old in _step_dirs(ckpt_dir)[:-keep]:
            shutil.rmtree(old)
        for stale in ckpt_dir.glob(".tmp-*"):  # left by saves that crashed
            shutil.rmtree(stale)
    return final


def _failed_save(error: Exception | None, tmp: Path, final: Path, run_dir: Path, dist_info: DistInfo):
    """After a stage some rank failed (`error`: this rank's, None if it succeeded): remove the
    partial folder and raise, a failed write as one UserError naming the checkpoint kept."""
    why = _why(error, run_dir / "ckpt")           # before the removal: it may look at the free space
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()                                     # removed before anyone looks for the last checkpoint
    if why is None:
        raise error
    reason, full = why
    kept = latest_checkpoint(run_dir, dist_info.world_size)
    then = "free some space and" if full else "once the disk takes writes again,"
    raise UserError(f"{final}: cannot save this checkpoint: {reason}; the partial checkpoint is removed and "
                    + (f"the last complete one, {kept}, is kept: {then} run the same command to resume from it"
                       if kept else f"there is no earlier one: {then} run the same command to start over"))


def _free_bytes(folder: Path) -> int:
    """Bytes this process may still write on the disk that holds `folder` (or its nearest existing parent)."""
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _why(error: Exception | None, folder: Path) -> tuple[str, bool] | None:
    """(what went wrong, whether the disk is full) for a failed save into `folder`; None when `error`
    is no failed write (a bug: it keeps its traceback); `error` None: this rank wrote its part and
    another rank failed. A full disk shows as ENOSPC / EDQUOT from Python and safetensors ("Error
    while serializing: I/O error: No space left on device (os error 28) ..."), but torch's zip writer
    loses the errno ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598", or
    "basic_ios::clear: iostream error"): then the disk counts as full when under 1 MiB is left
    (on a full disk a write fails only once nothing is left)."""
    if error is None:
        return "another rank failed to write its part (its own error line says why)", False
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    torch_writer = ("inline_container", "PytorchStreamWriter", "iostream error")
    if isinstance(error, OSError):
        code, said = error.errno, error.strerror or text
    elif type(error).__name__ == "SafetensorError" and "I/O error" in text:
        m = re.search(r"I/O error: (.+?) \(os error (\d+)\)", text)
        code, said = (int(m[2]), m[1]) if m else (None, text)
    elif isinstance(error, RuntimeError) and any(k in text for k in torch_writer):
        code, said = None, text
    else:
        return None
    full = code in (errno.ENOSPC, errno.EDQUOT) if code is not None else _free_bytes(folder) < 2**20
    return (f"the disk is full ({said})" if full else f"the write failed ({said})"), full


def latest_checkpoint(run_dir, world_size: int) -> Path | None:
    """The newest complete checkpoint in `run_dir/ckpt`, or None.

    Skips (with a message) a checkpoint without COMPLETE or with a listed file
    missing, falling back to the previous one; ignores `.tmp-*` folders. A
    complete checkpoint saved by a different number of ranks is an error, not a
    silent fresh start (the next saves would prune the old run away).
    """
    for ckpt in reversed(_step_dirs(Path(run_dir) / "ckpt")):
        marker = ckpt / "COMPLETE"
        if not marker.is_file():
            print0(f"skipping {ckpt}: no COMPLETE marker")
            continue
        listed = marker.read_text().splitlines()
        missing = [f for f in listed if not (ckpt / f).is_file()]
        if missing or "state.pt" not in listed:
            print0(f"skipping {ckpt}: missing {missing or ['state.pt']}")
            continue
        rank_files = {f for f in listed if _RANK_FILE.fullmatch(f)}
        if rank_files != {f"rank{r}.pt" for r in range(world_size)}:
            raise ValueError(
                f"{ckpt} was saved by {len(rank_files)} ranks, this run has {world_size}; "
                "resume with the same number of processes, or pass --fresh to start over"
            )
        return ckpt
    return None


def load_state(ckpt, rank: int) -> tuple[dict, dict]:
    """(state, rank_state) of a checkpoint folder, loaded onto the CPU with weights_only=True.
    A file torch cannot read (a damaged disk, a hand edit: saves are atomic) is a ValueError
    that names it and the way out, which rl.train prints as one line."""
    ckpt = Path(ckpt)

    def read(name):
        try:
            return torch.load(ckpt / name, map_location="cpu", weights_only=True)
        except Exception as e:      # torch raises RuntimeError, EOFError, UnpicklingError, ... by the damage
            raise ValueError(f"{ckpt / name}: unreadable checkpoint file ({type(e).__name__}); delete {ckpt} to "
                             "resume from the checkpoint before it, or pass --fresh to start over") from None
    return read("state.pt"), read(f"rank{rank}.pt")


def load_sharded(ckpt, template: dict) -> dict:
    """Fill `template` (this run's own sharded state dict, same keys and shapes) in place from
    `<ckpt>/sharded` with DCP; every rank calls. Returns `template`."""
    import torch.distributed.checkpoint as dcp
    folder = Path(ckpt) / "sharded"
    if not (folder / ".metadata").is_file():
        raise ValueError(f"{folder}: no sharded optimizer state; the checkpoint was saved without --fsdp")
    dcp.load(template, checkpoint_id=folder)
    return template


def rng_state(generators: dict | None = None) -> dict:
    """Every RNG a run draws from: python `random`, numpy's global RNG, torch CPU, all CUDA devices,
    and the named torch.Generators in `generators` (e.g. the sampling GenRM's).

    numpy's state holds an ndarray, which weights_only loading refuses, so its
    key array is stored as a list of ints.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_name, np_keys.tolist(), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {name: g.get_state() for name, g in (generators or {}).items()}
    return state


def set_rng_state(state: dict, generators: dict | None = None) -> None:
    """Restore what rng_state(generators) returned (CUDA states only when CUDA is available)."""
    for name, g in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise ValueError(f"the checkpoint holds no state for the {name} generator; pass --fresh to start over")
        g.set_state(state["generators"][name])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_config(saved: dict, current: dict, ignore=(), paths=()) -> None:
    """Raise ValueError naming the first setting that differs between the saved run and this one.

    Keys in `ignore` (e.g. steps, save_every, out) may change on resume. Keys in `paths` hold
    file names and are compared as the files they name from here (`runs/sft/` is `runs/sft`,
    and so is its absolute path).
    """
    missing = object()

    def same(key, a, b):
        if key in paths and isinstance(a, str) and isinstance(b, str):
            return os.path.realpath(a) == os.path.realpath(b)
        return a == b
    for key in [*current, *(k for k in saved if k not in current)]:
        if key in ignore:
            continue
        here, there = current.get(key, missing), saved.get(key, missing)
        if not same(key, here, there):
            here_s = "unset" if here is missing else repr(here)
            there_s = "unset" if there is missing else repr(there)
            raise ValueError(
                f"config mismatch with the saved run: --{key} is {here_s} here, {there_s} in the checkpoint; "
                "pass --fresh to start over"
            )


class GracefulStop:
    """SIGINT / SIGTERM set `.requested` instead of killing the run, so the loop can save and exit 0.

        with GracefulStop() as stop:
            for step in ...:
                train_step()
                if stop.should_stop(device):
                    save_checkpoint(...); break

    A second SIGINT raises KeyboardInterrupt as usual. Under torchrun the
    workers run in their own session: a Ctrl-C reaches the torchrun agent, which
    forwards it once to every worker, then kills the workers that have not
    exited TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30) later, so the
    final save must fit in that time. torchrun itself then exits non-zero even
    though the workers exited 0.
    """

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"got {signal.Signals(signum).name}: finishing this step, saving, then exiting", flush=True)

    def should_stop(self, device: torch.device) -> bool:
        """True on every rank when any rank got a signal (signals can reach ranks a step apart)."""
        flag = torch.tensor([float(self.requested)], device=device)
        return all_reduce_sum(flag).item() > 0

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "GracefulStop":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
