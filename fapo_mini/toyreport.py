"""The demo's results: results.json, curves.png and markdown tables, from the run folders.

Why this file exists: demo.sh leaves one folder per RL run (metrics.jsonl), one JSON
summary per (run, held-out split) from toyeval.py, and one per GenRM evaluation from
rollout.py; this file only gathers them, reduces over seeds (mean, min..max) and draws
the curves. It computes no metric of its own.

    python -m fapo_mini.toyreport --out runs/demo

Layout it reads (written by demo.sh):
    OUT/rl/<arm>_s<seed>/metrics.jsonl      per-step training metrics
    OUT/early/<arm>_s<seed>/metrics.jsonl   the same for the early-phase runs from the weak warm start (--full)
    OUT/eval/<arm>_s<seed>_<split>.json     toyeval summary of a final policy on test / hard / shift
    OUT/eval/warm_start_<split>.json        the same for the policy warm start
    OUT/eval_top_p/...                      the same at the paper's evaluation setting (top-p 0.7), test and shift (--full)
    OUT/eval/genrm_<name>.json              rollout.py summary of a GenRM on critic_test: genrm_sft (the warm
                                            start) and genrm_rl_<step|outcome>_s<seed> (its RL runs)
    OUT/genrm_rl/<step|outcome>_s<seed>/metrics.jsonl   per-step metrics of the GenRM's RL runs
    OUT/times.tsv                           stage <tab> wall seconds, one stage after another
    OUT/jobs.tsv                            job <tab> seconds, for the jobs the last stage ran side by side
"""
import argparse
import json
import math
import os
import re
import subprocess
from pathlib import Path

from fapo_mini.errors import UserError, cli

ARMS = ("grpo", "fapo", "fapo_oracle", "strict")
LABELS = {"grpo": "GRPO (lam 0)", "fapo": "FAPO (GenRM, lam 1)", "fapo_oracle": "FAPO (oracle, lam 1)",
          "strict": "strict (oracle, lam 2)", "genrm_step": "GenRM, step-wise reward", "genrm_outcome": "GenRM, outcome-only reward"}
COLORS = {"grpo": "C0", "fapo": "C1", "fapo_oracle": "C2", "strict": "C3", "genrm_step": "C4", "genrm_outcome": "C5"}  # one colour per arm in every panel
SPLITS = ("test", "hard", "shift")
KEYS = ("accuracy", "fp_ratio", "cue_shortcut", "plain_accuracy")
EARLY_STEPS = 10  # the early phase: mean training accuracy over RL steps 1..EARLY_STEPS (docs/method.md §5)
EARLY_ARMS = ("fapo_oracle", "strict")  # lam 1 against lam 2 from the weak warm start, same judge
GENRM_KEYS = ("fp_precision", "fp_recall", "fp_f1", "pb_f1", "pb_correct_acc", "exact_step_acc", "late_flag_share",
              "early_flag_share", "valid")                  # rollout.py's critic summary (docs/method.md §7)
GENRM_REWARDS = ("step", "outcome")                         # train_genrm.py --reward


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def read_metrics(run: Path) -> list[dict]:
    """The lines of run/metrics.jsonl ([] when there is none). A torn last line, what a run killed
    while writing leaves, is left out; an unreadable line before it is a UserError naming it."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    out = []
    for k, (i, line) in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise UserError(f"{path}:{i}: not a JSON line") from None
    return out


def seed_runs(folder: Path, arm: str) -> dict[int, list[dict]]:
    """{seed: metrics lines} of the runs folder/<arm>_s<seed> that logged a step."""
    runs = {}
    for d in folder.glob(f"{arm}_s*") if folder.is_dir() else []:
        m = re.fullmatch(re.escape(arm) + r"_s(\d+)", d.name)
        if m and (lines := read_metrics(d)):
            runs[int(m.group(1))] = lines
    return dict(sorted(runs.items()))


def early_phase(out: Path) -> dict | None:
    """The early-phase runs (docs/method.md §5): per arm and seed, training accuracy and the oracle's
    fp ratio per step, step-1 accuracy and the mean over steps 1..EARLY_STEPS; and, paired by seed
    (same prompts each step), lam 1 minus strict over those steps."""
    arms = {}
    for arm in EARLY_ARMS:
        per_seed = {s: {"accuracy": [r.get("accuracy") for r in lines], "fp_ratio": [r.get("fp_ratio") for r in lines],
                        "step1_accuracy": lines[0].get("accuracy"),
                        "early_accuracy": mean([r.get("accuracy") for r in lines[:EARLY_STEPS]])}
                    for s, lines in seed_runs(out / "early", arm).items()}
        if per_seed:
            a = {"seeds": list(per_seed), "per_seed": {str(s): v for s, v in per_seed.items()}}
            for key in ("step1_accuracy", "early_accuracy"):
                vals = [v[key] for v in per_seed.values()]
                a[key], a["per_seed_" + key], a["spread_" + key] = mean(vals), vals, spread(vals)
            arms[arm] = a
    if not arms:
        return None
    res = {"arms": arms, "steps": EARLY_STEPS}
    if len(arms) == 2:
        lam1, strict = (arms[a]["per_seed"] for a in EARLY_ARMS)
        seeds = [s for s in lam1 if s in strict]
        diff = [lam1[s]["early_accuracy"] - strict[s]["early_accuracy"] for s in seeds]
        res.update(paired_seeds=[int(s) for s in seeds], per_seed_lam1_minus_strict=diff,
                   lam1_minus_strict=mean(diff), spread_lam1_minus_strict=spread(diff))
    return res


def seconds(path: Path) -> dict:
    """NAME <tab> seconds lines (demo.sh's `record`), summed per name; {} when the file is absent."""
    total = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, sec = line.split("\t")
        total[name] = total.get(name, 0.0) + float(sec)
    return total


def machine() -> dict:
    """Where the run happened: the commit, the CPU model, and the env that changes kernels or threads."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "dirty": bool(git("status", "--porcelain")),
            "cpu": cpu, "cpus": os.cpu_count(),
            **{k.lower(): os.environ.get(k)
               for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DEMO_THREADS", "DEMO_SFT_RANKS", "DEMO_LANES")}}


def read_evals(folder: Path) -> tuple[dict, dict, dict]:
    """toyeval / rollout.py summaries in folder -> (arms, warm start, GenRMs). Each arm gets per_seed
    (seed -> split -> summary keys) and, per split and key, the mean, per-seed list and min..max."""
    arms, warm, genrm = {}, {}, {}
    for f in sorted(folder.glob("*.json")):
        summary = json.loads(f.read_text().strip().splitlines()[-1])
        m = re.fullmatch(r"(.+)_s(\d+)_(" + "|".join(SPLITS) + ")", f.stem)
        w = re.fullmatch(r"warm_start_(" + "|".join(SPLITS) + ")", f.stem)
        if f.stem.startswith("genrm_"):
            g = re.fullmatch(r"(.+)_s(\d+)", name := f.stem.removeprefix("genrm_"))
            name, seed = (g.group(1), g.group(2)) if g else (name, "0")      # the warm start: one SFT, seed 0
            genrm.setdefault(name, {"per_seed": {}})["per_seed"][seed] = {k: summary.get(k) for k in GENRM_KEYS}
        elif w:
            warm[w.group(1)] = {k: summary.get(k) for k in (*KEYS, "cue_accuracy", "kinds")}
        elif m:
            arm, seed, split = m.group(1), int(m.group(2)), m.group(3)
            a = arms.setdefault(arm, {"per_seed": {}})
            a["per_seed"].setdefault(seed, {})[split] = {k: summary.get(k) for k in (*KEYS, "cue_accuracy", "pass@1", "kinds")}
    for a in arms.values():
        seeds = sorted(a["per_seed"])
        for split in SPLITS:
            prefix = "" if split == "test" else split + "_"
            for key in KEYS:
                vals = [a["per_seed"][s].get(split, {}).get(key) for s in seeds]
                a[prefix + key], a["per_seed_" + prefix + key], a["spread_" + prefix + key] = mean(vals), vals, spread(vals)
        a["seeds"] = seeds
        a["per_seed"] = {str(s): v for s, v in a["per_seed"].items()}
    if "grpo" in arms:  # test accuracy minus GRPO's, paired by seed (the same RL prompts and evaluation seed)
        base = arms["grpo"]["per_seed"]
        for arm, a in arms.items():
            diff = [v["test"]["accuracy"] - base[s]["test"]["accuracy"] for s, v in a["per_seed"].items()
                    if "test" in v and "test" in base.get(s, {})]
            if arm != "grpo" and diff:
                a["per_seed_test_minus_grpo"], a["test_minus_grpo"], a["spread_test_minus_grpo"] = diff, mean(diff), spread(diff)
    return arms, warm, genrm


def genrm_block(genrm: dict, out: Path) -> dict:
    """Adds to each GenRM (sft, rl_step, rl_outcome) the RL runs' sampling entropy and share of
    equal-reward groups (means over their steps, per seed), then every key's mean over seeds."""
    for reward in GENRM_REWARDS:
        for seed, lines in seed_runs(out / "genrm_rl", reward).items():
            g = genrm.get(f"rl_{reward}", {}).get("per_seed", {}).get(str(seed))
            if g is not None:
                g["entropy"] = mean([m.get("entropy") for m in lines])
                g["equal_reward_groups"] = mean([m.get("zero_var_groups") for m in lines])
    for g in genrm.values():
        for k in (*GENRM_KEYS, "entropy", "equal_reward_groups"):
            vals = [v.get(k) for v in g["per_seed"].values()]
            if any(v is not None for v in vals):
                g[k], g["spread_" + k] = mean(vals), spread(vals)
        g["seeds"] = sorted(g["per_seed"], key=int)
    order = ["sft", *(f"rl_{r}" for r in GENRM_REWARDS)]              # the warm start first
    return dict(sorted(genrm.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def collect(out: Path) -> dict:
    arms, warm, genrm = read_evals(out / "eval")
    genrm = genrm_block(genrm, out)
    res = {"arms": arms, "warm_start": warm, "genrm": genrm, "machine": machine()}
    for arm, a in arms.items():
        early = [mean([r.get("accuracy") for r in read_metrics(out / "rl" / f"{arm}_s{s}")[:EARLY_STEPS]]) for s in a["seeds"]]
        a["early_accuracy"], a["per_seed_early_accuracy"], a["spread_early_accuracy"] = mean(early), early, spread(early)
    top_p = sorted((out / "eval_top_p").glob("*.json"))
    if top_p:  # the same policies at the paper's evaluation setting (demo.sh: temperature 1.0, top-p 0.7)
        first = json.loads(top_p[0].read_text().strip().splitlines()[-1])
        arms_p, warm_p, _ = read_evals(out / "eval_top_p")
        res["top_p_eval"] = {"temperature": first.get("temperature"), "top_p": first.get("top_p"),
                             "arms": arms_p, "warm_start": warm_p}
    if (early := early_phase(out)) is not None:
        res["early_phase"] = early
    res["stage_seconds"] = seconds(out / "times.tsv")
    if res["stage_seconds"]:
        res["total_seconds"] = sum(res["stage_seconds"].values())
    res["job_seconds"] = seconds(out / "jobs.tsv")    # jobs side by side add up to more than the wall time
    return res


def plot_runs(ax, runs: list[list[dict]], key: str, arm: str):
    """Mean over runs of `key` against RL step, shaded min..max."""
    T = min(len(r) for r in runs)
    steps = [runs[0][t]["step"] for t in range(T)]
    vals = [[r[t].get(key) if r[t].get(key) is not None else math.nan for r in runs] for t in range(T)]
    ax.plot(steps, [sum(v) / len(v) for v in vals], label=f"{LABELS.get(arm, arm)}, {len(runs)} seeds", color=COLORS.get(arm))
    ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15, color=COLORS.get(arm))


def curves(out: Path, path: Path):
    """Policy RL: training-prompt accuracy and the oracle's flawed-positive ratio against RL step, and
    with early-phase runs their training accuracy; GenRM RL (a second row): decision accuracy and
    exact-step accuracy of its sampled critiques, per reward. Means over seeds, shaded min..max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    early = {arm: list(seed_runs(out / "early", arm).values()) for arm in EARLY_ARMS}
    early = {arm: runs for arm, runs in early.items() if runs}
    critic = {reward: list(seed_runs(out / "genrm_rl", reward).values()) for reward in GENRM_REWARDS}
    critic = {reward: runs for reward, runs in critic.items() if runs}
    cols = 3 if early else 2
    fig, axes = plt.subplots(2 if critic else 1, cols, figsize=(5.5 * cols, 8 if critic else 4), squeeze=False)
    for arm in ARMS:
        runs = list(seed_runs(out / "rl", arm).values())
        for ax, key in zip(axes[0], ("accuracy", "fp_ratio")) if runs else ():
            plot_runs(ax, runs, key, arm)
    titles = ["policy: accuracy on training prompts", "policy: flawed-positive ratio (oracle)"]
    for arm, runs in early.items():
        plot_runs(axes[0][2], runs, "accuracy", arm)
    if early:
        titles.append("early phase: accuracy on training prompts, weak warm start")
        axes[0][2].legend(fontsize=8)
    for reward, runs in critic.items():
        for ax, key in zip(axes[1], ("decision_acc", "exact_step_acc")):
            plot_runs(ax, runs, key, f"genrm_{reward}")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    if critic:
        axes[1][0].set_title("GenRM RL: decision accuracy of its samples (flawed or clean right)", fontsize=10)
        axes[1][1].set_title("GenRM RL: exact first-error step, its samples on flawed rows", fontsize=10)
        axes[1][0].legend(fontsize=8)
        for ax in axes[1][2:]:
            ax.axis("off")
    for ax in axes.flat:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(res: dict) -> str:
    f = lambda x: "-" if x is None else f"{x:.3f}"
    ms = lambda a, k: f"{f(a.get(k))} ({'..'.join(f(x) for x in a['spread_' + k])})" if a.get("spread_" + k) else "-"
    arms = [a for a in ARMS if a in res["arms"]] + [a for a in res["arms"] if a not in ARMS]
    rows = ["| arm | seeds | accuracy (test) | fp ratio (test) | accuracy (shift) | accuracy (hard) "
            f"| shortcut on cue (test) | accuracy, test without cue | train accuracy, steps 1-{EARLY_STEPS} |",
            "|---|---|---|---|---|---|---|---|---|"]
    if res["warm_start"]:
        w = res["warm_start"]
        g = lambda s, k: f(w.get(s, {}).get(k))
        rows.append(f"| warm start | - | {g('test', 'accuracy')} | {g('test', 'fp_ratio')} | {g('shift', 'accuracy')} | "
                    f"{g('hard', 'accuracy')} | {g('test', 'cue_shortcut')} | {g('test', 'plain_accuracy')} | - |")
    for arm in arms:
        a = res["arms"][arm]
        rows.append(f"| {LABELS.get(arm, arm)} | {len(a['seeds'])} | {ms(a, 'accuracy')} | {ms(a, 'fp_ratio')} | "
                    f"{ms(a, 'shift_accuracy')} | {ms(a, 'hard_accuracy')} | {ms(a, 'cue_shortcut')} | "
                    f"{ms(a, 'plain_accuracy')} | {ms(a, 'early_accuracy')} |")
    rows += ["", "| arm | seed | accuracy (test) | fp ratio (test) | accuracy (shift) | accuracy (hard) | shortcut on cue (test) "
             "| accuracy, test without cue |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        for seed, s in res["arms"][arm]["per_seed"].items():
            g = lambda sp, k: f(s.get(sp, {}).get(k))
            rows.append(f"| {arm} | {seed} | {g('test', 'accuracy')} | {g('test', 'fp_ratio')} | {g('shift', 'accuracy')} | "
                        f"{g('hard', 'accuracy')} | {g('test', 'cue_shortcut')} | {g('test', 'plain_accuracy')} |")
    for name, block in (("top-p 1.0", res["arms"]), ("top-p 0.7", res.get("top_p_eval", {}).get("arms", {}))):
        paired = [(arm, block[arm]["per_seed_test_minus_grpo"]) for arm in ARMS
                  if "per_seed_test_minus_grpo" in block.get(arm, {})]
        if paired:
            rows += ["", f"test accuracy minus GRPO's, paired by seed ({name}): "
                     + "; ".join(f"{arm} " + ", ".join(f"{d:+.3f}" for d in diff) for arm, diff in paired)]
    if tp := res.get("top_p_eval"):
        rows += ["", f"| temperature {tp['temperature']}, top-p {tp['top_p']} (the paper's evaluation) | seeds | "
                 "accuracy (test) | fp ratio (test) | accuracy (shift) | accuracy, test without cue |", "|---|---|---|---|---|---|"]
        if w := tp["warm_start"]:
            rows.append(f"| warm start | - | {f(w.get('test', {}).get('accuracy'))} | {f(w.get('test', {}).get('fp_ratio'))} | "
                        f"{f(w.get('shift', {}).get('accuracy'))} | {f(w.get('test', {}).get('plain_accuracy'))} |")
        for arm in [a for a in ARMS if a in tp["arms"]] + [a for a in tp["arms"] if a not in ARMS]:
            a = tp["arms"][arm]
            rows.append(f"| {LABELS.get(arm, arm)} | {len(a['seeds'])} | {ms(a, 'accuracy')} | {ms(a, 'fp_ratio')} | "
                        f"{ms(a, 'shift_accuracy')} | {ms(a, 'plain_accuracy')} |")
    if ep := res.get("early_phase"):
        rows += ["", f"| early phase, weak warm start | seeds | step-1 accuracy | train accuracy, steps 1-{EARLY_STEPS} "
                 "| train accuracy, last step | fp ratio, last step |", "|---|---|---|---|---|---|"]
        for arm, a in ep["arms"].items():
            last = lambda k: mean([v[k][-1] for v in a["per_seed"].values()])
            rows.append(f"| {LABELS[arm]} | {len(a['seeds'])} | {ms(a, 'step1_accuracy')} | {ms(a, 'early_accuracy')} | "
                        f"{f(last('accuracy'))} | {f(last('fp_ratio'))} |")
        if "per_seed_lam1_minus_strict" in ep:
            rows += ["", f"lam 1 minus strict, train accuracy over steps 1-{EARLY_STEPS}, per seed: "
                     + ", ".join(f"{d:+.3f}" for d in ep["per_seed_lam1_minus_strict"])]
    if res["genrm"]:
        cols = (("fp_precision", "FP precision"), ("fp_recall", "FP recall"), ("fp_f1", "FP F1"), ("pb_f1", "ProcessBench F1"),
                ("exact_step_acc", "exact step (flawed)"), ("late_flag_share", "late flags"), ("valid", "valid"),
                ("entropy", "entropy (RL)"), ("equal_reward_groups", "equal-reward groups (RL)"))
        rows += ["", "| GenRM on critic_test (greedy) | seeds | " + " | ".join(c for _, c in cols) + " |",
                 "|---" * (len(cols) + 2) + "|"]
        for name, g in res["genrm"].items():
            rows.append(f"| {name} | {len(g['seeds'])} | " + " | ".join(ms(g, k) if len(g["seeds"]) > 1 else f(g.get(k))
                                                                   for k, _ in cols) + " |")
        rows += ["", "| GenRM | seed | " + " | ".join(c for _, c in cols[:7]) + " |", "|---" * 9 + "|"]
        for name, g in res["genrm"].items():
            for seed, v in g["per_seed"].items():
                rows.append(f"| {name} | {seed} | " + " | ".join(f(v.get(k)) for k, _ in cols[:7]) + " |")
    if res.get("total_seconds"):
        rows += ["", "wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in res["stage_seconds"].items())
                 + f"; total {res['total_seconds'] / 60:.1f} min"]
    if res.get("job_seconds"):
        rows += ["", "of which side by side (seconds per kind of job, summed): "
                 + ", ".join(f"{k} {v:.0f}s" for k, v in res["job_seconds"].items())]
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the demo's output folder")
    args = ap.parse_args()
    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"--out {out}: no such folder (the demo's output folder)")
    evals = sorted((out / "eval").glob("*.json")) + sorted((out / "eval_top_p").glob("*.json"))
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
    cli(main)
