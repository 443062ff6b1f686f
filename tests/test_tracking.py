"""--report-to: wandb's offline run holds metrics.jsonl's values; a missing package is one line.

wandb's .wandb record log is read back (parsed with wandb's own protobuf classes) and
compared, key by key and step by step, with metrics.jsonl, the record the trainer always
writes; the run is stopped and resumed, and must continue as the same wandb run. The
policy is the hand-built bigram model of tests/test_resume_genrm.py (rollouts that are
sometimes right without training, hence nonzero updates). TensorBoard's events are read
back in tests/test_resume_genrm.py, on the runs that test a resume anyway.
"""
import argparse
import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fapo_mini import flags, tracking
from fapo_mini.errors import UserError
from test_resume_genrm import POLICY, answer_6_rows, bigram_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    return bigram_folder(root / "policy", POLICY), answer_6_rows(root / "train.jsonl")


def train(world, out, steps, *extra, env=()):
    argv = [sys.executable, "train_policy.py", "--model", world[0], "--data", world[1], "--out", out,
            "--steps", steps, "--prompts-per-step", 4, "--group-size", 4, "--max-new-tokens", 8,
            "--lr", 1e-2, "--judge", "none", *extra]
    res = subprocess.run([str(x) for x in argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **dict(env)})
    assert res.returncode == 0, res.stderr[-3000:]


def metrics(out):
    """{key: [(step, value)]} of metrics.jsonl's numbers (None: nothing to count, not logged)."""
    curves = {}
    for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        for k, v in m.items():
            if k != "step" and v is not None:
                curves.setdefault(k, []).append((m["step"], v))
    return curves


def wandb_history(run_file):
    """The history rows of one .wandb file: wandb's LevelDB-style log of protobuf Records
    (7-byte header; per 32 KiB block, records of crc32, length, type and data; type 1 = whole,
    2 / 3 / 4 = first / middle / last piece)."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, piece, rows = Path(run_file).read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:                              # a block's tail too short for a header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        piece, pos = piece + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_holds_metrics_jsonl_and_resumes_the_same_run(world, tmp_path):
    pytest.importorskip("wandb")
    out, env = tmp_path / "out", {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    train(world, out, 1, "--report-to", "wandb", env=env)
    train(world, out, 2, "--report-to", "wandb", env=env)          # resumes at 1
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = sorted(glob.glob(str(out / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith("-" + run_id) for r in runs)   # one wandb run, resumed
    rows = [row for r in runs for row in wandb_history(Path(r) / f"run-{run_id}.wandb")]
    assert [row["_step"] for row in rows] == [1, 2]
    for key, curve in metrics(out).items():
        assert [(row["_step"], row[key]) for row in rows if key in row] == curve, key


def test_a_missing_package_is_one_usage_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)      # import fails as if not installed
    ap = flags.add_common_args(argparse.ArgumentParser(prog="train_policy.py"))
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--model", "m", "--data", "d", "--out", "o", "--report-to", "tensorboard"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "train_policy.py: error: argument --report-to: needs the tensorboard package: pip install tensorboard")
    with pytest.raises(UserError, match="--report-to tensorboard needs the tensorboard package"):
        tracking.start("tensorboard", tmp_path, {})
    assert ap.parse_args(["--model", "m", "--data", "d", "--out", "o"]).report_to == "none"
