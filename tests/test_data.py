"""data.py: row loading and its error messages, prompt building, sharding, the deterministic data order."""

import json
import re

import datasets
import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from fapo_mini.data import batch_indices, get_field, load_rows, prompt_text, shard, validate_rows
from fapo_mini.errors import UserError

# verl-format rows (the shape of DAPO-Math / FAPO-Critic rows), written by hand.
ROWS = [
    {
        "data_source": "toy",
        "prompt": [{"role": "user", "content": "What is 2+3?"}],
        "reward_model": {"style": "rule", "ground_truth": "5"},
        "extra_info": {"index": 0},
    },
    {
        "data_source": "toy",
        "prompt": [{"role": "user", "content": "What is 4*4?"}],
        "reward_model": {"style": "rule", "ground_truth": "16"},
        "extra_info": {"index": 1},
    },
]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    # keep the arrow cache `datasets` writes for parquet / json inside the test's folder
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def test_jsonl_reads_rows_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1])])
    assert load_rows(path) == ROWS
    assert load_rows(str(path)) == ROWS


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "x",'])
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:3: malformed JSON: "):
        load_rows(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(ROWS[0]), "[1, 2]"])
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:2: expected a JSON object, got list"):
        load_rows(path)


def test_empty_file_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: the data set is empty"):
        load_rows(path)


def test_missing_path_is_file_not_found(tmp_path):
    for missing in (tmp_path / "nope.jsonl", "data/train.parquet", "no/such/dir"):
        with pytest.raises(UserError, match="data file not found: "):
            load_rows(missing)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n")
    with pytest.raises(UserError, match=r"unsupported data file"):
        load_rows(path)


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    assert load_rows(path) == ROWS


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    assert load_rows(path) == ROWS


def test_hub_name_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("BytedTsinghua-SIA/DAPO-Math-17k", split="test") == ROWS
    assert calls == [("BytedTsinghua-SIA/DAPO-Math-17k", "test")]


def test_validate_rows_names_line_and_field():
    rows = [ROWS[0], {"prompt": "x", "reward_model": {"style": "rule"}}, {"reward_model": {"ground_truth": "1"}}]
    validate_rows(rows[:1], "d.jsonl")  # a good row passes
    with pytest.raises(UserError, match=r"^d\.jsonl:2: row is missing field 'reward_model\.ground_truth'$"):
        validate_rows(rows, "d.jsonl")
    with pytest.raises(UserError, match=r"^d\.jsonl:3: row is missing field 'prompt'$"):
        validate_rows([ROWS[0], ROWS[1], rows[2]], "d.jsonl", fields=("reward_model.ground_truth", "prompt"))
    # None (what parquet stores for an absent struct key) counts as missing
    with pytest.raises(UserError, match=r"^src:1: row is missing field 'extra_info\.index'$"):
        validate_rows([{"extra_info": {"index": None}}], "src", fields=("extra_info.index",))


def test_validate_rows_names_a_prompt_of_the_wrong_type():
    good = [{"prompt": "x"}, {"prompt": [{"role": "user", "content": "x"}]}]
    validate_rows(good, "d.jsonl", fields=("prompt",))
    for bad in (3, "", [], [{"role": "user"}], [{"role": "user", "content": 7}], {"role": "user", "content": "x"}):
        with pytest.raises(UserError, match=r"^d\.jsonl:3: field 'prompt' must be a non-empty string or a list"):
            validate_rows(good + [{"prompt": bad}], "d.jsonl", fields=("prompt",))


def test_get_field():
    assert get_field(ROWS[1], "reward_model.ground_truth") == "16"
    assert get_field(ROWS[1], "reward_model.missing") is None
    assert get_field({"prompt": "x"}, "prompt.deeper") is None


def _tokenizer(chat_template=None):
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = chat_template
    return tok


QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_prompt_text():
    tok = _tokenizer(QWEN_LIKE)
    assert prompt_text({"prompt": "2+3 = "}, tok) == "2+3 = "  # a string is used as is
    assert prompt_text(ROWS[0], tok) == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    system_and_user = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert prompt_text(system_and_user, tok) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_text_errors():
    with pytest.raises(UserError, match="tokenizer has no chat template"):
        prompt_text(ROWS[0], _tokenizer())
    with pytest.raises(UserError, match="prompt must be a string or a list"):
        prompt_text({"prompt": [{"text": "no role"}]}, _tokenizer(QWEN_LIKE))
    with pytest.raises(UserError, match="prompt must be a string or a list"):
        prompt_text({"question": "no prompt"}, _tokenizer(QWEN_LIKE))


def test_shard_is_strided_and_even():
    items = list(range(12))
    shares = [shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert sorted(sum(shares, [])) == items
    assert shard(items, 0, 1) == items
    with pytest.raises(ValueError, match="cannot shard 12 items evenly over 5 ranks"):
        shard(items, 0, 5)
    with pytest.raises(ValueError, match="rank 3 is outside 0..2"):
        shard(items, 3, 3)


def _reference_batches(n_rows, batch_size, n_steps, seed):
    """The straightforward loop: concatenate epoch permutations, cut into consecutive chunks."""
    stream, epoch = [], 0
    while len(stream) < n_steps * batch_size:
        stream += np.random.default_rng([seed, epoch]).permutation(n_rows).tolist()
        epoch += 1
    return [stream[s * batch_size : (s + 1) * batch_size] for s in range(n_steps)]


@pytest.mark.parametrize("n_rows,batch_size", [(10, 3), (12, 4), (5, 7), (1, 2)])
def test_batch_indices_matches_loop_reference(n_rows, batch_size):
    n_steps = 3 * n_rows // batch_size + 2
    reference = _reference_batches(n_rows, batch_size, n_steps, seed=7)
    assert [batch_indices(n_rows, batch_size, s, seed=7) for s in range(n_steps)] == reference


def test_batch_indices_covers_every_row_once_per_epoch_and_is_deterministic():
    n_rows, batch_size = 12, 4  # 3 steps per epoch
    for epoch in range(3):
        seen = sum((batch_indices(n_rows, batch_size, s, seed=0) for s in range(3 * epoch, 3 * epoch + 3)), [])
        assert sorted(seen) == list(range(n_rows))
    assert batch_indices(n_rows, batch_size, 5, seed=0) == batch_indices(n_rows, batch_size, 5, seed=0)
    epoch0, epoch1 = ([i for s in range(3 * e, 3 * e + 3) for i in batch_indices(12, 4, s, 0)] for e in (0, 1))
    assert epoch0 != epoch1  # a fresh order each epoch
    assert batch_indices(n_rows, batch_size, 0, seed=0) != batch_indices(n_rows, batch_size, 0, seed=1)


def test_batch_indices_bad_arguments():
    with pytest.raises(ValueError, match="need n_rows >= 1"):
        batch_indices(0, 4, 0, seed=0)
    with pytest.raises(ValueError, match="need n_rows >= 1"):
        batch_indices(10, 4, -1, seed=0)
