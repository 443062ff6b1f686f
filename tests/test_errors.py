"""Bad input meets one line: `error: ...` naming the path, file:line or field, status 2, no traceback.

Every entry point runs at least once as a real subprocess (the exit status and the
absence of "Traceback" are only honest there), and once under torchrun with two ranks
(every rank must exit, none may hang). The many model-folder and data variants run
in-process through the same `errors.cli(main)` the scripts' `__main__` calls, with
sys.argv patched: the same code path, without paying ~3 s of imports per case.
Model folders are built once per module from conftest's tiny Qwen3 checkpoint.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import rollout  # noqa: E402
import train_genrm  # noqa: E402
import train_policy  # noqa: E402
from fapo_mini import errors, sft, toycritic, toyreport, toyworld  # noqa: E402
from recipes import prepare_dapo  # noqa: E402

POLICY_ROW = {"data_source": "math", "prompt": "1+1?", "reward_model": {"ground_truth": "2"}}


def critic_row(label, n_steps):
    return {"prompt": "critique this", "reward_model": {"ground_truth": label}, "extra_info": {"total_steps": n_steps}}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def dirs(qwen3_dir, tmp_path_factory):
    """Model folders, one problem each, and data files, one problem each."""
    root = tmp_path_factory.mktemp("errors")
    good = Path(qwen3_dir)

    def folder(name, files=(), config=None, weights=None):
        d = root / name
        d.mkdir()
        for f in files:
            shutil.copy(good / f, d / f)
        if config is not None:
            (d / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()), **config}))
        if weights is not None:
            (d / "model.safetensors").write_bytes(weights)
        return d

    tok_files = [f.name for f in good.iterdir() if f.name.startswith("tokenizer")]
    weights = (good / "model.safetensors").read_bytes()
    out = {
        "good": good,
        "empty": folder("empty"),
        "no_config": folder("no_config", ["model.safetensors", *tok_files]),
        "no_weights": folder("no_weights", ["config.json", *tok_files]),
        "truncated": folder("truncated", ["config.json", *tok_files], weights=weights[:1000]),
        "corrupt": folder("corrupt", ["config.json", *tok_files],
                          weights=weights[:8] + b"\xff" * 64 + weights[72:]),
        "llama": folder("llama", ["model.safetensors", *tok_files], config={"model_type": "llama"}),
        "no_tokenizer": folder("no_tokenizer", ["config.json", "model.safetensors"]),
        "bad_tokenizer": folder("bad_tokenizer", ["config.json", "model.safetensors", *tok_files]),
        "mismatch": folder("mismatch", ["model.safetensors", *tok_files], config={"num_hidden_layers": 3, "layer_types": None}),
        "missing_shard": folder("missing_shard", ["config.json", *tok_files]),
        "small_vocab": folder("small_vocab", ["model.safetensors", *tok_files], config={"vocab_size": 100}),
        "short": folder("short", ["model.safetensors", *tok_files], config={"max_position_embeddings": 24}),
        "a_file": root / "a_file",
        "policy": write_jsonl(root / "policy.jsonl", [POLICY_ROW] * 4),
        "empty_data": write_jsonl(root / "empty.jsonl", []),
        "malformed": write_jsonl(root / "malformed.jsonl", [POLICY_ROW, POLICY_ROW, '{"prompt": "x", '] + [POLICY_ROW]),
        "no_prompt": write_jsonl(root / "no_prompt.jsonl", [POLICY_ROW, {"reward_model": {"ground_truth": "1"}}]),
        "bad_prompt": write_jsonl(root / "bad_prompt.jsonl", [POLICY_ROW, {**POLICY_ROW, "prompt": 17}]),
        "long": write_jsonl(root / "long.jsonl", [POLICY_ROW, {**POLICY_ROW, "prompt": "x" * 20},
                                                   POLICY_ROW, {**POLICY_ROW, "prompt": "y" * 30}]),
        "critic": write_jsonl(root / "critic_ok.jsonl", [critic_row(0, 3), critic_row(-1, 3)]),
        "critic_bad_label": write_jsonl(root / "critic.jsonl", [critic_row(-1, 3), critic_row("1", 3),
                                                                critic_row(3, 3), critic_row(0, 3)]),
        "critic_word_label": write_jsonl(root / "critic_w.jsonl", [critic_row("two", 3)] * 2),
        "critic_no_steps": write_jsonl(root / "critic_s.jsonl", [critic_row(0, 0)] * 2),
    }
    out["a_file"].write_text("not a folder\n")
    (out["bad_tokenizer"] / "tokenizer.json").write_text('{"version": "1.0", "model": 12}')
    (out["missing_shard"] / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
    return out


def run_cli(monkeypatch, capsys, main, argv):
    """errors.cli(main) with sys.argv = argv -> (exit status, the last line of stderr)."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        errors.cli(main)
    err = capsys.readouterr().err.strip()
    return e.value.code, err.splitlines()[-1] if err else ""


def run_script(*args, env=None):
    """A real subprocess from the repository root -> (status, stdout + stderr, the last line of stderr)."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})})
    return p.returncode, p.stdout + p.stderr, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def assert_one_line(status, output, last, *names):
    assert status == 2, output
    assert "Traceback" not in output, output
    assert last.startswith("error: "), output
    for name in names:
        assert str(name) in last, (name, last)


# ---------------------------------------------------------------- every entry point, as a subprocess

def test_rollout_subprocess_missing_model(tmp_path, dirs):
    status, output, last = run_script("rollout.py", "--model", "/no/such/dir", "--data", str(dirs["policy"]),
                                      "--out", str(tmp_path / "o.jsonl"))
    assert_one_line(status, output, last, "/no/such/dir", "no such model folder")


def test_rollout_subprocess_truncated_weights(tmp_path, dirs):
    status, output, last = run_script("rollout.py", "--model", str(dirs["truncated"]), "--data", str(dirs["policy"]),
                                      "--out", str(tmp_path / "o.jsonl"))
    assert_one_line(status, output, last, dirs["truncated"] / "model.safetensors", "truncated or corrupt")


def test_train_policy_subprocess_malformed_line(tmp_path, dirs):
    status, output, last = run_script("train_policy.py", "--model", str(dirs["good"]), "--data", str(dirs["malformed"]),
                                      "--out", str(tmp_path / "run"), "--judge", "none")
    assert_one_line(status, output, last, f"{dirs['malformed']}:3:", "malformed JSON")


def test_train_genrm_subprocess_label_out_of_range(tmp_path, dirs):
    status, output, last = run_script("train_genrm.py", "--model", str(dirs["good"]), "--data",
                                      str(dirs["critic_bad_label"]), "--out", str(tmp_path / "run"))
    assert_one_line(status, output, last, f"{dirs['critic_bad_label']}:3:", "'reward_model.ground_truth'", "-1..2")


def test_train_genrm_torchrun_every_rank_exits(tmp_path, dirs):
    """Truncated weights: found by load_model inside the loop's setup, after the process group is up."""
    data = write_jsonl(tmp_path / "c.jsonl", [critic_row(0, 2)] * 4)
    status, output, last = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "train_genrm.py",
                                      "--model", str(dirs["truncated"]), "--data", str(data),
                                      "--out", str(tmp_path / "run"), "--prompts-per-step", "2")
    # torchrun's launcher reports a failed worker with its own ChildFailedError traceback (frames in
    # torch/distributed/run.py); the workers themselves must show none: no frame from this repository's
    # code (a virtual environment inside the checkout, as CI makes, holds torch's own frames)
    ours = [line for line in output.splitlines() if f'File "{ROOT}' in line and "site-packages" not in line]
    assert status != 0 and not ours, output
    # the first rank to fail says why; torchrun then ends the other (it may be stopped before it prints)
    assert output.count(f"error: {dirs['truncated'] / 'model.safetensors'}: unreadable safetensors file") >= 1, output


def test_sft_subprocess_malformed_line(tmp_path, dirs):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}, "{not json"])
    status, output, last = run_script("-m", "fapo_mini.sft", "--data", str(data), "--tokenizer", str(dirs["good"]),
                                      "--new-model", "d64-l1", "--out", str(tmp_path / "m"))
    assert_one_line(status, output, last, f"{data}:2:", "malformed JSON")


def test_toyworld_subprocess_out_is_a_file(dirs):
    status, output, last = run_script("-m", "fapo_mini.toyworld", "world", "--out", str(dirs["a_file"]))
    assert_one_line(status, output, last, dirs["a_file"], "is a file")


def test_toycritic_subprocess_missing_rollouts(tmp_path):
    status, output, last = run_script("-m", "fapo_mini.toycritic", "--rollouts", str(tmp_path / "none.jsonl"),
                                      "--out", str(tmp_path / "o"))
    assert_one_line(status, output, last, tmp_path / "none.jsonl", "not found")


def test_report_subprocess_missing_folder(tmp_path):
    status, output, last = run_script("-m", "fapo_mini.toyreport", "--out", str(tmp_path / "no_run"))
    assert_one_line(status, output, last, tmp_path / "no_run", "no such folder")


def test_prepare_dapo_subprocess_missing_source(tmp_path):
    status, output, last = run_script("-m", "recipes.prepare_dapo", "--preset", "aime24", "--source",
                                      str(tmp_path / "aime.parquet"), "--out", str(tmp_path / "o.jsonl"))
    assert_one_line(status, output, last, tmp_path / "aime.parquet", "not found")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        errors.cli(lambda: 1 / 0)


# ---------------------------------------------------------------- the variants, in-process

MODEL_CASES = [  # folder, what the line must name besides the path
    ("empty", "no config.json"),
    ("no_config", "no config.json"),
    ("no_weights", "no model.safetensors"),
    ("truncated", "truncated or corrupt"),
    ("corrupt", "truncated or corrupt"),
    ("llama", "model_type 'llama' is not supported (supported: qwen2, qwen3)"),
    ("mismatch", "the weights do not match config.json: missing 11 tensors (model.layers.2."),
    ("missing_shard", "model-00001-of-00002.safetensors: missing, but model.safetensors.index.json lists it"),
    ("no_tokenizer", "no tokenizer files"),
    ("bad_tokenizer", "cannot load the tokenizer"),
    ("a_file", "is a file, not a model folder"),
]


@pytest.mark.parametrize("name,what", MODEL_CASES)
def test_rollout_model_folder(monkeypatch, capsys, tmp_path, dirs, name, what):
    status, last = run_cli(monkeypatch, capsys, rollout.main, ["rollout.py", "--model", str(dirs[name]), "--data",
                                                               str(dirs["policy"]), "--out", str(tmp_path / "o.jsonl")])
    assert status == 2 and last.startswith(f"error: {dirs[name]}") and what in last, last


@pytest.mark.parametrize("name,what", [("empty", "no tokenizer files")] + MODEL_CASES[1:])  # GenRMJudge: tokenizer first
def test_rollout_genrm_folder(monkeypatch, capsys, tmp_path, dirs, name, what):
    status, last = run_cli(monkeypatch, capsys, rollout.main,
                           ["rollout.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]),
                            "--genrm", str(dirs[name]), "--out", str(tmp_path / "o.jsonl")])
    assert status == 2 and last.startswith(f"error: --genrm: {dirs[name]}") and what in last, last
    assert not (tmp_path / "o.jsonl").exists()   # refused before any sampling


@pytest.mark.parametrize("main,script,extra", [(train_policy.main, "train_policy.py", ["--judge", "none"]),
                                               (train_genrm.main, "train_genrm.py", []),
                                               (sft.main, "sft.py", [])])
@pytest.mark.parametrize("name,what", [("no_config", "no config.json"), ("truncated", "truncated or corrupt"),
                                       ("no_tokenizer", "no tokenizer files")])
def test_trainers_model_folder(monkeypatch, capsys, tmp_path, dirs, main, script, extra, name, what):
    data = {"train_policy.py": dirs["policy"], "train_genrm.py": write_jsonl(tmp_path / "c.jsonl", [critic_row(0, 2)]),
            "sft.py": write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "completion": "b"}])}[script]
    argv = [script, "--model", str(dirs[name]), "--data", str(data), "--out", str(tmp_path / "run"), *extra]
    if script != "sft.py":
        argv += ["--prompts-per-step", "1"]
    status, last = run_cli(monkeypatch, capsys, main, argv)
    assert status == 2 and last.startswith(f"error: {dirs[name]}") and what in last, last


def test_train_policy_genrm_folder(monkeypatch, capsys, tmp_path, dirs):
    status, last = run_cli(monkeypatch, capsys, train_policy.main,
                           ["train_policy.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]),
                            "--genrm", str(dirs["llama"]), "--out", str(tmp_path / "run"), "--prompts-per-step", "2"])
    assert status == 2 and last == (f"error: --genrm: {dirs['llama']}/config.json: model_type 'llama' "
                                    "is not supported (supported: qwen2, qwen3)"), last


DATA_CASES = [  # data file, what the line must say
    ("missing", "data file not found: "),
    ("empty_data", ": the data set is empty"),
    ("malformed", ":3: malformed JSON"),
    ("no_prompt", ":2: row is missing field 'prompt'"),
    ("bad_prompt", ":2: field 'prompt' must be a non-empty string or a list"),
]


@pytest.mark.parametrize("main,script", [(rollout.main, "rollout.py"), (train_policy.main, "train_policy.py")])
@pytest.mark.parametrize("name,what", DATA_CASES)
def test_data_problems(monkeypatch, capsys, tmp_path, dirs, main, script, name, what):
    data = dirs.get(name, tmp_path / "missing.jsonl")
    argv = [script, "--model", str(dirs["good"]), "--data", str(data), "--out", str(tmp_path / "o")]
    status, last = run_cli(monkeypatch, capsys, main, argv + (["--judge", "none"] if script != "rollout.py" else []))
    assert status == 2 and last.startswith("error: ") and str(data) in last and what in last, last


@pytest.mark.parametrize("name,what", [("critic_bad_label", ":3: field 'reward_model.ground_truth' must be the first "
                                                             "wrong step, an integer in -1..2 (total_steps 3), got 3"),
                                       ("critic_word_label", ":1: field 'reward_model.ground_truth' must be"),
                                       ("critic_no_steps", ":1: field 'extra_info.total_steps' must be an integer >= 1")])
@pytest.mark.parametrize("main,script", [(rollout.main, "rollout.py"), (train_genrm.main, "train_genrm.py")])
def test_genrm_labels_checked_at_load(monkeypatch, capsys, tmp_path, dirs, main, script, name, what):
    status, last = run_cli(monkeypatch, capsys, main, [script, "--model", str(dirs["good"]), "--data", str(dirs[name]),
                                                       "--out", str(tmp_path / "o")])
    assert status == 2 and last.startswith(f"error: {dirs[name]}{what}"), last


@pytest.mark.parametrize("main,script", [(rollout.main, "rollout.py"), (train_policy.main, "train_policy.py")])
def test_prompts_too_long_for_the_model(monkeypatch, capsys, tmp_path, dirs, main, script):
    # max_position_embeddings 24 - 8 new tokens = 16: rows 2 (20 tokens) and 4 (30) do not fit, "1+1?" (4) does
    argv = [script, "--model", str(dirs["short"]), "--data", str(dirs["long"]), "--out", str(tmp_path / "o"),
            "--max-new-tokens", "8"] + (["--judge", "none", "--prompts-per-step", "2"] if script != "rollout.py" else [])
    status, last = run_cli(monkeypatch, capsys, main, argv)
    assert status == 2 and last == (f"error: {dirs['long']}: 2 of 4 prompts are longer than 16 tokens "
                                    "(max_position_embeddings 24 - --max-new-tokens 8), the first at row 2 with 20 "
                                    "tokens; shorten or drop them, or lower --max-new-tokens"), last


def test_tokenizer_of_another_model(monkeypatch, capsys, tmp_path, dirs):
    # config.json says 100 tokens; the byte tokenizer gives 'x' = 120 (row 2) and 'y' = 121 (row 4)
    status, last = run_cli(monkeypatch, capsys, train_policy.main,
                           ["train_policy.py", "--model", str(dirs["small_vocab"]), "--data", str(dirs["long"]),
                            "--out", str(tmp_path / "o"), "--judge", "none"])
    assert status == 2 and last == (f"error: {dirs['long']}:2: token id 120 >= the model's vocab_size 100 (2 such "
                                    "rows): the tokenizer does not belong to this model"), last


def test_out_of_the_wrong_kind(monkeypatch, capsys, tmp_path, dirs):
    status, last = run_cli(monkeypatch, capsys, rollout.main, ["rollout.py", "--model", str(dirs["good"]), "--data",
                                                               str(dirs["policy"]), "--out", str(tmp_path)])
    assert status == 2 and last == f"error: --out {tmp_path}: is a folder, expected a file", last
    for main, script in ((train_policy.main, "train_policy.py"), (train_genrm.main, "train_genrm.py"),
                         (sft.main, "sft.py")):
        argv = [script, "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(dirs["a_file"])]
        status, last = run_cli(monkeypatch, capsys, main, argv + (["--judge", "none"] if main is train_policy.main else []))
        assert status == 2 and last == f"error: --out {dirs['a_file']}: is a file, expected a folder", (script, last)
    status, last = run_cli(monkeypatch, capsys, rollout.main, ["rollout.py", "--model", str(dirs["good"]), "--data",
                                                               str(dirs["policy"]), "--out", str(dirs["a_file"] / "o.jsonl")])
    assert status == 2 and last == f"error: --out {dirs['a_file'] / 'o.jsonl'}: {dirs['a_file']} is a file, not a folder"


def test_small_entry_points(monkeypatch, capsys, tmp_path, dirs):
    """toycritic, toyreport and prepare_dapo on their own kinds of bad input."""
    status, last = run_cli(monkeypatch, capsys, toycritic.main, ["toycritic", "--rollouts", str(dirs["policy"]),
                                                                 "--out", str(tmp_path / "c")])
    assert status == 2 and last == f"error: {dirs['policy']}:1: row is missing field 'response'", last
    math_rollouts = write_jsonl(tmp_path / "math_rollouts.jsonl", [{**POLICY_ROW, "response": "2"}])
    status, last = run_cli(monkeypatch, capsys, toycritic.main, ["toycritic", "--rollouts", str(math_rollouts),
                                                                 "--out", str(tmp_path / "c")])
    assert status == 2 and last == (f"error: {math_rollouts}:1: field 'prompt' is not a toy-world prompt: toycritic "
                                    "labels rollouts with the toy world's oracle (rollout.py on its rows)"), last
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "grpo_s0_test.json").write_text("progress bar junk\n")
    status, last = run_cli(monkeypatch, capsys, toyreport.main, ["toyreport", "--out", str(tmp_path)])
    assert status == 2 and last.startswith(f"error: {tmp_path / 'eval' / 'grpo_s0_test.json'}:1: not a rollout.py"), last
    src = write_jsonl(tmp_path / "raw.jsonl", [{"question": "1+1?", "solution": "2"}])
    status, last = run_cli(monkeypatch, capsys, prepare_dapo.main, ["prepare_dapo", "--preset", "dapo", "--source",
                                                                    str(src), "--out", str(tmp_path / "o.jsonl")])
    assert status == 2 and last.startswith("error: row 0: no column 'prompt' (columns: question, solution)"), last
    status, last = run_cli(monkeypatch, capsys, toyworld.main, ["toyworld", "world", "--out", str(dirs["a_file"])])
    assert status == 2 and last == f"error: --out {dirs['a_file']}: is a file, expected a folder", last


def test_rollout_scores_a_file_whole_or_not_at_all(monkeypatch, capsys, tmp_path, dirs):
    """A row without a ground truth among scored rows, or policy rows among critic rows, was
    silently left unscored; now one line names it. --stop "" was an IndexError in the sampler."""
    argv = ["rollout.py", "--model", str(dirs["good"]), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "4"]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [POLICY_ROW, {"prompt": "2+2?"}, POLICY_ROW])
    assert run_cli(monkeypatch, capsys, rollout.main, argv + ["--data", str(mixed)]) == \
        (2, f"error: {mixed}:2: row has no 'reward_model.ground_truth' but row 1 has one; give every row one, "
            "or pass --no-score")
    kinds = write_jsonl(tmp_path / "kinds.jsonl", [critic_row(0, 3), POLICY_ROW])
    assert run_cli(monkeypatch, capsys, rollout.main, argv + ["--data", str(kinds)]) == \
        (2, f"error: {kinds}:2: row has no 'extra_info.total_steps' but row 1 (a critic row) has: one file is "
            "policy rows or critic rows")
    assert run_cli(monkeypatch, capsys, rollout.main, argv + ["--data", str(dirs["policy"]), "--stop", ""]) == \
        (2, "error: --stop must be a non-empty string")
    assert not (tmp_path / "o.jsonl").exists()


def test_report_reads_a_torn_metrics_line(tmp_path):
    """A run killed while writing leaves a torn last line: report.read_metrics drops it; a bad
    line before the last one is an error naming its file:line."""
    run = tmp_path / "grpo_s0"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n{"step": 2, "accuracy": 0.75}\n{"step": 3, "acc')
    assert toyreport.read_metrics(run) == [{"step": 1, "accuracy": 0.5}, {"step": 2, "accuracy": 0.75}]
    (run / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\nprogress bar junk\n{"step": 3}\n')
    with pytest.raises(errors.UserError, match=f"^{run / 'metrics.jsonl'}:2: not a JSON line$"):
        toyreport.read_metrics(run)


def test_toyeval_bad_inputs(monkeypatch, capsys, tmp_path, dirs):
    """toyeval reads its splits as the trainers do: file:line for a malformed line, the field for
    a missing one or a prompt the oracle cannot score, the flag for --out / --max-new-tokens, the
    model and split for prompts too long for a model; all before any sampling."""
    from fapo_mini import toyeval
    good = toyworld.policy_rows(toyworld.generate(3, 0, "test", steps=(2, 2)), "test")
    data = tmp_path / "data"
    data.mkdir()

    def run(rows, *extra, model="good"):
        write_jsonl(data / "test.jsonl", rows)
        return run_cli(monkeypatch, capsys, toyeval.main, ["toyeval", "--data", str(data), "--splits", "test",
                                                           "--out", str(tmp_path / "eval"), *extra,
                                                           f"m={dirs[model]}"])
    split = data / "test.jsonl"
    assert run(good[:1] + ['{"prompt": "x", '])[1].startswith(f"error: {split}:2: ")
    assert run(good[:1] + [{"prompt": good[1]["prompt"]}])[1] == \
        f"error: {split}:2: row is missing field 'reward_model.ground_truth'"
    assert run(good[:2] + [POLICY_ROW])[1] == (f"error: {split}:3: field 'prompt' is not a toy-world prompt "
                                               "(python -m fapo_mini.toyworld world writes the splits)")
    assert run(good, "--max-new-tokens", "0")[1] == "error: --max-new-tokens must be >= 1, got 0"
    status, last = run(good, "--max-new-tokens", "8", model="short")
    assert status == 2 and last.startswith(f"error: m={dirs['short']}: {split}: 3 of 3 prompts are longer than"), last
    monkeypatch.setattr(sys, "argv", ["toyeval", "--data", str(data), "--out", str(dirs["a_file"]), f"m={dirs['good']}"])
    status, last = run_cli(monkeypatch, capsys, toyeval.main, sys.argv)
    assert status == 2 and last == f"error: --out {dirs['a_file']}: is a file, expected a folder", last
    assert not (tmp_path / "eval").exists()                     # nothing sampled, nothing written


def test_former_argparse_errors_are_one_line(monkeypatch, capsys, tmp_path, dirs):
    """Checks that argparse cannot express end as `error: ...` like every other bad input."""
    argv = ["train_policy.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(tmp_path / "r")]
    assert run_cli(monkeypatch, capsys, train_policy.main, argv + ["--judge", "genrm"]) == \
        (2, "error: --judge genrm needs --genrm DIR or --genrm-url URL")
    argv = ["sft", "--data", str(dirs["policy"]), "--model", str(dirs["good"]), "--out", str(tmp_path / "s")]
    assert run_cli(monkeypatch, capsys, sft.main, argv + ["--lr", "-1"]) == (2, "error: --lr must be > 0, got -1.0")
    assert run_cli(monkeypatch, capsys, sft.main, argv + ["--steps", "0"]) == (2, "error: --steps must be >= 1, got 0")
    assert run_cli(monkeypatch, capsys, sft.main, argv[:3] + ["--out", str(tmp_path / "s")]) == \
        (2, "error: give exactly one of --model and --new-model")


@pytest.mark.parametrize("flag,value,line", [("--n", "0", "--n must be >= 1, got 0"),
                                             ("--top-p", "1.5", "--top-p must be in (0, 1], got 1.5"),
                                             ("--temperature", "-1", "--temperature must be >= 0, got -1.0")])
def test_rollout_flag_ranges(monkeypatch, capsys, tmp_path, dirs, flag, value, line):
    argv = ["rollout.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(tmp_path / "o")]
    status, last = run_cli(monkeypatch, capsys, rollout.main, argv + [flag, value])
    assert status == 2 and last == f"error: {line}", last


@pytest.mark.parametrize("main,script,data", [(train_policy.main, "train_policy.py", "policy"),
                                              (train_genrm.main, "train_genrm.py", "critic")])
@pytest.mark.parametrize("flag,value,line", [("--steps", "0", "--steps must be >= 1, got 0"),
                                             ("--group-size", "1", "--group-size must be >= 2, got 1"),
                                             ("--save-every", "-1", "--save-every must be >= 0 (0 = only at the end), got -1"),
                                             ("--keep", "0", "--keep must be >= 1, got 0"),
                                             ("--lr", "-1", "--lr must be > 0, got -1.0"),
                                             ("--kl-coef", "-1", "--kl-coef must be >= 0 (0 = no reference model), got -1.0"),
                                             ("--clip-low", "1", "--clip-low must be in [0, 1), got 1.0"),
                                             ("--dual-clip", "1", "--dual-clip must be > 1, got 1.0"),
                                             ("--tis-cap", "-1", "--tis-cap must be >= 0 (0 = off), got -1.0"),
                                             ("--temperature", "0", "--temperature must be > 0 (training samples"),
                                             ("--top-p", "0", "--top-p must be in (0, 1], got 0.0"),
                                             ("--overlong-buffer", "500", "--overlong-buffer 500 must be <= --max-new-tokens 128"),
                                             ("--dist-timeout", "0", "--dist-timeout must be > 0 (minutes), got 0.0")])
def test_trainer_flag_ranges(monkeypatch, capsys, tmp_path, dirs, main, script, data, flag, value, line):
    argv = [script, "--model", str(dirs["good"]), "--data", str(dirs[data]), "--out", str(tmp_path / "o"), flag, value]
    status, last = run_cli(monkeypatch, capsys, main, argv + (["--judge", "none"] if data == "policy" else []))
    assert status == 2 and last.startswith(f"error: {line}"), last
    assert not (tmp_path / "o").exists()          # refused before anything is written


@pytest.mark.parametrize("flag,value,line", [("--genrm-max-rows", "0", "--genrm-max-rows must be >= 1, got 0"),
                                             ("--genrm-max-new-tokens", "0", "--genrm-max-new-tokens must be >= 1, got 0"),
                                             ("--genrm-temperature", "-1", "--genrm-temperature must be >= 0"),
                                             ("--genrm-cache-gb", "-1", "--genrm-cache-gb must be >= 0"),
                                             ("--genrm-cache-gb", "inf", "--genrm-cache-gb must be >= 0 (0 = half the memory free")])
def test_train_policy_genrm_flag_ranges(monkeypatch, capsys, tmp_path, dirs, flag, value, line):
    argv = ["train_policy.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(tmp_path / "o"),
            "--judge", "genrm", "--genrm", str(dirs["good"]), flag, value]
    status, last = run_cli(monkeypatch, capsys, train_policy.main, argv)
    assert status == 2 and last.startswith(f"error: {line}"), last


def test_mini_batches_must_divide_the_rank_batch(monkeypatch, capsys, tmp_path, dirs):
    argv = ["train_policy.py", "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(tmp_path / "o"),
            "--judge", "none", "--prompts-per-step", "2", "--group-size", "4", "--mini-batches", "3"]
    status, last = run_cli(monkeypatch, capsys, train_policy.main, argv)
    assert status == 2 and last == ("error: --mini-batches 3 must divide the 8 rollouts per rank (--prompts-per-step 2 "
                                    "/ 1 ranks x --group-size 4)"), last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("main,script", [(rollout.main, "rollout.py"), (train_policy.main, "train_policy.py")])
def test_cuda_graphs_without_a_gpu(monkeypatch, capsys, tmp_path, dirs, main, script):
    argv = [script, "--model", str(dirs["good"]), "--data", str(dirs["policy"]), "--out", str(tmp_path / "o"),
            "--cuda-graphs"] + (["--judge", "none", "--prompts-per-step", "2"] if script != "rollout.py" else [])
    status, last = run_cli(monkeypatch, capsys, main, argv)
    assert status == 2 and last.startswith("error: --cuda-graphs needs") and "CUDA" in last, last


@pytest.mark.parametrize("main,script", [(train_policy.main, "train_policy.py"), (rollout.main, "rollout.py")])
def test_ground_truth_empty_once_normalised(monkeypatch, capsys, tmp_path, dirs, main, script):
    """DAPO's rule turns "\\text{}" into "": an empty box would match it. Refused before step 1,
    naming the row (it used to be a ValueError traceback at whichever step drew the row)."""
    data = write_jsonl(tmp_path / "d.jsonl", [POLICY_ROW, {**POLICY_ROW, "reward_model": {"ground_truth": "\\text{}"}}])
    argv = [script, "--model", str(dirs["good"]), "--data", str(data), "--out", str(tmp_path / "o")]
    status, last = run_cli(monkeypatch, capsys, main, argv + (["--judge", "none"] if script != "rollout.py" else []))
    assert status == 2 and last == (f"error: {data}:2: field 'reward_model.ground_truth' is '\\\\text{{}}', an empty "
                                    "answer once normalised (docs/method.md §2): no response can be scored against it"), last
