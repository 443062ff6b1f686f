"""The toy world: FAPO on two CPU cores, with an exact oracle for every step.

Why this file exists: real math needs GPUs, a model hub and a GenRM that is itself a
guess. Here a problem is a chain of k operations on digits mod 10, a solution writes
one line per step, and `first_error` knows the first wrong line exactly.

The flaw FAPO removes is a shortcut from a surface cue (docs/method.md §9). Some
prompts start with `#`; on 90% of those problems (RULE_SHARE) the chain returns to its
start value, so `ans=` can be read off `a` with no computation. The flawed teacher takes
that shortcut on half of the cue problems: where the rule holds its answer is right and
its reasoning absent, and outcome reward cannot tell it from a computed answer; where
the rule fails the shortcut is wrong, as a real guess sometimes is. The held-out `shift`
split keeps the cue and breaks the rule everywhere; there only a policy that computes is
right.

    prompt    a=7;b=a+5;c=b*3;?c\\n          #a=4;b=a+5;c=b+5;?c\\n   (cue: c equals a)
    solution  b=7+5=2\\nc=2*3=6\\nans=6       b=4+5=9\\nc=9+5=4\\nans=4  (the tokenizer's EOS ends it)
    shortcut                                 ans=4                    (right, flawed at line 0)

What it simplifies away: natural language, answer normalisation (the answer is one
digit), step splitting (a step is a line), and the long GenRM template (the toy
critic reads a compact numbered listing, see `toycritic.py`). Rows are written in
verl's format and the tokenizer is an ordinary Hugging Face one, so every real-data
code path runs on the toy world unchanged.
"""
import argparse
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass

from fapo_mini.byte_tokenizer import EOS, make_tokenizer  # noqa: F401  (the world's tokenizer)
from fapo_mini.errors import UserError, cli

OPS = [("+", c) for c in range(1, 10)] + [("-", c) for c in range(1, 10)] + [("*", c) for c in (3, 7, 9)]
SPLIT_STEPS = {"train": (2, 6), "test": (2, 6), "hard": (7, 10), "shift": (2, 6)}  # inclusive ranges of k
HELDOUT_SHARE = 0.2  # share of all prompts (by a stable hash) that train never sees
CUE = "#"            # the surface cue a prompt may start with
CUE_SHARE = 0.3      # train / test / hard: share of cue problems; shift: all cue, rule broken
RULE_SHARE = 0.9     # train / test / hard: share of cue problems whose chain returns to a (the rule holds)
SHORTCUT_SHARE = 0.5  # the teacher's share of shortcut traces on cue problems
STYLES = ("clean", "shortcut", "jump", "sloppy", "skip")
# the teacher's style on every problem it does not shortcut; jump and sloppy are flaws outcome
# reward mostly sees (the policy computes from what it writes, so they cost it the answer)
DEFAULT_MIX = {"clean": 0.8, "jump": 0.1, "sloppy": 0.1}
_PROMPT_RE = re.compile(r"(#?)a=(\d)((?:;[a-z]=[a-z][-+*]\d)+);\?([a-z])\n?")
_STEP_RE = re.compile(r";([a-z])=([a-z])([-+*])(\d)")


def _apply(x: int, op: str, c: int) -> int:
    return (x + c) % 10 if op == "+" else (x - c) % 10 if op == "-" else (x * c) % 10


@dataclass(frozen=True)
class Problem:
    """A chain a -> b -> c ...: `start` is a's value, `ops[i]` turns variable i into variable i+1;
    `cue` puts `#` before the prompt (it says nothing about the answer by itself)."""
    start: int
    ops: tuple[tuple[str, int], ...]  # ((op, c), ...), length k
    cue: bool = False

    @property
    def steps(self) -> int:
        return len(self.ops)

    @property
    def values(self) -> list[int]:  # true values of a, b, c, ... (k + 1 of them)
        vals = [self.start]
        for op, c in self.ops:
            vals.append(_apply(vals[-1], op, c))
        return vals

    @property
    def answer(self) -> str:
        return str(self.values[-1])

    @property
    def prompt(self) -> str:
        names = [chr(ord("a") + i) for i in range(self.steps + 1)]
        defs = [f"a={self.start}"] + [f"{names[i + 1]}={names[i]}{op}{c}" for i, (op, c) in enumerate(self.ops)]
        return (CUE if self.cue else "") + ";".join(defs) + f";?{names[-1]}\n"

    def reference_lines(self) -> list[str]:
        """The one right solution, line by line: `b=7+5=2`, ..., `ans=6`."""
        vals = self.values
        lines = [f"{chr(ord('b') + i)}={vals[i]}{op}{c}={vals[i + 1]}" for i, (op, c) in enumerate(self.ops)]
        return lines + [f"ans={vals[-1]}"]

    def allowed_lines(self) -> list[str]:
        """The lines a right solution may hold: exactly reference_lines."""
        return self.reference_lines()


def parse_prompt(prompt: str) -> Problem:
    """Read a Problem back from its prompt string (the pipeline passes strings, not objects)."""
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise ValueError(f"not a toy-world prompt: {prompt!r}")
    steps = _STEP_RE.findall(m.group(3))
    for i, (var, ref, op, c) in enumerate(steps):
        if var != chr(ord("b") + i) or ref != chr(ord("a") + i) or (op, int(c)) not in OPS:
            raise ValueError(f"toy-world prompt step {i} must define {chr(ord('b') + i)} from "
                             f"{chr(ord('a') + i)} with an op in OPS, got {var}={ref}{op}{c}: {prompt!r}")
    if m.group(4) != chr(ord("a") + len(steps)):
        raise ValueError(f"toy-world prompt must ask for its last variable: {prompt!r}")
    return Problem(int(m.group(2)), tuple((op, int(c)) for _, _, op, c in steps), cue=m.group(1) == CUE)


def check_toy_prompts(rows: list[dict], source, why: str) -> None:
    """UserError naming the first row (1-based) whose `prompt` is not a toy-world prompt;
    `why` says what needed one (the oracle, which only reads toy-world prompts)."""
    for i, row in enumerate(rows, start=1):
        try:
            parse_prompt(row["prompt"])
        except (ValueError, TypeError):
            raise UserError(f"{source}:{i}: field 'prompt' is not a toy-world prompt{why}") from None


def _to_problem(p) -> Problem:
    return p if isinstance(p, Problem) else parse_prompt(p)


# ----------------------------------------------------------------------------
# problems and splits

def is_heldout(prompt: str) -> bool:
    """Stable train / held-out membership: a sha256 bucket of the prompt string."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") % 10_000
    return bucket < HELDOUT_SHARE * 10_000


def _draw(rng: random.Random, k: int, kind: str) -> Problem | None:
    """One problem: kind 'plain' (random ops), 'cue' (the last op brings the chain back to a;
    None when no op does) or 'shift' (cue, random ops, answer != a; None when it equals a)."""
    start, ops = rng.randrange(10), [rng.choice(OPS) for _ in range(k)]
    if kind == "plain":
        return Problem(start, tuple(ops))
    if kind == "cue":
        before = Problem(start, tuple(ops[:-1])).values[-1]
        back = [o for o in OPS if _apply(before, *o) == start]
        return Problem(start, tuple(ops[:-1]) + (rng.choice(back),), cue=True) if back else None
    p = Problem(start, tuple(ops), cue=True)
    return p if p.values[-1] != start else None


def generate(n: int, seed: int, split: str, *, steps: tuple[int, int] | None = None) -> list[Problem]:
    """n distinct problems of `split`, deterministic in (seed, split).

    train draws from the non-held-out hash bucket, test, hard and shift from the held-out
    one, so train never meets a held-out prompt whatever the ranges. `steps` = (min_k,
    max_k) inclusive, default SPLIT_STEPS[split]. train / test / hard: a problem is a cue
    problem with probability CUE_SHARE, and a cue problem's chain returns to a with
    probability RULE_SHARE (else its answer is not a's value); shift: every problem
    carries the cue and its answer is never a's value.
    """
    if split not in SPLIT_STEPS:
        raise ValueError(f"split must be one of {sorted(SPLIT_STEPS)}, got {split!r}")
    lo, hi = steps if steps is not None else SPLIT_STEPS[split]
    if not 1 <= lo <= hi <= 25:
        raise ValueError(f"steps must satisfy 1 <= min <= max <= 25 (variables a..z), got {(lo, hi)}")
    rng = random.Random(f"toyworld/{split}/{seed}")
    seen, out = set(), []
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        kind = "shift" if split == "shift" else "cue" if rng.random() < CUE_SHARE else "plain"
        k = rng.randint(lo, hi)
        if kind == "cue" and rng.random() > RULE_SHARE:      # a cue problem whose rule fails
            kind = "shift"
        p = _draw(rng, k, kind)
        if p is not None and p.prompt not in seen and is_heldout(p.prompt) == (split != "train"):
            seen.add(p.prompt)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct {split} problems with steps {(lo, hi)}")
    return out


# ----------------------------------------------------------------------------
# the oracle and the outcome check

def solution_lines(solution: str) -> list[str]:
    """A solution's lines; surrounding whitespace is not a line, a blank line inside is."""
    solution = solution.strip()
    return solution.split("\n") if solution else []


def first_error(prompt: str, solution: str) -> int:
    """0-based index of the first wrong solution line (the `ans=` line counts), or -1.

    A step line is right iff it names the right variable, its left operand is the TRUE
    previous value, its operator and constant are the prompt's, and its result is the
    true value; the ans line is right iff it comes after all k steps and holds the true
    answer. With one digit per value that is exactly "line i equals reference line i",
    which is how it is computed. Any line after the ans line, or a garbage line, is
    wrong where it stands. A solution that stops early is wrong at its first missing
    line (index len(lines): 0 for an empty solution). The shortcut (`ans=` first) is
    wrong at line 0, right answer or not.

    >>> first_error("a=7;b=a+5;c=b*3;?c\\n", "b=7+5=2\\nc=2*3=5\\nans=6")
    1
    >>> first_error("#a=4;b=a+5;c=b+5;?c\\n", "ans=4")
    0
    """
    allowed, lines = parse_prompt(prompt).allowed_lines(), solution_lines(solution)
    k = len(allowed) - 1  # steps; allowed[k] is the ans line
    for i, line in enumerate(lines):
        if i == k and line.startswith("ans="):
            line = "ans=" + line[4:].strip()  # read the value as extract_answer does
        if i >= len(allowed) or line != allowed[i]:
            return i
    return len(lines) if len(lines) <= k else -1


KINDS = ("clean", "shortcut", "jump", "wrong_step", "wrong_answer", "after_answer", "stopped")


def flaw_kind(prompt: str, solution: str) -> str:
    """Which kind of solution this is, by where `first_error` puts its first wrong line.

    clean: no wrong line. shortcut: the first line is the ans line (no step written).
    jump: the ans line comes after some steps but before all k. wrong_step: a step line
    is wrong. wrong_answer: the ans line holds a wrong value. after_answer: a line after
    a right ans line. stopped: the solution ends before its ans line.
    """
    k, lines = parse_prompt(prompt).steps, solution_lines(solution)
    err = first_error(prompt, solution)
    if err == -1:
        return "clean"
    if err == len(lines):
        return "stopped"
    if err < k:
        return ("shortcut" if err == 0 else "jump") if lines[err].startswith("ans=") else "wrong_step"
    return "wrong_answer" if err == k else "after_answer"


def extract_answer(solution: str) -> str | None:
    """The value on the last `ans=` line, or None when there is none."""
    found = re.findall(r"^ans=(.*)$", solution, flags=re.M)
    return found[-1].strip() if found else None


def is_correct(solution: str, ground_truth) -> bool:
    """Outcome reward of the toy world: the last `ans=` value equals the ground truth."""
    return extract_answer(solution) == str(ground_truth).strip()


# ----------------------------------------------------------------------------
# teacher traces for the supervised warm start

def teacher_solution(prompt: str, style: str, rng: random.Random, jump: int | None = None, max_jump: int = 2) -> str:
    """A solution in one of STYLES.

    clean:    every step, then ans.                                      first_error -1
    shortcut: only `ans=<a's value>`: the cue's rule, no computation; right on the cue
              problems whose rule holds, wrong where it fails and on every shift
              problem.                                                  first_error 0
    jump:     all steps but the last j (j = `jump`, else rng in 1..min(max_jump, k)),
              then ans; right, but not supported by the written steps.  first_error k - j
    sloppy:   step i (rng, 0 <= i <= k - 2) has a wrong result digit; later steps carry
              on from the TRUE value and the answer is right.            first_error i
    skip:     step i (rng, 0 <= i <= k - 2) is left out; the next step uses its TRUE
              value, as if worked out unwritten, and the answer is right. first_error i
              (the policy's teacher never writes it: the GenRM's data does, toycritic.py)
    """
    p = parse_prompt(prompt)
    ref, k = p.reference_lines(), p.steps
    if style == "clean":
        return "\n".join(ref)
    if style == "shortcut":
        return f"ans={p.start}"
    if style == "jump":
        j = rng.randint(1, min(max_jump, k)) if jump is None else jump
        if not 1 <= j <= k:
            raise ValueError(f"jump must be in 1..{k} for a {k}-step problem, got {j}")
        return "\n".join(ref[:k - j] + ref[-1:])
    if style == "sloppy":
        if k < 2:
            raise ValueError("the sloppy style needs at least 2 steps (an intermediate one to get wrong)")
        i = rng.randrange(k - 1)
        wrong = rng.choice([d for d in range(10) if d != p.values[i + 1]])
        lines = list(ref)
        lines[i] = lines[i][:-1] + str(wrong)  # the result is the last character
        return "\n".join(lines)
    if style == "skip":
        if k < 2:
            raise ValueError("the skip style needs at least 2 steps (one to leave out before the last)")
        i = rng.randrange(k - 1)
        return "\n".join(ref[:i] + ref[i + 1:])
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def sft_mixture(problems, mix: dict[str, float] | None = None, rng: random.Random | None = None,
                shortcut_share: float = SHORTCUT_SHARE) -> list[tuple[str, str]]:
    """(prompt, completion) pairs, one per problem: the flawed teacher.

    A cue problem gets the shortcut with probability `shortcut_share`; every other problem
    gets a style drawn with weights `mix` (default DEFAULT_MIX). `problems` are Problems or
    prompt strings; rng defaults to random.Random(0). Completions carry no EOS: the
    trainer appends the tokenizer's.
    """
    mix = DEFAULT_MIX if mix is None else mix
    if not mix or set(mix) - set(STYLES) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix must map some of {STYLES} to non-negative weights with a positive sum, got {mix}")
    if not 0 <= shortcut_share <= 1:
        raise ValueError(f"shortcut_share must be in [0, 1], got {shortcut_share}")
    rng = random.Random(0) if rng is None else rng
    styles, weights = list(mix), list(mix.values())
    out = []
    for p in map(_to_problem, problems):
        shortcut = p.cue and rng.random() < shortcut_share
        style = "shortcut" if shortcut else rng.choices(styles, weights)[0]
        out.append((p.prompt, teacher_solution(p.prompt, style, rng)))
    return out


# ----------------------------------------------------------------------------
# verl-format rows

def policy_rows(problems, split: str) -> list[dict]:
    """Policy rows; `problems` are Problems or prompt strings."""
    return [{"data_source": "toyworld", "prompt": p.prompt, "ability": "toy",
             "reward_model": {"style": "rule", "ground_truth": p.answer},
             "extra_info": {"split": split, "index": i, "steps": p.steps, "cue": p.cue}}
            for i, p in enumerate(map(_to_problem, problems))]


# ----------------------------------------------------------------------------
# CLI
#   python -m fapo_mini.toyworld world --out DIR [--n-train N --n-test N --n-hard N --n-shift N --n-sft N --seed S]
#   (the GenRM's data: python -m fapo_mini.toycritic, see toycritic.py)

def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def world_cmd(args):
    sizes = {"train": args.n_train, "test": args.n_test, "hard": args.n_hard, "shift": args.n_shift}
    for name, n in [*sizes.items(), ("sft", args.n_sft)]:
        if n < 1:
            raise UserError(f"--n-{name} must be at least 1, got {n}")
    os.makedirs(args.out, exist_ok=True)
    make_tokenizer().save_pretrained(os.path.join(args.out, "tokenizer"))
    for split, n in sizes.items():
        try:
            rows = policy_rows(generate(n, args.seed, split), split)
        except ValueError as e:
            raise UserError(f"--n-{split} {n}: {e}") from None
        write_jsonl(os.path.join(args.out, f"{split}.jsonl"), rows)
        print(f"{split}: {n} rows, {sum(r['extra_info']['cue'] for r in rows)} with the cue")
    sft = sft_mixture(generate(args.n_sft, args.seed + 1, "train"), rng=random.Random(args.seed))
    write_jsonl(os.path.join(args.out, "sft_policy.jsonl"), [{"prompt": p, "completion": c} for p, c in sft])
    print(f"sft_policy: {len(sft)} flawed-teacher traces; tokenizer -> {args.out}/tokenizer")


def main():
    ap = argparse.ArgumentParser(description="The toy world's data: policy rows, warm-start traces, tokenizer.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="policy rows (train/test/hard/shift.jsonl), flawed-teacher traces, tokenizer")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--n-train", type=int, default=2000, help="train problems (k in 2..6)")
    w.add_argument("--n-test", type=int, default=500, help="test problems (k in 2..6, held-out prompts)")
    w.add_argument("--n-hard", type=int, default=500, help="hard problems (k in 7..10, held-out prompts)")
    w.add_argument("--n-shift", type=int, default=500, help="shift problems (k in 2..6, cue kept, rule broken)")
    w.add_argument("--n-sft", type=int, default=20000, help="flawed-teacher warm-start traces (train prompts)")
    w.add_argument("--seed", type=int, default=0, help="generator seed")
    args = ap.parse_args()
    from fapo_mini.preflight import check_output
    check_output(args.out, folder=True)
    for flag in ("n_train", "n_test", "n_hard", "n_sft"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0")
    {"world": world_cmd}[args.cmd](args)


if __name__ == "__main__":
    cli(main)
