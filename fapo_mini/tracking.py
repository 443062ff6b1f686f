"""Experiment tracking: the metrics lines of a run, also sent to TensorBoard or wandb.

Why this file exists: metrics.jsonl is a run's record and rl.py always writes it; people
watch their runs in TensorBoard or Weights & Biases, so `--report-to` (the flag name
Hugging Face's Trainer uses) sends every line there too, from rank 0 only:

    none         metrics.jsonl only (the default)
    tensorboard  OUT/tensorboard/, through torch.utils.tensorboard (needs `pip install tensorboard`)
    wandb        a wandb run whose files go to OUT/wandb/ (needs `pip install wandb`); set
                 WANDB_MODE=offline to log without an account or network, `wandb sync` later

A resumed run continues the same curves: TensorBoard hides (purges) what the stopped run
logged after its checkpoint (after --fresh: all the old run logged), as metrics.jsonl
drops those lines; wandb resumes the same run id (kept in OUT/wandb_run_id; --fresh starts
a new one) with the RL step as wandb's step. wandb cannot take a logged step back: after
a kill (not a graceful stop, which saves at the last logged step) it keeps the killed
run's values for the redone steps and warns.

What it simplifies away: one backend per run, scalars only (no histograms, text or media);
a value that is not a number (a ratio with nothing to count: None) is skipped.
"""
import argparse
import importlib
import math
import os
import secrets
from pathlib import Path

from fapo_mini.errors import UserError

REPORT_TO = ("none", "tensorboard", "wandb")
PACKAGE = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def _require(report_to: str):
    module, package = PACKAGE[report_to]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--report-to {report_to} needs the {package} package: pip install {package}") from None


def report_to_arg(value: str) -> str:
    """argparse `type` of --report-to: a backend whose package is missing fails at parse time,
    before any model loads, as one usage line."""
    if value in PACKAGE:
        try:
            _require(value)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"--report-to {value} ")) from None
    return value


def _scalars(line: dict) -> dict:
    return {k: float(v) for k, v in line.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoard:
    def __init__(self, out: Path, resumed_at: int):
        tb = _require("tensorboard")
        # purge_step: older events from step resumed_at + 1 on are hidden, as metrics.jsonl drops those lines
        self.writer = tb.SummaryWriter(str(out / "tensorboard"), purge_step=resumed_at + 1)

    def log(self, line: dict) -> None:
        for key, value in _scalars(line).items():
            self.writer.add_scalar(key, value, global_step=line["step"])
        self.writer.flush()                                   # one RL step is long: nothing waits in a buffer


class Wandb:
    def __init__(self, out: Path, config: dict, resumed_at: int):
        wandb = _require("wandb")
        id_file = out / "wandb_run_id"
        resuming = resumed_at and id_file.is_file()                # a fresh start is a new wandb run
        run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fapo_mini"), name=out.name, id=run_id,
                              resume="allow", dir=str(out), config=config)

    def log(self, line: dict) -> None:
        self.run.log(_scalars(line), step=line["step"])


class NoTracker:
    def log(self, line: dict) -> None:
        pass


def start(report_to: str, out, config: dict, resumed_at: int = 0):
    """The tracker of a run (rank 0 only): `.log(line)` after each metrics.jsonl line.
    `resumed_at`: the checkpoint's step when the run resumes, else 0."""
    out = Path(out)
    if report_to == "tensorboard":
        return TensorBoard(out, resumed_at)
    if report_to == "wandb":
        return Wandb(out, config, resumed_at)
    if report_to == "none":
        return NoTracker()
    raise UserError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
