"""Scoring a policy's samples: avg@n, pass@k and the flawed-positive ratio.

Why this file exists: rollout.py scores a checkpoint on a file, and the trainers score the
live policy on held-out rows every --eval-every steps (fapo_mini/rl.py); both must give the
same numbers for the same samples. Every metric is first a (numerator, denominator) pair,
so the trainers can sum them over ranks before dividing, exactly as their training metrics.

Conventions (docs/method.md §8): `accuracy` is the paper's avg@n, the mean correctness of
all n samples of every prompt; pass@k is Chen et al.'s unbiased estimator, averaged over
prompts; the flawed-positive ratio is flawed / correct, by the task's exact oracle where it
has one (`fp_ratio`) and by a judge where one is given (`judge_fp_ratio`).
"""
import math

from fapo_mini.tasks import is_correct, task_of


def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def policy_counts(rows: list[dict], n: int, oracle: bool, judge=None) -> dict:
    """rows: n consecutive samples per prompt, each row with its `response`. Adds `correct` to every
    row, `flawed` to correct rows whose task has an oracle, `flawed_genrm` to correct rows when a
    judge is given. Returns metric -> (numerator, denominator): accuracy, pass@k for k = 1, 2, 4, ..
    <= n, and fp_ratio when `oracle` (the caller decides it from the whole data set, so that every
    rank reports the same keys), judge_fp_ratio / judge_invalid / judge_truncated with a judge."""
    for r in rows:
        r["correct"] = is_correct(r, r["response"])
        first_error = task_of(r).first_error
        if first_error is not None and r["correct"]:
            r["flawed"] = first_error(r, r["response"]) != -1
    pos = [r for r in rows if r["correct"]]
    counts = {"accuracy": (len(pos), len(rows))}                     # avg@n
    per_prompt = [sum(r["correct"] for r in rows[i:i + n]) for i in range(0, len(rows), n)]
    k = 1
    while k <= n:
        counts[f"pass@{k}"] = (sum(pass_at_k(n, c, k) for c in per_prompt), len(per_prompt))
        k *= 2
    if oracle:
        known = [r for r in pos if "flawed" in r]
        counts["fp_ratio"] = (sum(r["flawed"] for r in known), len(known))
    if judge is not None:
        v = judge(pos, [r["response"] for r in pos])
        for r, f in zip(pos, v.flawed):
            r["flawed_genrm"] = f
        counts.update(judge_fp_ratio=(sum(v.flawed), len(pos)), judge_invalid=(v.invalid, len(pos)),
                      judge_truncated=(v.truncated, len(pos)))
    return counts


def ratios(counts: dict) -> dict:
    """metric -> numerator / denominator, None where nothing was counted."""
    return {k: num / den if den else None for k, (num, den) in counts.items()}
