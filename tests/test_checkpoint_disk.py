"""checkpoint.save_checkpoint when a write fails mid-save, as on a full disk, without filling a disk.

Each case saves step 1, then makes one write of the step-2 save fail the way it fails on a
full disk (torch's zip writer on the real /dev/full, torch's "unexpected pos" error, safetensors'
and Python's ENOSPC) or with another OS error, and checks: `cli` prints one `error:` line that
names the folder, the cause, the checkpoint kept and how to resume, and exits 2; step 1 still
loads and is still what `latest_checkpoint` picks; no partial folder is left. On two gloo
ranks, a failure on one rank stops both instead of leaving the other waiting.
"""
import errno
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from fapo_mini import checkpoint, dist
from fapo_mini.checkpoint import latest_checkpoint, load_state, save_checkpoint
from fapo_mini.errors import UserError, cli
from conftest import fork_ranks
from test_checkpoint import ONE, write_model

REAL_SAVE = torch.save
UNEXPECTED_POS = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"   # the error
DEV_FULL = os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def save(run_dir, step, write=write_model, sharded=None):
    return save_checkpoint(run_dir, step, write, {"step": step}, {"rank": 0}, ONE, sharded=sharded)


def failing_torch_save(monkeypatch, name, error=None):
    """torch.save fails for the file called `name`: raises `error`, or (None) writes it to
    /dev/full, a device on which every write fails with ENOSPC, so torch's own writer fails."""
    def fake(obj, path):
        if Path(path).name != name:
            return REAL_SAVE(obj, path)
        if error is None:
            return REAL_SAVE(obj, "/dev/full")
        raise error
    monkeypatch.setattr(torch, "save", fake)


def state_on_full_device(monkeypatch):
    if not DEV_FULL:
        pytest.skip("no /dev/full character device")
    failing_torch_save(monkeypatch, "state.pt")
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda folder: 0)         # what a full disk reports
    return {}


def unexpected_pos_with_space_left(monkeypatch):
    failing_torch_save(monkeypatch, "rank0.pt", RuntimeError(UNEXPECTED_POS))
    return {}


def rank_file_enospc(monkeypatch):
    failing_torch_save(monkeypatch, "rank0.pt", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return {}


def safetensors_enospc(monkeypatch):
    def write(folder):   # safetensors' message for ENOSPC, as it words its other I/O errors
        write_model(folder)
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) '
                              f'at path "{folder / ".tmpXyZ12"}"')
    return {"write": write}


def safetensors_own_error(monkeypatch):
    def write(folder):   # a real safetensors I/O error (ENOENT): the file goes into a folder that does not exist
        save_file({"w": torch.zeros(2)}, folder / "missing" / "model.safetensors")
    return {"write": write}


def complete_marker_eio(monkeypatch):
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "COMPLETE":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", write_text)
    return {}


def dcp_folder_blocked(monkeypatch):
    def write(folder):   # a file where DCP must make the sharded/ folder: its mkdir fails with EEXIST
        write_model(folder)
        (folder.parent / "sharded").write_text("")
    return {"write": write, "sharded": {"w": torch.zeros(3)}}


FULL = "free some space and run the same command to resume from it"
OTHER = "once the disk takes writes again, run the same command to resume from it"
CASES = [   # (set-up(monkeypatch) -> save()'s keywords, the cause in the error line (a regex), how it ends)
    (state_on_full_device, r"the disk is full \((basic_ios::clear: iostream error|\[enforce fail at "
                           r"inline_container\.cc:\d+\] \. unexpected pos \d+ vs \d+)\)", FULL),
    (unexpected_pos_with_space_left, re.escape(f"the write failed ({UNEXPECTED_POS})"), OTHER),
    (rank_file_enospc, re.escape("the disk is full (No space left on device)"), FULL),
    (safetensors_enospc, re.escape("the disk is full (No space left on device)"), FULL),
    (safetensors_own_error, re.escape("the write failed (No such file or directory)"), OTHER),
    (complete_marker_eio, re.escape("the write failed (Input/output error)"), OTHER),
    (dcp_folder_blocked, re.escape("the write failed (File exists)"), OTHER),
]


@pytest.mark.parametrize("set_up,cause,then", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")      # DCP in one process says so
def test_failed_write_is_one_error_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys,
                                                                       set_up, cause, then):
    first = save(tmp_path, 1)
    kwargs = set_up(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        cli(lambda: save(tmp_path, 2, **kwargs))
    monkeypatch.undo()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(re.escape(f"error: {tmp_path}/ckpt/step_00000002: cannot save this checkpoint: ") + cause
                        + re.escape(f"; the partial checkpoint is removed and the last complete one, {first}, "
                                    f"is kept: {then}") + "\n", err), err              # one line, all of it
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000001"]   # no partial folder
    assert latest_checkpoint(tmp_path, world_size=1) == first
    assert load_state(first, rank=0) == ({"step": 1}, {"rank": 0})


def test_first_save_failing_says_the_run_starts_over(tmp_path, monkeypatch):
    rank_file_enospc(monkeypatch)
    with pytest.raises(UserError) as failed:
        save(tmp_path, 1)
    assert str(failed.value) == (
        f"{tmp_path}/ckpt/step_00000001: cannot save this checkpoint: the disk is full (No space left on device); "
        "the partial checkpoint is removed and there is no earlier one: free some space and run the same command "
        "to start over")
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_a_bug_while_saving_keeps_its_traceback(tmp_path):
    """Not a failed write: the exception itself comes out (no UserError), the partial folder is still removed."""
    first = save(tmp_path, 1)

    def broken(folder):
        raise TypeError("a bug in write_model")
    with pytest.raises(TypeError, match="a bug in write_model"):
        save(tmp_path, 2, write=broken)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000001"]
    assert latest_checkpoint(tmp_path, world_size=1) == first


def _rank_main(rank, port, run_dir):
    """Saves step 1, then step 2 with rank 1's own file failing (ENOSPC); writes what each rank raised."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = dist.setup()
    save_checkpoint(run_dir, 1, write_model, {"step": 1}, {"rank": rank}, info)
    monkeypatch = pytest.MonkeyPatch()
    failing_torch_save(monkeypatch, "rank1.pt", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    try:
        save_checkpoint(run_dir, 2, write_model, {"step": 2}, {"rank": rank}, info)
    except UserError as e:
        (Path(run_dir) / f"raised_by_rank{rank}").write_text(str(e))
    monkeypatch.undo()
    dist.cleanup()


@pytest.mark.skipif(torch.cuda.is_available(), reason="forks CPU ranks (gloo); CUDA must not be initialised")
def test_one_rank_failing_stops_both(tmp_path):
    """Rank 1's write fails while rank 0's succeed: both raise (neither waits for the other at a
    barrier), rank 1 with the cause, rank 0 pointing to it, and step 1 stays the newest."""
    assert fork_ranks(_rank_main, 2, tmp_path) == [0, 0]
    first = tmp_path / "ckpt" / "step_00000001"
    tail = f"; the partial checkpoint is removed and the last complete one, {first}, is kept: "
    head = f"{tmp_path}/ckpt/step_00000002: cannot save this checkpoint: "
    assert (tmp_path / "raised_by_rank0").read_text() == (
        head + "another rank failed to write its part (its own error line says why)" + tail
        + "once the disk takes writes again, run the same command to resume from it")
    assert (tmp_path / "raised_by_rank1").read_text() == (
        head + "the disk is full (No space left on device)" + tail
        + "free some space and run the same command to resume from it")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000001"]
    assert latest_checkpoint(tmp_path, world_size=2) == first
