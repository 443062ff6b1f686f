"""The toy world's GenRM data: its compact prompt, the critique it learns, and its rows.

Why this file exists: the paper trains its GenRM on correct-answer solutions labelled with
their first wrong step (FAPO-Critic, paper §4.1; docs/method.md §3), about half of them flawed.
Here the solutions are the toy policy's own correct rollouts, balanced flawed / clean, and the
label is exact (`toyworld.first_error`), and the prompt is a compact numbered listing
instead of the long FAPO-Critic template, which a 4-layer model cannot read. The rows are
in verl's format, so train_genrm.py and rollout.py treat them like real critic rows.

    python -m fapo_mini.toycritic --rollouts R.jsonl --out DIR [--teacher-fill N]

R.jsonl is rollout.py's output on toy policy rows; DIR gets critic_train.jsonl,
critic_test.jsonl (held out by prompt) and sft_genrm.jsonl (warm-start critiques).
"""
import argparse
import os
import random

from fapo_mini.errors import UserError, cli
from fapo_mini.toyworld import check_toy_prompts, first_error, is_correct, parse_prompt, solution_lines, teacher_solution, write_jsonl


def as_written(line: str) -> str:
    """A solution line as the critic reads and copies it: its last `=` (before the result) as `|`,
    so that neither the listing nor the copy reads as an equation to finish: `b=7+5=2` -> `b=7+5|2`,
    `ans=6` -> `ans|6`."""
    head, sep, result = line.rpartition("=")
    return f"{head}|{result}" if sep else line


def critic_prompt(prompt: str, solution: str) -> str:
    """Problem line, the solution's lines as written (`as_written`) numbered from 0, then a `check`
    marker line.

    >>> print(critic_prompt("a=7;b=a+5;c=b*3;?c\\n", "b=7+5=2\\nc=2*3=5\\nans=6"), end="")
    a=7;b=a+5;c=b*3;?c
    0:b=7+5|2
    1:c=2*3|5
    2:ans|6
    check
    """
    listing = "".join(f"{i}:{as_written(line)}\n" for i, line in enumerate(solution_lines(solution)))
    return prompt.rstrip("\n") + "\n" + listing + "check\n"


def teacher_critique(prompt: str, solution: str, rng: random.Random | None = None,
                     symptom_share: float = 0.0, alarm_share: float = 0.0) -> str:
    """The toy GenRM's target: per line i, the solution's line i copied as written (`as_written`),
    the right line i (re-solved from the prompt), then ok / wrong; it stops at the first line it
    calls wrong.

    The copy comes first and is the listing's line token for token, so copying it is a plain
    look-up (when the right line came first, the critic copied its own digits instead of the
    solution's and called wrong digits right). The right line carries the true values down the
    chain (a 4-layer model cannot find the first error in one shot), and the `|` keeps the
    equation prior from finishing the copy with the right digit. The two results to compare sit
    8 tokens apart on every step line.

    With `rng`, the teacher is the sloppy one the warm start learns from (docs/toyworld.md,
    "The GenRM's world"), in two stated shares:
    - symptom_share: on a wrong step line that has a next line, it says ok and flags the next
      line, where the solution's chain visibly breaks (the symptom, not the cause);
    - alarm_share: on a right step line with a `*`, it says wrong (a false alarm: a clean
      solution flagged, or a flawed one flagged early).
    Without `rng` it is exact: its box is `first_error`.

    >>> print(teacher_critique("a=7;b=a+5;c=b*3;?c\\n", "b=7+5=2\\nc=2*3=5\\nans=6"))
    0:b=7+5|2 b=7+5=2 ok
    1:c=2*3|5 c=2*3=6 wrong
    \\boxed{1}
    """
    allowed, lines = parse_prompt(prompt).allowed_lines(), solution_lines(solution)
    err = first_error(prompt, solution)
    flag = err if rng is None else sloppy_flag(allowed, lines, err, rng, symptom_share, alarm_share)
    last = flag if flag != -1 else max(len(lines), len(allowed)) - 1
    out = [f"{i}:{as_written(lines[i]) if i < len(lines) else 'none'} {allowed[i] if i < len(allowed) else 'end'} "
           f"{'wrong' if i == flag else 'ok'}" for i in range(last + 1)]
    return "\n".join(out) + "\n\\boxed{" + str(flag) + "}"


def sloppy_flag(allowed: list[str], lines: list[str], err: int, rng: random.Random,
                symptom_share: float, alarm_share: float) -> int:
    """The line the sloppy critic teacher calls wrong first (-1: none), walking the lines in order;
    `err` is the oracle's first wrong line, `allowed` the right lines (the ans line last)."""
    k = len(allowed) - 1                                           # lines 0..k-1 are steps
    for i in range(max(len(lines), len(allowed))):
        if i == err:
            symptom = (i < k and i + 1 < len(lines) and not lines[i].startswith("ans=")
                       and rng.random() < symptom_share)
            return i + 1 if symptom else i                         # the symptom: the next line, not the cause
        if i < k and "*" in allowed[i] and rng.random() < alarm_share:
            return i                                               # a false alarm on a right step line
    return -1


def critic_rows(items: list[tuple[str, str]]) -> list[dict]:
    """GenRM rows from (policy prompt, solution) pairs; ground_truth = first_error."""
    rows = []
    for prompt, solution in items:
        n, label = len(solution_lines(solution)), first_error(prompt, solution)
        if label >= n:
            raise ValueError(f"solution stops before its ans line (label {label} >= {n} lines): {solution!r}")
        rows.append({"data_source": "toyworld_critic", "prompt": critic_prompt(prompt, solution), "ability": "toy_critic",
                     "reward_model": {"style": "rule", "ground_truth": label},
                     "extra_info": {"total_steps": n, "policy_prompt": prompt, "solution": solution}})
    return rows


def balance_critic(items: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """As many flawed as clean items: the larger class is downsampled at random; order is kept."""
    flawed = [first_error(p, s) != -1 for p, s in items]
    groups = [[i for i, f in enumerate(flawed) if f == want] for want in (True, False)]
    m, rng = min(map(len, groups)), random.Random(seed)
    keep = {i for g in groups for i in rng.sample(g, m)}
    return [item for i, item in enumerate(items) if i in keep]


def build(args, rows):
    """The GenRM's data the way the paper made it: the warm-started policy's CORRECT rollouts
    (rollout.py output rows, read and checked by main), labelled by the oracle, balanced flawed /
    clean; then --skips pairs of teacher traces (one sloppy, one clean, on the same
    prompt); split by prompt. Labels are always the oracle's; only the warm start's critiques
    (sft_genrm.jsonl) come from the sloppy critic teacher."""
    items = list(dict.fromkeys((r["prompt"], r["response"]) for r in rows
                               if is_correct(r["response"], r["reward_model"]["ground_truth"])))
    rng = random.Random(args.seed)
    if args.teacher_fill:  # tiny runs (demo --quick): too few policy samples of one class; say so
        flawed = sum(first_error(p, s) != -1 for p, s in items)
        for style, have in (("clean", len(items) - flawed), ("sloppy", flawed)):
            prompts = sorted({r["prompt"] for r in rows if parse_prompt(r["prompt"]).steps >= 2})
            extra = [(p, teacher_solution(p, style, rng)) for p in rng.choices(prompts, k=max(0, args.teacher_fill - have))]
            items += extra
            print(f"critic: added {len(extra)} {style} teacher traces (--teacher-fill)")
    items = balance_critic(items, args.seed)
    # skipped steps: a middle step left out, the rest right (the policy seldom writes one, so the
    # teacher's `skip` style writes them), each with a clean twin: flaws the critic must place
    prompts = sorted({r["prompt"] for r in rows if parse_prompt(r["prompt"]).steps >= 3})
    skipped = rng.sample(prompts, min(args.skips, len(prompts)))
    for p in skipped:
        items += [(p, teacher_solution(p, "skip", rng)), (p, teacher_solution(p, "clean", rng))]
    items = list(dict.fromkeys(items))
    if not items:
        raise UserError(f"{args.rollouts}: no flawed or no clean correct rollouts to balance")
    prompts = sorted({p for p, _ in items})
    test = set(random.Random(args.seed).sample(prompts, int(len(prompts) * args.test_share)))
    os.makedirs(args.out, exist_ok=True)
    train_items = [it for it in items if it[0] not in test]
    write_jsonl(os.path.join(args.out, "critic_train.jsonl"), critic_rows(train_items))
    write_jsonl(os.path.join(args.out, "critic_test.jsonl"), critic_rows([it for it in items if it[0] in test]))
    teacher = random.Random(args.seed + 1)
    write_jsonl(os.path.join(args.out, "sft_genrm.jsonl"),
                [{"prompt": critic_prompt(p, s),
                  "completion": teacher_critique(p, s, teacher, args.symptom_share, args.alarm_share)}
                 for p, s in train_items])
    print(f"critic: {len(items)} correct solutions ({len(skipped)} skip / clean teacher pairs added), "
          f"{len(train_items)} train / {len(items) - len(train_items)} test")


def main():
    ap = argparse.ArgumentParser(description="GenRM rows + warm-start critiques from toy-world policy rollouts.")
    ap.add_argument("--rollouts", required=True, help="rollout.py output on toy policy rows")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--test-share", type=float, default=0.2, help="share of prompts held out for GenRM eval")
    ap.add_argument("--teacher-fill", type=int, default=0,
                    help="top each class up to N with teacher traces (only for tiny smoke runs)")
    ap.add_argument("--skips", type=int, default=0,
                    help="add N teacher traces with a middle step left out (the rest right), each with a clean twin")
    ap.add_argument("--symptom-share", type=float, default=0.0,
                    help="warm-start critiques: share of wrong step lines passed, the next line flagged")
    ap.add_argument("--alarm-share", type=float, default=0.0,
                    help="warm-start critiques: share of right `*` step lines flagged wrong")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from fapo_mini.data import load_rows, validate_rows
    from fapo_mini.preflight import check_output
    if not 0 <= args.test_share < 1:
        raise UserError("--test-share must be in [0, 1)")
    for flag in ("symptom_share", "alarm_share"):
        if not 0 <= getattr(args, flag) <= 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    if args.skips < 0:
        raise UserError(f"--skips must be >= 0, got {args.skips}")
    check_output(args.out, folder=True)
    rows = load_rows(args.rollouts)                  # file:line for a malformed line
    validate_rows(rows, args.rollouts, fields=("prompt", "response", "reward_model.ground_truth"))
    check_toy_prompts(rows, args.rollouts, ": toycritic labels rollouts with the toy world's oracle "
                                           "(rollout.py on its rows)")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row["response"], str):
            raise UserError(f"{args.rollouts}:{i}: field 'response' must be a string")
    build(args, rows)


if __name__ == "__main__":
    cli(main)
