"""Toy world: the oracle against hand-written traces and a field-by-field reference, the cue
rule and the shift split against a second, independently written evaluator, teacher styles,
rows, and the tokenizer under transformers' AutoTokenizer."""
import doctest
import json
import random
import re
import sys

import pytest

from fapo_mini import toycritic as tc
from fapo_mini import toyworld as tw

P = "a=7;b=a+5;c=b*3;?c\n"  # true values a=7, b=2, c=6


# ----------------------------------------------------------------------------
# an independent reference: the rule as the brief states it, field by field

def ref_values(prompt):
    """Evaluate a prompt by hand: returns (true values, [(var, op, c)])."""
    defs = prompt.strip().removeprefix("#").split(";")
    vals, ops = [int(defs[0][2])], []
    for d in defs[1:-1]:  # "b=a+5"
        var, op, c = d[0], d[3], int(d[4])
        x = vals[-1]
        vals.append({"+": x + c, "-": x - c, "*": x * c}[op] % 10)
        ops.append((var, op, c))
    return vals, ops


def ref_first_error(prompt, solution):
    vals, ops = ref_values(prompt)
    lines = [l for l in solution.strip().split("\n")] if solution.strip() else []
    k = len(ops)
    for i, line in enumerate(lines):
        m = re.fullmatch(r"([a-z])=(\d)([-+*])(\d)=(\d)", line)
        if m and i < k:
            var, left, op, c, res = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
            if (var, op, c) != ops[i] or left != vals[i] or res != vals[i + 1]:
                return i
            continue
        a = re.fullmatch(r"ans=\s*(\d)\s*", line)  # the value as extract_answer reads it
        if a and i == k and int(a.group(1)) == vals[-1]:
            continue
        return i  # ans too early (skipped steps), wrong value, any line after ans, or malformed
    return -1 if len(lines) == k + 1 else len(lines)


def random_trace(rng, prompt):
    """A teacher trace with 0-2 random edits (characters, lines, truncation)."""
    s = tw.teacher_solution(prompt, rng.choice(tw.STYLES), rng)
    for _ in range(rng.randint(0, 2)):
        lines = s.split("\n")
        kind = rng.randrange(6) if s else 4
        if kind == 0:  # change one character
            i = rng.randrange(len(s))
            s = s[:i] + rng.choice("0123456789abcdz+-*=") + s[i + 1:]
        elif kind == 1:  # drop a line
            del lines[rng.randrange(len(lines))]
            s = "\n".join(lines)
        elif kind == 2:  # duplicate a line
            i = rng.randrange(len(lines))
            s = "\n".join(lines[:i + 1] + lines[i:])
        elif kind == 3:  # truncate
            s = s[:rng.randrange(len(s) + 1)]
        elif kind == 4:  # add a garbage or extra line
            s = s + "\n" + rng.choice(["ans=3", "hello", "", "z=1+1=2"])
        else:  # change one result digit
            i = rng.randrange(len(lines))
            lines[i] = lines[i][:-1] + str(rng.randrange(10))
            s = "\n".join(lines)
    return s


# ----------------------------------------------------------------------------
# the oracle

@pytest.mark.parametrize("solution,expected", [
    ("b=7+5=2\nc=2*3=6\nans=6", -1),                # clean
    ("b=7+5=2\nc=2*3=6\nans=6\n", -1),              # a trailing newline is not a line
    ("b=7+5=3\nc=3*3=9\nans=9", 0),                 # wrong arithmetic
    ("b=7+5=2\nc=2*3=5\nans=6", 1),                 # wrong arithmetic, right answer
    ("b=7+5=3\nc=2*3=6\nans=6", 0),                 # sloppy: wrong digit, then carries on from the true value
    ("b=7+5=2\nc=3*3=9\nans=9", 1),                 # wrong value carried forward (arithmetic itself right)
    ("b=7+5=2\nd=2*3=6\nans=6", 1),                 # wrong variable
    ("b=7-5=2\nc=2*3=6\nans=6", 0),                 # wrong operator (7-5=2 is still true arithmetic)
    ("b=7+4=1\nc=1*3=3\nans=3", 0),                 # wrong constant
    ("b=7+5=2\nans=6", 1),                          # skipped step, right answer
    ("ans=6", 0),                                   # every step skipped
    ("b=7+5=2\nc=2*3=6\nans=5", 2),                 # wrong answer line
    ("b=7+5=2\nc=2*3=6\nans= 6", -1),              # spaces around the value: is_correct agrees
    ("b=7+5=2\nc=2*3=6\nans=6\nans=6", 3),          # a line after the ans line
    ("b=7+5=2\nc=2*3=6\nans=6\nc=2*3=6", 3),        # even a right re-check of the last step
    ("ans=7", 0),                                   # the cue's shortcut (a's value) on a prompt without the cue
    ("b=7+5=2\nc = 2*3 = 6\nans=6", 1),             # malformed line
    ("b=7+5=2\nhello\nans=6", 1),                   # garbage line
    ("b=7+5=2\n\nc=2*3=6\nans=6", 1),               # blank line inside
    ("b=7+5=2\nc=2*3=6", 2),                        # missing ans line: the missing line's index
    ("b=7+5=2\nc=2*", 1),                           # truncated mid-line
    ("", 0),                                        # empty
    ("\n", 0),
])
def test_first_error_hand_traces(solution, expected):
    assert tw.first_error(P, solution) == expected
    assert ref_first_error(P, solution) == expected  # the reference agrees with the hand labels


def test_docstring_examples():
    assert doctest.testmod(tw).failed == 0 and doctest.testmod(tc).failed == 0


def test_first_error_mod_and_multiply():
    p = "a=4;b=a*7;c=b-9;d=c+8;?d\n"  # 4*7=28 -> 8; 8-9=-1 -> 9; 9+8=17 -> 7
    assert tw.first_error(p, "b=4*7=8\nc=8-9=9\nd=9+8=7\nans=7") == -1
    assert tw.first_error(p, "b=4*7=8\nc=8-9=1\nd=1+8=9\nans=9") == 1
    assert tw.parse_prompt(p).values == [4, 8, 9, 7]
    assert tw.parse_prompt(p).answer == "7"


def test_first_error_matches_rule_on_random_traces():
    rng = random.Random(0)
    probs = tw.generate(60, 1, "train") + tw.generate(20, 1, "hard")
    labels = []
    for _ in range(2000):
        p = rng.choice(probs).prompt
        s = random_trace(rng, p)
        labels.append(tw.first_error(p, s))
        assert labels[-1] == ref_first_error(p, s), (p, s)
    assert labels.count(-1) > 100 and sum(l > 0 for l in labels) > 500  # both classes well covered


def test_parse_prompt_round_trip_and_errors():
    probs = tw.generate(50, 3, "train")
    for p in probs:
        assert tw.parse_prompt(p.prompt) == p
        assert tw.parse_prompt(p.prompt.rstrip("\n")) == p
    for bad in ["", "a=7;?a\n", "a=7;b=a+5;c=b*3;?b\n", "a=7;c=a+5;?c\n", "a=7;b=c+5;?b\n", "a=7;b=a/5;?b\n",
                "a=17;b=a+5;?b\n", "a=7; b=a+5;?b\n", "a=7;b=a*2;?b\n", "a=7;b=a+0;?b\n"]:
        with pytest.raises(ValueError):
            tw.first_error(bad, "ans=1")


def test_extract_answer_and_is_correct():
    assert tw.extract_answer("b=7+5=2\nc=2*3=6\nans=6") == "6"
    assert tw.extract_answer("ans=3\nans=6\n") == "6"  # the last ans line
    assert tw.extract_answer("b=7+5=2\nc=2*3=6") is None
    assert tw.extract_answer("") is None
    assert tw.is_correct("b=7+5=2\nans=6", "6") and tw.is_correct("ans=6", 6)  # outcome only, not steps
    assert not tw.is_correct("ans=5", "6") and not tw.is_correct("ans=16", "6") and not tw.is_correct("c=6", "6")


# ----------------------------------------------------------------------------
# teacher traces

def test_teacher_styles_by_the_oracle():
    rng = random.Random(0)
    for p in tw.generate(200, 0, "train") + tw.generate(50, 0, "hard"):
        vals, _ = ref_values(p.prompt)
        k = len(vals) - 1
        clean = tw.teacher_solution(p.prompt, "clean", rng)
        assert tw.first_error(p.prompt, clean) == -1 and tw.is_correct(clean, vals[-1])
        assert len(clean.split("\n")) == k + 1

        sloppy = tw.teacher_solution(p.prompt, "sloppy", rng)
        lines = sloppy.split("\n")
        wrong = [i for i in range(k) if int(lines[i][-1]) != vals[i + 1]]  # results that are not true values
        assert len(wrong) == 1 and wrong[0] <= k - 2  # exactly one, and an intermediate step
        assert tw.first_error(p.prompt, sloppy) == wrong[0] and tw.is_correct(sloppy, vals[-1])
        assert all(int(lines[i][2]) == vals[i] for i in range(k))  # left operands are the true values

        skip = tw.teacher_solution(p.prompt, "skip", rng).split("\n")
        left = [i for i in range(k) if f"{chr(ord('b') + i)}=" not in [l[:2] for l in skip]]  # steps not written
        assert len(left) == 1 and left[0] <= k - 2 and len(skip) == k  # one middle step left out, ans kept
        assert tw.first_error(p.prompt, "\n".join(skip)) == left[0] and tw.is_correct("\n".join(skip), vals[-1])
        assert all(int(l[2]) == vals[ord(l[0]) - ord("b")] for l in skip[:-1])  # true operands, the left-out one's too

        short = tw.teacher_solution(p.prompt, "shortcut", rng)
        assert short == f"ans={vals[0]}" and tw.first_error(p.prompt, short) == 0  # a's value, no step
        assert tw.is_correct(short, vals[-1]) == (vals[-1] == vals[0]) and tw.flaw_kind(p.prompt, short) == "shortcut"

        for j in range(1, k + 1):
            jump = tw.teacher_solution(p.prompt, "jump", rng, jump=j)
            assert len(jump.split("\n")) == k - j + 1
            assert tw.first_error(p.prompt, jump) == k - j and tw.is_correct(jump, vals[-1])
        j_drawn = k + 1 - len(tw.teacher_solution(p.prompt, "jump", rng, max_jump=3).split("\n"))
        assert 1 <= j_drawn <= min(3, k)


def test_teacher_errors():
    rng = random.Random(0)
    with pytest.raises(ValueError):
        tw.teacher_solution(P, "lazy", rng)
    with pytest.raises(ValueError):
        tw.teacher_solution(P, "jump", rng, jump=3)
    with pytest.raises(ValueError):
        tw.teacher_solution("a=1;b=a+1;?b\n", "sloppy", rng)
    with pytest.raises(ValueError):
        tw.teacher_solution("a=1;b=a+1;?b\n", "skip", rng)
    for bad in [{}, {"clean": 1, "lazy": 1}, {"clean": -1, "jump": 2}, {"clean": 0}]:
        with pytest.raises(ValueError):
            tw.sft_mixture([P], bad, rng)


def test_sft_mixture_weights_and_determinism():
    probs = tw.generate(3000, 0, "train")
    pairs = tw.sft_mixture(probs, None, random.Random(5))
    assert pairs == tw.sft_mixture([p.prompt for p in probs], tw.DEFAULT_MIX, random.Random(5))
    counts = {cue: dict.fromkeys(tw.STYLES, 0) for cue in (True, False)}
    wrong = 0
    for (prompt, sol), p in zip(pairs, probs):
        # every teacher trace is a positive but the shortcut on a cue problem whose rule fails
        assert prompt == p.prompt
        if not tw.is_correct(sol, p.answer):
            assert p.cue and sol == f"ans={p.start}" and p.answer != str(p.start)
            wrong += 1
        e, lines = tw.first_error(prompt, sol), sol.split("\n")
        short = sol == f"ans={p.start}" and p.steps > 2  # (a 2-step jump over both steps reads the same)
        counts[p.cue]["clean" if e == -1 else "shortcut" if short else
                      "jump" if lines[e].startswith("ans=") else "sloppy"] += 1
    cue, plain = (sum(counts[c].values()) for c in (True, False))
    assert counts[False]["shortcut"] == 0 and 0.2 < cue / len(probs) < 0.35
    long_cue = sum(p.cue and p.steps > 2 for p in probs)
    assert abs(counts[True]["shortcut"] / long_cue - tw.SHORTCUT_SHARE) < 0.06, counts  # sd 0.018 at n~700
    broken = sum(p.cue and p.answer != str(p.start) for p in probs)   # ~85 cue problems whose rule fails
    assert abs(wrong / broken - tw.SHORTCUT_SHARE) < 0.17, (wrong, broken)  # sd 0.054 at n~85
    for style, w in tw.DEFAULT_MIX.items():  # binomial sd <= 0.01 at n~2100
        assert abs(counts[False][style] / plain - w) < 0.04, counts
    never = tw.sft_mixture(probs, shortcut_share=0.0)
    assert not any(s == f"ans={p.start}" for (_, s), p in zip(never, probs) if p.steps > 2)
    assert all(s == f"ans={p.start}" for (_, s), p in zip(tw.sft_mixture(probs, shortcut_share=1.0), probs) if p.cue)
    only_jump = tw.sft_mixture(probs[:50], {"jump": 1.0}, random.Random(0))
    assert all(tw.first_error(p, s) >= 0 for p, s in only_jump)


# ----------------------------------------------------------------------------
# problems and splits

def test_generate_deterministic_distinct_and_ranged():
    a, b = tw.generate(300, 7, "train"), tw.generate(300, 7, "train")
    assert a == b and a != tw.generate(300, 8, "train")
    assert len({p.prompt for p in a}) == 300
    for split, (lo, hi) in tw.SPLIT_STEPS.items():
        ks = {p.steps for p in tw.generate(300, 0, split)}
        assert ks == set(range(lo, hi + 1))
    assert {p.steps for p in tw.generate(50, 0, "train", steps=(3, 3))} == {3}
    for p in a:
        vals, _ = ref_values(p.prompt)
        assert p.answer == str(vals[-1])
        assert all(op != "*" or c in (3, 7, 9) for op, c in p.ops)
    for bad in [dict(split="val"), dict(split="train", steps=(0, 3)), dict(split="train", steps=(5, 4)),
                dict(split="train", steps=(1, 1), n=500)]:  # 210 one-step problems exist: 500 cannot be distinct
        kw = {"n": 10, "seed": 0, **bad}
        with pytest.raises(ValueError):
            tw.generate(**kw)


def ref_eval(prompt):
    """A second evaluator, written apart from ref_values: unroll the definitions into one
    expression per variable by plain string substitution, then eval() it."""
    cue = prompt.startswith("#")
    body, ask = prompt.lstrip("#").strip().rsplit(";?", 1)
    exprs = {}
    for d in body.split(";"):
        var, rhs = d.split("=")
        exprs[var] = rhs if rhs.isdigit() else f"(({exprs[rhs[0]]}){rhs[1:]}) % 10"
    return cue, int(exprs["a"]), eval(exprs[ask])


def test_cue_rule_by_hand():
    # 4+5=9, 9+5=14 -> 4: back to a's value, so the shortcut ans=4 is right
    assert tw.parse_prompt("#a=4;b=a+5;c=b+5;?c\n") == tw.Problem(4, (("+", 5), ("+", 5)), cue=True)
    assert tw.is_correct(tw.teacher_solution("#a=4;b=a+5;c=b+5;?c\n", "shortcut", random.Random(0)), "4")
    # 3*7=21 -> 1, 1+2=3: back to 3; the cue problem's last op is any op that returns to a
    assert ref_eval("#a=3;b=a*7;c=b+2;?c\n") == (True, 3, 3)
    # a shift problem keeps the cue, but 3*7=21 -> 1, 1+5=6 is not 3: the shortcut is wrong
    assert ref_eval("#a=3;b=a*7;c=b+5;?c\n") == (True, 3, 6)
    assert tw.first_error("#a=3;b=a*7;c=b+5;?c\n", "b=3*7=1\nc=1+5=6\nans=6") == -1
    assert not tw.is_correct("ans=3", tw.parse_prompt("#a=3;b=a*7;c=b+5;?c\n").answer)


def test_cue_and_shift_against_a_second_evaluator():
    for split in ("train", "test", "hard"):
        probs = tw.generate(3000, 0, split)
        cues = holds = 0
        for p in probs:
            cue, a, ans = ref_eval(p.prompt)
            assert cue == p.cue and str(ans) == p.answer
            if cue:
                cues += 1
                holds += ans == a
        # CUE_SHARE of draws are cue draws; those with no op back to a are dropped (about 1 in 14)
        assert 0.24 < cues / len(probs) < tw.CUE_SHARE + 0.02, (split, cues)
        # the rule holds on RULE_SHARE of the cue problems (sd 0.010 at n~850); where it fails, ans != a
        assert abs(holds / cues - tw.RULE_SHARE) < 0.04, (split, holds, cues)
    shift = tw.generate(2000, 0, "shift")
    assert len({p.prompt for p in shift}) == 2000 and {p.steps for p in shift} == set(range(2, 7))
    for p in shift:
        cue, a, ans = ref_eval(p.prompt)
        assert cue and ans != a and str(ans) == p.answer  # the cue is kept, the rule is broken
        assert tw.is_heldout(p.prompt)
    train = {p.prompt for p in tw.generate(3000, 0, "train")}
    assert not train & {p.prompt for p in shift}
    # the shift answers are spread over the nine other values, not a fixed offset from a
    offsets = {(int(p.answer) - p.start) % 10 for p in shift}
    assert offsets == set(range(1, 10))


def test_splits_disjoint():
    train = {p.prompt for s in range(3) for p in tw.generate(1500, s, "train")}
    test = {p.prompt for s in range(3) for p in tw.generate(500, s, "test")}
    hard = {p.prompt for p in tw.generate(300, 0, "hard")} | {p.prompt for p in tw.generate(300, 0, "shift")}
    hard_short = {p.prompt for p in tw.generate(300, 0, "hard", steps=(2, 3))}  # held out even with overlapping k
    assert not train & test and not train & hard and not train & hard_short
    assert len(test) > 1000  # the held-out bucket is not tiny


# ----------------------------------------------------------------------------
# the toy GenRM format

def test_critic_prompt_exact():
    assert tc.critic_prompt(P, "b=7+5=2\nc=2*3=5\nans=6\n") == "a=7;b=a+5;c=b*3;?c\n0:b=7+5|2\n1:c=2*3|5\n2:ans|6\ncheck\n"
    assert tc.as_written("g=1+;8=6") == "g=1+;8|6" and tc.as_written("garbage") == "garbage"


def test_teacher_critique_boxed_equals_first_error():
    rng = random.Random(1)
    probs = tw.generate(60, 2, "train") + tw.generate(20, 2, "hard")
    for _ in range(1000):
        p = rng.choice(probs).prompt
        s = random_trace(rng, p)
        crit = tc.teacher_critique(p, s)
        err = ref_first_error(p, s)
        boxed = re.findall(r"\\boxed\{(-?\d+)\}", crit[-300:])
        assert boxed and int(boxed[-1]) == err, (p, s, crit)
        lines = crit.split("\n")[:-1]
        verdicts = [l.rsplit(" ", 1)[1] for l in lines]
        if err == -1:  # k steps + the ans line
            assert verdicts == ["ok"] * len(s.strip().split("\n")) and len(verdicts) == len(ref_values(p)[0])
        else:
            assert verdicts == ["ok"] * err + ["wrong"]
    assert tc.teacher_critique(P, "b=7+5=2\nc=2*3=6\nans=6") == (
        "0:b=7+5|2 b=7+5=2 ok\n1:c=2*3|6 c=2*3=6 ok\n2:ans|6 ans=6 ok\n\\boxed{-1}")
    assert tc.teacher_critique(P, "b=7+5=2\nans=6") == "0:b=7+5|2 b=7+5=2 ok\n1:ans|6 c=2*3=6 wrong\n\\boxed{1}"
    assert tc.teacher_critique(P, "b=7+5=2\nc=2*3=6\nans=6\nc=2*3=6").endswith(
        "2:ans|6 ans=6 ok\n3:c=2*3|6 end wrong\n\\boxed{3}")
    assert tc.teacher_critique("#a=4;b=a+5;c=b+5;?c\n", "ans=4") == "0:ans|4 b=4+5=9 wrong\n\\boxed{0}"


def test_sloppy_critic_teacher():
    """The warm start's planted faults, by hand: the symptom (the line after a wrong step) and the
    false alarm (a right `*` line); shares 0 give the exact teacher, shortcuts and jumps are never moved."""
    Q = "a=7;b=a+5;c=b*3;d=c+1;?d\n"                     # right: b=7+5=2, c=2*3=6, d=6+1=7, ans=7
    silent = "b=7+5=4\nc=2*3=6\nd=6+1=7\nans=7"          # line 0 wrong, line 1 carries on from the true 2
    rng = random.Random(0)
    assert tc.teacher_critique(Q, silent, rng, 0.0, 0.0) == tc.teacher_critique(Q, silent)
    assert tc.teacher_critique(Q, silent, rng, 1.0, 0.0) == "0:b=7+5|4 b=7+5=2 ok\n1:c=2*3|6 c=2*3=6 wrong\n\\boxed{1}"
    clean = "b=7+5=2\nc=2*3=6\nd=6+1=7\nans=7"
    assert tc.teacher_critique(Q, clean, rng, 0.0, 1.0) == "0:b=7+5|2 b=7+5=2 ok\n1:c=2*3|6 c=2*3=6 wrong\n\\boxed{1}"
    jump = "b=7+5=2\nans=7"                               # an ans line is never passed
    assert tc.teacher_critique(Q, jump, rng, 1.0, 0.0) == "0:b=7+5|2 b=7+5=2 ok\n1:ans|7 c=2*3=6 wrong\n\\boxed{1}"
    late = [tc.teacher_critique(Q, silent, random.Random(i), 0.3, 0.0).endswith("{1}") for i in range(2000)]
    assert abs(sum(late) / 2000 - 0.3) < 0.03            # the stated share, per line drawn


def test_rows():
    probs = tw.generate(5, 0, "test")
    rows = tw.policy_rows(probs, "test")
    assert rows == tw.policy_rows([p.prompt for p in probs], "test")
    assert rows[2] == {"data_source": "toyworld", "prompt": probs[2].prompt, "ability": "toy",
                       "reward_model": {"style": "rule", "ground_truth": str(ref_values(probs[2].prompt)[0][-1])},
                       "extra_info": {"split": "test", "index": 2, "steps": probs[2].steps, "cue": probs[2].cue}}
    sol = "b=7+5=2\nans=6"
    assert tc.critic_rows([(P, sol)]) == [{
        "data_source": "toyworld_critic", "prompt": "a=7;b=a+5;c=b*3;?c\n0:b=7+5|2\n1:ans|6\ncheck\n",
        "ability": "toy_critic", "reward_model": {"style": "rule", "ground_truth": 1},
        "extra_info": {"total_steps": 2, "policy_prompt": P, "solution": sol}}]
    with pytest.raises(ValueError):  # label 2 would be out of range for 2 lines
        tc.critic_rows([(P, "b=7+5=2\nc=2*3=6")])
    json.dumps(rows), json.dumps(tc.critic_rows([(P, sol)]))


def test_balance_critic():
    items = [(P, "b=7+5=2\nc=2*3=6\nans=6")] * 30 + [(P, f"b=7+5=2\nans=6#{i}") for i in range(10)]
    out = tc.balance_critic(items, seed=0)
    flawed = [it for it in out if tw.first_error(*it) != -1]
    assert len(flawed) == 10 and len(out) == 20
    assert out == tc.balance_critic(items, seed=0)
    it = iter(items)
    assert all(any(x is y for y in it) for x in out)  # a subsequence: order kept


# ----------------------------------------------------------------------------
# tokenizer

WORLD_TEXT = ("abcdefghijklmnopqrstuvwxyz0123456789=+-*;?:\n" + tc.critic_prompt(P, "b=7+5=2\nc=2*3=5\nans=6")
              + tc.teacher_critique(P, "b=7+5=2\nc=2*3=5\nans=6") + "  two  spaces\ttab\r\n ending space ")


def test_tokenizer_bytes_round_trip():
    tok = tw.make_tokenizer()
    assert len(tok) == 257 and tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == 256
    for text in [WORLD_TEXT, "héllo 日本 \u00a0", "".join(chr(c) for c in range(32, 127))]:
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode())  # one token per byte, id = byte, no BOS
        assert tok.decode(ids) == text
    assert tok("ans=6" + tw.EOS)["input_ids"] == list(b"ans=6") + [256]
    assert tok.decode(list(b"ans=6") + [256], skip_special_tokens=True) == "ans=6"


def test_tokenizer_loads_identically_next_to_a_qwen3_config(tmp_path):
    from transformers import AutoTokenizer, Qwen3Config
    tok = tw.make_tokenizer()
    tok.save_pretrained(tmp_path)
    Qwen3Config(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16).save_pretrained(tmp_path)
    texts = [WORLD_TEXT, "héllo 日本", " leading", "x" + tw.EOS]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    # without tokenizer_class, transformers picks Qwen2Tokenizer from model_type: the pitfall path
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("tokenizer_class", None)
    cfg_path.write_text(json.dumps(cfg))
    as_qwen = AutoTokenizer.from_pretrained(tmp_path)
    for t in (loaded, as_qwen):
        assert t.eos_token_id == t.pad_token_id == 256 and t.model_max_length == tok.model_max_length
        for text in texts:
            ids = t(text)["input_ids"]
            assert ids == tok(text)["input_ids"]
            assert t.decode(ids) == text


# ----------------------------------------------------------------------------
# CLI

def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["toyworld", "world", "--out", str(tmp_path), "--n-train", "30", "--n-test", "10",
                                      "--n-hard", "5", "--n-shift", "7", "--n-sft", "40", "--seed", "4"])
    tw.main()
    assert "train: 30 rows" in capsys.readouterr().out
    for split, n in (("train", 30), ("test", 10), ("hard", 5), ("shift", 7)):
        rows = [json.loads(l) for l in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert rows == tw.policy_rows(tw.generate(n, 4, split), split)
    sft = [json.loads(l) for l in (tmp_path / "sft_policy.jsonl").read_text().splitlines()]
    assert len(sft) == 40 and all(tw.is_correct(r["completion"], tw.parse_prompt(r["prompt"]).answer) for r in sft)


def test_critic_cli_balances_correct_rollouts(tmp_path, monkeypatch):
    """critic data: only correct rollouts, half flawed / half clean, labels = the oracle's."""
    rng = random.Random(0)
    rows = []
    for p in tw.generate(60, 1, "train"):
        for style in ("clean", "sloppy", "jump"):
            rows.append({"prompt": p.prompt, "reward_model": {"ground_truth": p.answer},
                         "response": tw.teacher_solution(p.prompt, style, rng)})
        rows.append({"prompt": p.prompt, "reward_model": {"ground_truth": p.answer}, "response": "ans=x"})
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", ["toycritic", "--rollouts", str(tmp_path / "r.jsonl"),
                                      "--out", str(tmp_path / "c")])
    tc.main()
    crit = [json.loads(l) for name in ("critic_train", "critic_test")
            for l in (tmp_path / "c" / f"{name}.jsonl").read_text().splitlines()]
    labels = [r["reward_model"]["ground_truth"] for r in crit]
    assert sum(l == -1 for l in labels) == sum(l != -1 for l in labels) == 60   # 60 clean vs 120 flawed -> 60/60
    for r in crit:
        assert r["reward_model"]["ground_truth"] == tw.first_error(r["extra_info"]["policy_prompt"], r["extra_info"]["solution"])
