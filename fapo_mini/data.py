"""Rows in verl's format, the prompt text, and which rows each step and rank sees.

A row is a dict as verl stores it: `prompt` (a string, or a list of chat
messages), `reward_model.ground_truth`, and free-form `data_source` /
`extra_info`. `load_rows` reads them from a .jsonl file (parsed here, line by
line, so a broken line is reported by file and line), a .parquet / .json file
or a hub data set name (both through `datasets`). Every problem with the rows
(no such file, a malformed line, an empty set, a missing field, a prompt of the
wrong type) is a UserError naming the file, the line or row, and the field.

Data order is a pure function of (n_rows, batch_size, step, seed): epoch e is a
fresh permutation seeded by (seed, e), consumed in order, and step s takes the
next `batch_size` indices of that endless stream. A resumed run therefore needs
only its step number, and no sampler state is ever checkpointed.

Simplified away: streaming (every row is held in memory), filtering overlong
prompts (a prompt that leaves no room for --max-new-tokens within the model's
max_position_embeddings is refused before any work, by
fapo_mini/preflight.py's check_prompts; nothing truncates), and shuffling
buffers.
"""

import json
import re
from pathlib import Path

import numpy as np

from fapo_mini.errors import UserError

_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline, a gap) are not rows
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON: {e}") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_rows(source: str | Path, split: str = "train") -> list[dict]:
    """Read every row of `source`: a .jsonl / .json / .parquet path, or a hub data set name `owner/name`.

    `split` is used for hub names only (a file is one split). A name is taken
    for a hub data set only when no such path exists and it is not a file name.
    """
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{source}: is a folder, not a data file ({', '.join(_FILE_SUFFIXES)})")
    if path.exists():
        if path.suffix == ".jsonl":
            try:
                rows = _read_jsonl(path)
            except UnicodeDecodeError as e:
                raise UserError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        elif path.suffix in (".json", ".parquet"):
            builder = "json" if path.suffix == ".json" else "parquet"
            rows = read_dataset(source, builder, data_files=str(path), split="train")
        else:
            raise UserError(f"{source}: unsupported data file, expected one of {', '.join(_FILE_SUFFIXES)}")
    elif _HUB_NAME.fullmatch(str(source)) and not str(source).endswith(_FILE_SUFFIXES):
        rows = read_dataset(source, str(source), split=split)
    else:
        raise UserError(f"data file not found: {source}")
    if not rows:
        raise UserError(f"{source}: the data set is empty")
    return rows


def read_dataset(source, *args, **kwargs) -> list[dict]:
    """datasets.load_dataset(...).to_list(); what it raises for a bad file or an unknown hub name is a UserError."""
    import datasets  # about 1 s to import: only here, where a parquet / json / hub set needs it
    try:
        return datasets.load_dataset(*args, **kwargs).to_list()
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetGenerationError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{source}: cannot read the data set: {first}") from None


def get_field(row: dict, field: str):
    """The value at a dotted path, e.g. get_field(row, "reward_model.ground_truth"); None when absent."""
    value = row
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def validate_rows(rows: list[dict], source, fields=("prompt", "reward_model.ground_truth")) -> None:
    """Raise UserError naming the first row (1-based) and field that is missing or, for
    `prompt`, of the wrong type (neither a non-empty string nor a list of chat messages).

    A field holding None counts as missing: parquet stores an absent key of a
    struct column as null, so the two cannot be told apart after a round trip.
    The row number is the line of a .jsonl file without blank lines.
    """
    for i, row in enumerate(rows, start=1):
        for field in fields:
            if get_field(row, field) is None:
                raise UserError(f"{source}:{i}: row is missing field '{field}'")
        if "prompt" in fields and not _is_prompt(row["prompt"]):
            raise UserError(f"{source}:{i}: field 'prompt' must be a non-empty string or a list of "
                            f"{{'role', 'content'}} messages, got {row['prompt']!r:.80}")


def _is_prompt(prompt) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    return isinstance(prompt, list) and bool(prompt) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)


def prompt_text(row: dict, tokenizer) -> str:
    """The text the policy continues: a string prompt as is, chat messages through the chat template.

    Example: {"prompt": [{"role": "user", "content": "1+1?"}]} with Qwen's
    template gives "<|im_start|>user\\n1+1?<|im_end|>\\n<|im_start|>assistant\\n".
    """
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}: the prompt is a list of chat messages "
                "but the tokenizer has no chat template; "
                "use a tokenizer with one, or store the prompt as a plain string"
            )
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    raise UserError(f"prompt must be a string or a list of {{'role', 'content'}} messages, got {prompt!r:.200}")


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's strided share: items[rank::world_size].

    Every rank must get the same count (uneven shares would make ranks run
    different numbers of collectives and hang), so a length that does not divide
    evenly is an error rather than silently dropped rows: choose a batch size
    that is a multiple of the world size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if len(items) % world_size:
        raise ValueError(
            f"cannot shard {len(items)} items evenly over {world_size} ranks; "
            f"use a batch size that is a multiple of {world_size}"
        )
    return list(items[rank::world_size])


def _epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)  # (n_rows,)


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The row indices of global step `step` (0-based): positions step*B .. step*B+B-1 of the stream.

    The stream is epoch 0's permutation, then epoch 1's, ...; a batch may span an
    epoch boundary, so every row is seen exactly once per epoch.
    Example: n_rows=5, batch_size=2 -> steps 0, 1 cover 4 rows of epoch 0;
    step 2 is the last row of epoch 0 and the first of epoch 1.
    """
    if n_rows < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need n_rows >= 1, batch_size >= 1, step >= 0; got {n_rows}, {batch_size}, {step}")
    start, stop = step * batch_size, (step + 1) * batch_size
    out = []
    for epoch in range(start // n_rows, (stop - 1) // n_rows + 1):
        order = _epoch_order(n_rows, seed, epoch)
        lo, hi = max(start - epoch * n_rows, 0), min(stop - epoch * n_rows, n_rows)
        out.extend(order[lo:hi].tolist())
    return out
