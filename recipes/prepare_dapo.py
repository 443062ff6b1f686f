"""Hub math sets -> verl-format rows with the paper's prompt: the recipes' training and test data.

Why this file exists: the trainers and rollout.py read verl rows (`prompt` as chat
messages, `reward_model.ground_truth`), but the sets the paper uses are published in
other shapes; DAPO-Math-17k-Processed, for one, has the bare question in a string column
`prompt` and the answer in `solution`. This script turns each into verl rows the way the
FAPO authors do (yyDing1/FAPO, fapo/fapo_reasoning/data_process.py, `example_map_fn`):

    prompt       [{"role": "user", "content": question.strip() + SUFFIX}]
    reward_model {"style": "rule", "ground_truth": str(answer)}
    extra_info   {"split", "index", "question"}   (the raw question, what the GenRM should see)

Presets (hub name, config, split, question column, answer column). What they rest on, as
nothing could be downloaded here: DAPO's columns come from the set's own builder script
(create_dataset.py of open-r1/DAPO-Math-17k-Processed: `prompt` = the text of the
original first user message with DAPO's instruction removed, `solution` = its
`reward_model.ground_truth`; configs "all" / "en" / "cn") and from the authors'
data_process.py, which loads config "all"; AIME24's from its data card (ID, Problem,
Solution, Answer); AIME25's and MATH-500's from public loaders of those sets (the
authors' script reads yentinglin/aime_2025's answer from `solution`; every other loader
found reads `answer`, and so does this one). If a set has changed, --question-key and
--answer-key override the columns, and a missing column is an error that lists the
columns there are.

Simplified away: the authors repeat the test sets 32x in the file (rollout.py --n 32
does that here) and repeat the training set 20x (our data order already loops over
epochs); GPQA-Diamond.

    python -m recipes.prepare_dapo --preset dapo --out data/dapo_train.jsonl
    python -m recipes.prepare_dapo --preset aime24 --source my_aime24.parquet --out data/aime24.jsonl
"""
import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import datasets

from fapo_mini.data import load_rows, read_dataset
from fapo_mini.errors import UserError, cli
from fapo_mini.preflight import check_output

# docs/method.md §2 (paper App. F): the paper's prompt = question + this suffix
SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Preset:
    source: str            # hub name (or a local file given with --source)
    config: str | None     # hub config name
    split: str             # hub split
    question_key: str
    answer_key: str
    data_source: str       # the authors' data_source tag
    use: str               # extra_info.split, as the authors write it: "train" or "test"


PRESETS = {
    "dapo": Preset("open-r1/DAPO-Math-17k-Processed", "all", "train", "prompt", "solution", "math-dapo", "train"),
    "aime24": Preset("Maxwell-Jia/AIME_2024", None, "train", "Problem", "Answer", "aime24", "test"),
    "aime25": Preset("yentinglin/aime_2025", None, "train", "problem", "answer", "aime25", "test"),
    "math500": Preset("HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "math500", "test"),
}


def read_source(source: str, config: str | None, split: str) -> list[dict]:
    """Rows of a local .jsonl / .json / .parquet file, else of the hub set `source` (config, split)."""
    path = Path(source)
    if path.exists():
        return load_rows(path)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        raise UserError(f"data file not found: {source}")
    rows = read_dataset(source, source, config, split=split)
    if not rows:
        raise UserError(f"{source}: the data set is empty")
    return rows


def to_verl(rows: list[dict], preset: Preset) -> list[dict]:
    """Raw rows -> verl rows with the paper's prompt (see the module docstring for the layout).

    Example (dapo): {"prompt": "Find x if 2x = 6.", "solution": "3"} ->
    {"prompt": [{"role": "user", "content": "Find x if 2x = 6.\\n\\nPlease reason step by step, and put
    your final answer within \\\\boxed{}."}], "reward_model": {"style": "rule", "ground_truth": "3"}, ...}
    """
    out = []
    for i, row in enumerate(rows):
        for key in (preset.question_key, preset.answer_key):
            if key not in row:
                raise UserError(f"row {i}: no column {key!r} (columns: {', '.join(sorted(row))}); "
                                 "pass --question-key / --answer-key")
        question, answer = row[preset.question_key], row[preset.answer_key]
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"row {i}: column {preset.question_key!r} must be a non-empty string, "
                             f"got {question!r:.80}")
        if answer is None or not str(answer).strip():
            raise UserError(f"row {i}: column {preset.answer_key!r} is empty")
        out.append({
            "data_source": preset.data_source,
            "prompt": [{"role": "user", "content": question.strip() + SUFFIX}],
            "ability": "Math",
            "reward_model": {"style": "rule", "ground_truth": str(answer)},
            "extra_info": {"split": preset.use, "index": i, "question": question},
        })
    return out


def write_rows(rows: list[dict], out: Path) -> None:
    """Write .jsonl (one JSON object a line) or .parquet."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(out))


def prepare(preset_name: str, out, source: str | None = None, question_key: str | None = None,
            answer_key: str | None = None) -> list[dict]:
    """Read a preset's rows (from `source` if given, else its hub set), convert, write to `out`."""
    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    if Path(out).suffix not in (".jsonl", ".parquet"):   # before a download, not after
        raise UserError(f"{out}: the output must end in .jsonl or .parquet")
    check_output(out, folder=False)
    preset = PRESETS[preset_name]
    preset = replace(preset, question_key=question_key or preset.question_key,
                     answer_key=answer_key or preset.answer_key)
    rows = to_verl(read_source(source or preset.source, preset.config, preset.split), preset)
    write_rows(rows, Path(out))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS), help="which set (fixes the defaults below)")
    ap.add_argument("--out", required=True, help="output .jsonl or .parquet")
    ap.add_argument("--source", help="local .jsonl / .json / .parquet, or a hub mirror with the preset's config and split "
                    "(default: the preset's hub set)")
    ap.add_argument("--question-key", help="question column (default: the preset's)")
    ap.add_argument("--answer-key", help="answer column (default: the preset's)")
    args = ap.parse_args()
    rows = prepare(args.preset, args.out, args.source, args.question_key, args.answer_key)
    print(f"{args.preset}: {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    cli(main)
