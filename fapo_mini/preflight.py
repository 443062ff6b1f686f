"""Checks of a run's inputs before any work: flags, the output path, prompt lengths, GenRM labels.

Why this file exists: a mistake found at step 1,000 costs hours, one found before
step 1 costs seconds. The trainers and rollout.py call these from their `main`
once the rows and the tokenizer are loaded; each check raises UserError with one
line that names the path, the row and the field (fapo_mini/errors.py).

Simplified away: anything that needs the weights (load_model checks those as it
reads them) and per-step checks (the reward functions trust rows checked here).
"""
import math
from pathlib import Path

from fapo_mini.data import get_field
from fapo_mini.errors import UserError


def check_output(path, folder: bool, flag="--out") -> None:
    """UserError when `path` cannot be written as a folder (folder=True) or as a file:
    it exists as the other kind, or one of its parents is a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, expected a folder")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path}: is a folder, expected a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            break


def check_prompts(prompt_ids: list, source, max_new_tokens: int, max_positions: int, vocab_size: int) -> None:
    """Refuse prompts that are empty, that leave no room for `max_new_tokens` within the
    model's max_position_embeddings, or that hold token ids the model has no embedding for
    (a tokenizer from another model). The message counts the offending rows and names the
    first. Nothing is truncated: cutting a math problem from the left would drop its
    question, so the user shortens the rows or lowers --max-new-tokens."""
    empty = [i for i, p in enumerate(prompt_ids, start=1) if not p]
    if empty:
        raise UserError(f"{source}:{empty[0]}: the prompt has no tokens ({len(empty)} such rows)")
    foreign = [i for i, p in enumerate(prompt_ids, start=1) if max(p) >= vocab_size]
    if foreign:
        raise UserError(f"{source}:{foreign[0]}: token id {max(prompt_ids[foreign[0] - 1])} >= the model's vocab_size "
                        f"{vocab_size} ({len(foreign)} such rows): the tokenizer does not belong to this model")
    limit = max_positions - max_new_tokens
    if limit < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: the model's "
                        f"max_position_embeddings is {max_positions}")
    long = [i for i, p in enumerate(prompt_ids, start=1) if len(p) > limit]
    if long:
        first = long[0]
        raise UserError(f"{source}: {len(long)} of {len(prompt_ids)} prompts are longer than {limit} tokens "
                        f"(max_position_embeddings {max_positions} - --max-new-tokens {max_new_tokens}), the first "
                        f"at row {first} with {len(prompt_ids[first - 1])} tokens; shorten or drop them, or "
                        "lower --max-new-tokens")


def _as_int(value):
    """An int, an integer-valued float or string (verl stores ground truths as strings); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def check_critic_labels(rows: list[dict], source) -> None:
    """Every critic row: `extra_info.total_steps` an integer >= 1 and `reward_model.ground_truth`
    (the first wrong step, docs/method.md §3) an integer in -1 .. total_steps - 1."""
    for i, row in enumerate(rows, start=1):
        n_steps = _as_int(get_field(row, "extra_info.total_steps"))
        if n_steps is None or n_steps < 1:
            raise UserError(f"{source}:{i}: field 'extra_info.total_steps' must be an integer >= 1, "
                            f"got {get_field(row, 'extra_info.total_steps')!r}")
        label = _as_int(get_field(row, "reward_model.ground_truth"))
        if label is None or not -1 <= label < n_steps:
            raise UserError(f"{source}:{i}: field 'reward_model.ground_truth' must be the first wrong step, an "
                            f"integer in -1..{n_steps - 1} (total_steps {n_steps}), got "
                            f"{get_field(row, 'reward_model.ground_truth')!r}")


def check_ground_truths(rows: list[dict], source) -> None:
    """Policy rows scored by the boxed rule (tasks.MATH): a ground truth that DAPO's
    normalisation turns into an empty string (" ", "\\text{}") is refused, since an empty
    box would match it (docs/method.md §2)."""
    from fapo_mini.tasks import MATH, ground_truth, task_of
    from fapo_mini.verify import normalize_final_answer
    for i, row in enumerate(rows, start=1):
        if task_of(row) is MATH and not normalize_final_answer(ground_truth(row)):
            raise UserError(f"{source}:{i}: field 'reward_model.ground_truth' is {ground_truth(row)!r}, an empty "
                            "answer once normalised (docs/method.md §2): no response can be scored against it")


def check_flags(args, ranges) -> None:
    """UserError naming the first flag of `ranges`, rows of (flag, test, what it must be), whose
    value in `args` fails its test. Every command checks its numeric flags this way, from its
    own table, before any work."""
    for flag, ok, want in ranges:
        if not ok(getattr(args, flag)):
            raise UserError(f"--{flag.replace('_', '-')} must be {want}, got {getattr(args, flag)}")


def at_least(n):
    return lambda v: v >= n


# The trainers' shared flags (fapo_mini/flags.py add_common_args); each trainer adds its own table.
TRAINER_RANGES = tuple((flag, at_least(1), ">= 1") for flag in (
    "prompts_per_step", "max_new_tokens", "steps", "mini_batches", "micro_tokens", "filter_max_rounds",
    "rollout_max_rows")) + (
    ("group_size", at_least(2), ">= 2"),   # a group of one has no one to compare with: A = 0 (docs/method.md §6)
    ("save_every", at_least(0), ">= 0 (0 = only at the end)"),
    ("keep", at_least(1), ">= 1"),
    ("warmup", at_least(0), ">= 0"),
    ("lr", lambda v: v > 0, "> 0"),
    ("dist_timeout", lambda v: math.isfinite(v) and v > 0, "> 0 (minutes)"),
    ("weight_decay", at_least(0), ">= 0"),
    ("kl_coef", at_least(0), ">= 0 (0 = no reference model)"),
    ("tis_cap", at_least(0), ">= 0 (0 = off)"),
    ("grad_clip", lambda v: v > 0, "> 0"),
    ("clip_low", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("clip_high", at_least(0), ">= 0"),
    ("dual_clip", lambda v: v > 1, "> 1"),
    # the update scores rollouts by log-probs of logits / T: greedy sampling has none
    ("temperature", lambda v: v > 0, "> 0 (training samples, so T = 0 has no log-probs)"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("overlong_buffer", at_least(0), ">= 0 (0 = off)"))


def check_layout(args, world_size: int, n_rows: int, device) -> None:
    """The run's shape against the ranks torchrun started and the rows there are: every rank gets
    whole groups, every mini-batch the same number of rollouts."""
    if n_rows < args.prompts_per_step or args.prompts_per_step % world_size:
        raise UserError(f"--prompts-per-step {args.prompts_per_step} must be <= {n_rows} rows and a "
                        f"multiple of {world_size} ranks")
    per_rank = args.prompts_per_step // world_size * args.group_size
    if per_rank % args.mini_batches:
        raise UserError(f"--mini-batches {args.mini_batches} must divide the {per_rank} rollouts per rank "
                        f"(--prompts-per-step {args.prompts_per_step} / {world_size} ranks x --group-size "
                        f"{args.group_size})")
    if args.fsdp and world_size < 2:
        raise UserError("--fsdp shards over ranks: run under torchrun with --nproc_per_node >= 2")
    if args.cuda_graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs CUDA GPUs")


def check_run_inputs(args, fields) -> list[dict]:
    """What train_policy.py / train_genrm.py check in their `main` before the loop starts:
    the flags' ranges, --out, the data rows and `fields`, the tokenizer, config.json and the
    prompt lengths. Returns (rows, prompt_ids), which rl.train then trains on."""
    from fapo_mini.data import load_rows, prompt_text, validate_rows
    from fapo_mini.model import load_config, load_tokenizer
    check_flags(args, TRAINER_RANGES)
    if args.overlong_buffer > args.max_new_tokens:
        raise UserError(f"--overlong-buffer {args.overlong_buffer} must be <= --max-new-tokens {args.max_new_tokens}")
    check_output(args.out, folder=True)
    rows = load_rows(args.data)
    validate_rows(rows, args.data, fields)
    cfg = load_config(args.model)     # first: transformers' tokenizer loader reads config.json too
    tok = load_tokenizer(args.model, args.trust_remote_code)
    prompt_ids = [tok.encode(prompt_text(r, tok), add_special_tokens=False) for r in rows]
    check_prompts(prompt_ids, args.data, args.max_new_tokens, cfg.max_position_embeddings, cfg.vocab_size)
    return rows, prompt_ids


EVAL_RANGES = (("eval_every", at_least(0), ">= 0 (0 = off)"), ("eval_n", at_least(1), ">= 1"),
               ("eval_temperature", at_least(0), ">= 0 (0 = greedy)"), ("eval_top_p", lambda v: 0 < v <= 1, "in (0, 1]"))


def check_eval_inputs(args):
    """--eval-data and its flags (fapo_mini/flags.py add_eval_args), checked like the training rows.
    Returns (rows, prompt_ids), or (None, None) when evaluation is off."""
    from fapo_mini.data import load_rows, prompt_text, validate_rows
    from fapo_mini.model import load_config, load_tokenizer
    check_flags(args, EVAL_RANGES)
    if bool(args.eval_data) != bool(args.eval_every):
        raise UserError("--eval-data FILE and --eval-every K (> 0) go together: give both, or neither")
    if not args.eval_data:
        return None, None
    rows = load_rows(args.eval_data)
    validate_rows(rows, args.eval_data, ("prompt", "reward_model.ground_truth"))
    check_ground_truths(rows, args.eval_data)
    cfg, tok = load_config(args.model), load_tokenizer(args.model, args.trust_remote_code)
    prompt_ids = [tok.encode(prompt_text(r, tok), add_special_tokens=False) for r in rows]
    check_prompts(prompt_ids, args.eval_data, args.max_new_tokens, cfg.max_position_embeddings, cfg.vocab_size)
    return rows, prompt_ids

