"""The demo's results: results.json, curves.png and a markdown table, from the run folders.

Why this file exists: demo.sh leaves one folder per RL run (metrics.jsonl) and one JSON
summary per evaluation (the last line rollout.py prints); this file only gathers them,
averages over seeds and draws the curves. It computes no metric of its own.

    python -m fapo_mini.report --out runs/demo

Layout it reads (written by demo.sh):
    OUT/rl/<arm>_s<seed>/metrics.jsonl      per-step training metrics
    OUT/eval/<arm>_s<seed>_<split>.json     rollout.py summary on a held-out split
    OUT/eval/genrm_<name>.json              rollout.py summary of a GenRM on critic_test
    OUT/times.tsv                           stage <tab> seconds
"""
import argparse
import json
import math
import re
from pathlib import Path

ARMS = ("grpo", "fapo", "fapo_oracle")
LABELS = {"grpo": "GRPO (lam 0)", "fapo": "FAPO (GenRM)", "fapo_oracle": "FAPO (oracle)"}


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def collect(out: Path) -> dict:
    res = {"arms": {}, "genrm": {}, "stage_seconds": {}}
    for f in sorted((out / "eval").glob("*.json")):
        summary = json.loads(f.read_text().strip().splitlines()[-1])
        m = re.fullmatch(r"(.+)_s(\d+)_(test|hard)", f.stem)
        if f.stem.startswith("genrm_"):
            res["genrm"][f.stem.removeprefix("genrm_")] = summary
        elif m:
            arm, seed, split = m.group(1), int(m.group(2)), m.group(3)
            a = res["arms"].setdefault(arm, {"per_seed": {}})
            a["per_seed"].setdefault(seed, {})[split] = {k: summary.get(k) for k in ("accuracy", "fp_ratio", "pass@1", "kinds")}
    for arm, a in res["arms"].items():
        seeds = sorted(a["per_seed"])
        for split, prefix in (("test", ""), ("hard", "hard_")):
            for key in ("accuracy", "fp_ratio"):
                vals = [a["per_seed"][s].get(split, {}).get(key) for s in seeds]
                a[prefix + key] = mean(vals)
                a["per_seed_" + prefix + key] = vals
        a["seeds"] = seeds
        a["per_seed"] = {str(s): v for s, v in a["per_seed"].items()}
    if (out / "times.tsv").exists():
        for line in (out / "times.tsv").read_text().splitlines():
            name, sec = line.split("\t")
            res["stage_seconds"][name] = res["stage_seconds"].get(name, 0.0) + float(sec)
        res["total_seconds"] = sum(res["stage_seconds"].values())
    return res


def curves(out: Path, path: Path):
    """Training accuracy and oracle flawed-positive ratio against step; mean over seeds,
    shaded min..max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm in ARMS:
        runs = [[json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
                for d in sorted((out / "rl").glob(f"{arm}_s*")) if (d / "metrics.jsonl").exists()]
        runs = [r for r in runs if r]
        if not runs:
            continue
        T = min(len(r) for r in runs)
        steps = [runs[0][t]["step"] for t in range(T)]
        for ax, key in zip(axes, ("accuracy", "fp_ratio")):
            vals = [[r[t].get(key) if r[t].get(key) is not None else math.nan for r in runs] for t in range(T)]
            ax.plot(steps, [sum(v) / len(v) for v in vals], label=LABELS.get(arm, arm))
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2)
    for ax, title in zip(axes, ("training accuracy", "flawed-positive ratio (oracle)")):
        ax.set_xlabel("RL step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(res: dict) -> str:
    f = lambda x: "-" if x is None else f"{x:.3f}"
    rows = ["| arm | seeds | accuracy (test) | fp ratio (test) | accuracy (hard) | fp ratio (hard) |",
            "|---|---|---|---|---|---|"]
    for arm in [a for a in ARMS if a in res["arms"]] + [a for a in res["arms"] if a not in ARMS]:
        a = res["arms"][arm]
        rows.append(f"| {LABELS.get(arm, arm)} | {len(a['seeds'])} | {f(a['accuracy'])} | {f(a['fp_ratio'])} | "
                    f"{f(a['hard_accuracy'])} | {f(a['hard_fp_ratio'])} |")
    if res["genrm"]:
        rows += ["", "| GenRM | FP precision | FP recall | FP F1 | ProcessBench F1 | valid |", "|---|---|---|---|---|---|"]
        for name, s in res["genrm"].items():
            rows.append(f"| {name} | {f(s.get('fp_precision'))} | {f(s.get('fp_recall'))} | {f(s.get('fp_f1'))} | "
                        f"{f(s.get('pb_f1'))} | {f(s.get('valid'))} |")
    if res.get("total_seconds"):
        rows += ["", "wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in res["stage_seconds"].items())
                 + f"; total {res['total_seconds'] / 60:.1f} min"]
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the demo's output folder")
    args = ap.parse_args()
    from fapo_mini.errors import UserError
    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"--out {out}: no such folder (the demo's output folder)")
    evals = sorted((out / "eval").glob("*.json"))
    if not evals:
        raise UserError(f"{out / 'eval'}: no rollout summaries (*.json); run ./demo.sh first")
    for f in evals:  # each holds rollout.py's last line, its JSON summary
        lines = f.read_text().strip().splitlines()
        try:
            ok = bool(lines) and isinstance(json.loads(lines[-1]), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise UserError(f"{f}:{max(len(lines), 1)}: not a rollout.py JSON summary (did that stage fail?)")
    res = collect(out)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    curves(out, out / "curves.png")
    print(table(res))


if __name__ == "__main__":
    from fapo_mini.errors import cli
    cli(main)
