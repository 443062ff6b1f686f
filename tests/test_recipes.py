"""recipes/: the data converter, the tiny-model helper, and each recipe's DRY_RUN=1 rehearsal.

The recipes target a GPU node and hub downloads; here they run their full code path on CPU
with tiny random models of the real architectures (recipes/tiny_model.py) and local rows
(tests/fixtures), under torchrun with 2 gloo ranks. The checks are numbers: the paper's
hyper-parameters as the trainer recorded them, the sampler-vs-trainer log-prob gap, the
warm-up learning rate after two updates, row counts, and exact converted prompt text.
"""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from fapo_mini.data import load_rows, prompt_text, validate_rows
from fapo_mini.judge import GenRMJudge
from fapo_mini.errors import UserError
from fapo_mini.model import load_model, load_tokenizer
from recipes import prepare_dapo
from recipes.tiny_model import make_tiny

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SUFFIX_TEXT = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."  # the paper's, typed out


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {like: make_tiny(like, root / like) for like in ("qwen2", "qwen3")}


def run_recipe(script, out, tiny=None, **env):
    """bash recipes/<script> with DRY_RUN=1; `tiny` maps folder names under OUT to pre-made tiny models."""
    for name, src in (tiny or {}).items():
        shutil.copytree(src, out / name)
    full_env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "OMP_NUM_THREADS": "1",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(ROOT / "recipes" / script)], env=full_env, capture_output=True, text=True,
                          timeout=300)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the converter

DAPO_ROWS = [json.loads(line) for line in (FIXTURES / "dapo-processed-sample.jsonl").read_text().splitlines()]


def test_dapo_local_parquet_to_verl_rows(tmp_path):
    src = tmp_path / "dapo.parquet"
    datasets.Dataset.from_list(DAPO_ROWS).to_parquet(str(src))
    out = tmp_path / "train.parquet"
    prepare_dapo.prepare("dapo", out, source=str(src))
    rows = load_rows(out)
    validate_rows(rows, out)
    assert len(rows) == 4
    assert rows[0] == {
        "data_source": "math-dapo",
        "prompt": [{"role": "user", "content": "What is the remainder when $2^{10}$ is divided by $7$?" + SUFFIX_TEXT}],
        "ability": "Math",
        "reward_model": {"style": "rule", "ground_truth": "2"},
        "extra_info": {"split": "train", "index": 0, "question": "What is the remainder when $2^{10}$ is divided by $7$?"},
    }
    # the question is stripped in the prompt (as the authors do) and kept raw in extra_info
    assert rows[1]["prompt"][0]["content"] == "How many positive divisors does $36$ have?" + SUFFIX_TEXT
    assert rows[1]["extra_info"]["question"] == "  How many positive divisors does $36$ have?\n"
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "9", "5", "11"]


def test_dapo_hub_name_goes_through_load_dataset(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(DAPO_ROWS[2:])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "train.jsonl"
    prepare_dapo.prepare("dapo", out)
    assert calls == [("open-r1/DAPO-Math-17k-Processed", "all", "train")]
    rows = load_rows(out)
    assert [r["prompt"][0]["content"] for r in rows] == [
        "If $3x + 5 = 20$, what is the value of $x$?" + SUFFIX_TEXT,
        "The sum of the first $n$ positive odd integers is $121$. Find $n$." + SUFFIX_TEXT]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["5", "11"]


@pytest.mark.parametrize("preset, hub, split, first_gt", [
    ("aime24", "Maxwell-Jia/AIME_2024", "train", "9"),       # Answer is an int there: written as a string
    ("aime25", "yentinglin/aime_2025", "train", "56"),
    ("math500", "HuggingFaceH4/MATH-500", "test", "15"),
])
def test_eval_presets(tmp_path, monkeypatch, preset, hub, split, first_gt):
    local = load_rows(FIXTURES / f"{preset}-sample.jsonl")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, config=None, split=None: calls.append((name, config, split))
                        or datasets.Dataset.from_list(local))
    rows = prepare_dapo.prepare(preset, tmp_path / "t.jsonl")
    assert calls == [(hub, None, split)]
    assert rows == prepare_dapo.prepare(preset, tmp_path / "l.jsonl", source=str(FIXTURES / f"{preset}-sample.jsonl"))
    assert rows[0]["reward_model"]["ground_truth"] == first_gt
    assert rows[0]["extra_info"]["split"] == "test" and rows[0]["data_source"] == preset
    question = local[0]["Problem" if preset == "aime24" else "problem"]
    assert rows[0]["prompt"] == [{"role": "user", "content": question + SUFFIX_TEXT}]


def test_converter_errors(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"question": "1+1?", "solution": "2"}) + "\n")
    with pytest.raises(UserError, match=r"no column 'prompt' \(columns: question, solution\)"):
        prepare_dapo.prepare("dapo", tmp_path / "o.jsonl", source=str(src))
    rows = prepare_dapo.prepare("dapo", tmp_path / "o.jsonl", source=str(src), question_key="question")
    assert rows[0]["prompt"][0]["content"] == "1+1?" + SUFFIX_TEXT
    with pytest.raises(UserError, match="missing.parquet"):
        prepare_dapo.prepare("dapo", tmp_path / "o.jsonl", source=str(tmp_path / "missing.parquet"))
    with pytest.raises(UserError, match=r"\.jsonl or \.parquet"):
        prepare_dapo.prepare("dapo", tmp_path / "o.csv", source=str(src))
    with pytest.raises(UserError, match="unknown preset 'gsm8k'"):
        prepare_dapo.prepare("gsm8k", tmp_path / "o.jsonl")


# ---------------------------------------------------------------- the tiny models

@pytest.mark.parametrize("like, eos, qkv_bias, qk_norm, head_dim", [
    ("qwen2", 256, True, False, 16),     # Qwen2.5-Math: q/k/v bias, EOS <|endoftext|>
    ("qwen3", 258, False, True, 32),     # Qwen3-Instruct: QK-norm, head_dim != hidden / heads, EOS <|im_end|>
])
def test_tiny_model_matches_transformers(tiny_dirs, like, eos, qkv_bias, qk_norm, head_dim):
    folder = tiny_dirs[like]
    tok = load_tokenizer(folder)
    assert tok.eos_token_id == eos
    text = prompt_text({"prompt": [{"role": "user", "content": "Is 7 prime? é"}]}, tok)
    assert text == "<|im_start|>user\nIs 7 prime? é<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    # token id = byte value; <|im_start|> = 257, <|im_end|> = 258
    assert ids == [257, *b"user\n", *"Is 7 prime? é".encode(), 258, *b"\n", 257, *b"assistant\n"]
    assert tok.decode(ids) == text

    ours = load_model(folder)
    assert ours.cfg.tie_word_embeddings and ours.cfg.head_dim == head_dim and ours.cfg.eos_token_id == eos
    attn = ours.model.layers[0].self_attn
    assert (attn.qkv_proj.bias is not None) == qkv_bias and hasattr(attn, "q_norm") == qk_norm
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = torch.tensor(ids)
    with torch.no_grad():
        h = ours(x, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
        torch.testing.assert_close(ours.lm_head(h), ref(x[None]).logits[0], atol=1e-4, rtol=1e-4)


def test_genrm_judge_runs_the_tiny_genrm(tiny_dirs):
    """The judge path the FAPO dry run cannot reach (a random policy is never correct)."""
    det = GenRMJudge(tiny_dirs["qwen3"], "cpu", max_new_tokens=8)
    row = prepare_dapo.to_verl(DAPO_ROWS[:1], prepare_dapo.PRESETS["dapo"])[0]
    p = det.prompt(row, "2^10 = 1024 = 7*146 + 2.\n\nSo \\boxed{2}.")
    assert p.startswith("<|im_start|>user\nThe following is a math problem with its ground truth answer, "
                        "along with an AI solution (split into steps):\n\n[Math Problem]\n\nWhat is the remainder")
    assert "\n\n[Ground Truth]\n\n2\n\n[AI Solution]\n\n2^10 = 1024 = 7*146 + 2.\n\nSo \\boxed{2}.\n\n" in p
    assert p.endswith("in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    v = det([row, row], ["\\boxed{2}", "so \\boxed{2}"])
    assert v.flawed == [False, False] and v.invalid == 2   # random critiques never parse: not flawed, counted
    assert v.truncated == 2 and v.critiques == 2           # 8 random tokens never reach the EOS



def test_greedy_genrm_judge_critiques_each_distinct_text_once(tiny_dirs):
    """Duplicated rollouts: one critique per distinct text, and each rollout gets its own text's verdict."""
    from types import SimpleNamespace

    class Echo:  # in place of the sampler: the critique is a function of the prompt's ids
        def __init__(self):
            self.prompts = []

        def generate(self, ids, params, generator):
            self.prompts += ids
            return [SimpleNamespace(text=f"\\boxed{{{sum(x) % 3 - 1}}}", finish_reason="length" if sum(x) % 2 else "eos")
                    for x in ids]

    det = GenRMJudge(tiny_dirs["qwen3"], "cpu", max_new_tokens=8)
    det.sampler = Echo()
    row = prepare_dapo.to_verl(DAPO_ROWS[:1], prepare_dapo.PRESETS["dapo"])[0]
    responses = ["so \\boxed{2}", "\\boxed{2}", "so \\boxed{2}", "it is \\boxed{2}", "\\boxed{2}", "A \\boxed{2}"]
    v = det([row] * len(responses), responses)
    ids = [det.tok.encode(det.prompt(row, r), add_special_tokens=False) for r in responses]
    assert len(det.sampler.prompts) == v.critiques == 4 and v.invalid == 0
    assert v.flawed == [sum(x) % 3 - 1 != -1 for x in ids] and len(set(v.flawed)) == 2
    assert v.truncated == sum(sum(x) % 2 for x in ids)                # counted per rollout, like the verdicts

# ---------------------------------------------------------------- the recipes' dry runs

def test_genrm_recipe_dry_run(tmp_path):
    r = run_recipe("genrm_qwen3_4b.sh", tmp_path)              # makes its own tiny Qwen3 (the CLI path)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "config.json").read_text())
    paper = dict(reward="step", temperature=1.2, top_p=1.0, lr=1e-6, warmup=10, weight_decay=0.1, grad_clip=1.0,
                 clip_low=0.2, clip_high=0.28, dual_clip=10.0, loss_agg="token-mean", kl_coef=0.0,
                 mini_batches=1, grad_checkpointing=True)
    assert {k: cfg[k] for k in paper} == paper
    assert (cfg["group_size"], cfg["prompts_per_step"], cfg["max_new_tokens"], cfg["overlong_buffer"]) == (2, 2, 16, 8)
    assert cfg["fsdp"] is True and cfg["rollout_max_rows"] == 32                 # the 4B GenRM under FSDP2
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert all(0.0 <= m[k] <= 1.0 for k in ("valid", "decision_acc"))
        assert m["exact_step_acc"] is None or 0.0 <= m["exact_step_acc"] <= 1.0   # None: no flawed row sampled
        assert m["response_len_max"] <= 16
        assert -2.0 - 1e-9 <= m["reward"] <= 1.0           # step reward in [-1, 1] plus overlong in [-1, 0]
        assert m["logp_gap"] < 1e-4                        # sampler and trainer agree at temperature 1.2
    assert lines[1]["lr"] == pytest.approx(2e-7)           # RL step 2 of 10 warm-up steps: 1e-6 * 2 / 10
    assert load_model(tmp_path / "ckpt" / "step_00000002" / "model").cfg.model_type == "qwen3"


@pytest.mark.parametrize("script, arm, lam, judge", [("policy_qwen25_math_1p5b.sh", "fapo", 1.0, "genrm"),
                                                     ("policy_qwen25_math_1p5b.sh", "grpo", 0.0, "none"),
                                                     ("policy_qwen25_math_7b.sh", "fapo", 1.0, "genrm")])
def test_policy_recipe_dry_run(tmp_path, tiny_dirs, script, arm, lam, judge):
    is_7b = "7b" in script
    r = run_recipe(script, tmp_path, ARM=arm, tiny={"tiny_genrm": tiny_dirs["qwen3"],
                                                    **({} if is_7b else {"tiny_policy": tiny_dirs["qwen2"]})})
    assert r.returncode == 0, r.stderr[-3000:]
    train = load_rows(tmp_path / "dapo_train.jsonl")
    assert [row["prompt"][0]["content"] for row in train] == [
        json.loads(line)["prompt"].strip() + SUFFIX_TEXT for line in (FIXTURES / "dapo-processed-sample.jsonl").open()]
    cfg = json.loads((tmp_path / "config.json").read_text())
    paper = dict(lam=lam, judge=judge, group_size=8, temperature=1.0, top_p=1.0, lr=1e-6, warmup=10,
                 weight_decay=0.1, grad_clip=1.0, clip_low=0.2, clip_high=0.28, dual_clip=10.0,
                 loss_agg="token-mean", kl_coef=0.0, grad_checkpointing=True, genrm_temperature=0.0)
    assert {k: cfg[k] for k in paper} == paper
    # mini-batches of 32 prompts, the paper's: 128 / 4 (1.5B, DDP) and 64 / 2 (7B, FSDP2)
    assert (cfg["mini_batches"], cfg["fsdp"]) == ((2, True) if is_7b else (4, False))
    assert (cfg["rollout_max_rows"], cfg["genrm_max_rows"], cfg["genrm_cache_gb"]) == (128, 24, 42 if is_7b else 39)
    policy = load_model(tmp_path / "ckpt" / "step_00000002" / "model").cfg
    assert (policy.model_type, policy.tie_word_embeddings) == ("qwen2", not is_7b)   # 7B: its own lm_head
    # the GRPO arm keeps the GenRM as a measuring instrument (judge_fp_ratio), as the paper tracks it
    assert cfg["genrm"] == str(tmp_path / "tiny_genrm") and cfg["genrm_max_new_tokens"] == 8
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert 0.0 <= m["accuracy"] <= 1.0 and "judge_fp_ratio" in m
        assert m["logp_gap"] < 1e-4 and m["response_len_max"] <= 16
    # warm-up counts RL steps, whatever --mini-batches (verl's): step 2 of 10 ran at 1e-6 * 2 / 10
    assert lines[1]["lr"] == pytest.approx(2e-7)


def test_policy_recipe_errors(tmp_path, tiny_dirs):
    r = run_recipe("policy_qwen25_math_1p5b.sh", tmp_path, ARM="ppo",
                   tiny={"tiny_policy": tiny_dirs["qwen2"], "tiny_genrm": tiny_dirs["qwen3"]})
    assert r.returncode == 1 and "ARM must be grpo or fapo, got 'ppo'" in r.stderr
    r = run_recipe("policy_qwen25_math_1p5b.sh", tmp_path, DRY_RUN="0", MODEL=str(tmp_path / "nope"))
    assert r.returncode == 1
    assert "huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir " + str(tmp_path / "nope") in r.stderr


def test_eval_recipe_dry_run(tmp_path, tiny_dirs):
    r = run_recipe("eval.sh", tmp_path, tiny={"tiny_policy": tiny_dirs["qwen2"], "tiny_genrm": tiny_dirs["qwen3"]})
    assert r.returncode == 0, r.stderr[-3000:]
    for bench, n in (("aime24", 32), ("aime25", 32), ("math500", 4)):
        summary = json.loads((tmp_path / f"{bench}.summary.json").read_text())
        assert (summary["prompts"], summary["n"]) == (2, n)
        assert 0.0 <= summary["accuracy"] <= 1.0 and summary["pass@1"] == pytest.approx(summary["accuracy"])
        out = load_rows(tmp_path / f"{bench}.jsonl")
        assert len(out) == 2 * n and all(isinstance(o["correct"], bool) and len(o["response_ids"]) <= 16 for o in out)
        assert out[0]["prompt"][0]["content"].endswith(SUFFIX_TEXT)


def test_genrm_judge_waves_fit_the_cache_budget(tiny_dirs):
    """--genrm-cache-gb: a wave holds as many critiques as fit that many bytes, each a dense cache
    slot of the longest critic prompt + the critique cap positions, plus its prompt's share of the
    packed prefill (every layer's K/V and one layer's activations per prompt token)."""
    det = GenRMJudge(tiny_dirs["qwen3"], "cpu", max_new_tokens=8)
    row = prepare_dapo.to_verl(DAPO_ROWS[:1], prepare_dapo.PRESETS["dapo"])[0]
    responses = [f"so \\boxed{{{i}}}" + " step" * i for i in range(6)]
    longest = max(len(det.tok.encode(det.prompt(row, r), add_special_tokens=False)) for r in responses)
    cfg = det.sampler.model.cfg
    position_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4   # k and v, fp32
    prefill_bytes = position_bytes + 4 * (2 * cfg.hidden_size + 4 * cfg.intermediate_size)
    slot = (longest + 8) * position_bytes + longest * prefill_bytes
    unbounded = det([row] * 6, responses)              # the automatic budget: half the free memory, room for all
    assert det.sampler.cache_bytes == 6 * (longest + 8) * position_bytes      # one wave of all 6
    det.cache_gb = (2 * slot + slot // 2) / 2**30                              # room for 2 slots, not 3
    bounded = det([row] * 6, responses)
    assert det.sampler.max_rows == 2 and det.sampler.cache_bytes == 2 * (longest + 8) * position_bytes
    assert bounded.critiques == unbounded.critiques == 6
    assert bounded.flawed == unbounded.flawed and bounded.truncated == unbounded.truncated == 6   # the cap is unchanged


def test_genrm_judge_cap_is_what_the_window_or_budget_holds(tiny_dirs):
    """The authors' 16384-token cap, unless the GenRM's context window or the budget cannot hold
    one slot that long: then the cap is what fits, with one warning, and the critiques cut there
    are counted."""
    from fapo_mini.judge import wave_plan
    # hand computation: 1000-token prompts, 100 bytes a cached position, 300 a prefilled token
    slot = 17384 * 100 + 1000 * 300                                                       # 2,038,400 bytes
    assert wave_plan(1000, 16384, 262144, 100, 300, 10 * slot, 256) == (16384, 10)
    assert wave_plan(1000, 16384, 4096, 100, 300, 10 * slot, 256) == (3096, 28)   # window: 4096 - 1000; 20384000 // 709600
    assert wave_plan(1000, 16384, 262144, 100, 300, 1500 * 100 + 1000 * 300, 256) == (500, 1)   # budget: 1500 - 1000
    assert wave_plan(1000, 16384, 262144, 100, 300, 3000 * 100, 256) == (1, 1)     # not even the prefill: 1 token
    assert wave_plan(1000, 16384, 262144, 100, 300, 1e15, 8) == (16384, 8)         # rows cap
    det = GenRMJudge(tiny_dirs["qwen3"], "cpu", max_new_tokens=16384)
    row = prepare_dapo.to_verl(DAPO_ROWS[:1], prepare_dapo.PRESETS["dapo"])[0]
    responses = ["\\boxed{2}", "so \\boxed{2}"]
    longest = max(len(det.tok.encode(det.prompt(row, r), add_special_tokens=False)) for r in responses)
    det.cache_gb = ((longest + 6) * det.position_bytes + longest * det.prefill_bytes) / 2**30   # one slot, cap 6
    with pytest.warns(UserWarning, match=f"critiques capped at 6 new tokens, not 16384: a {longest}-token critic prompt"):
        v = det([row, row], responses)
    assert det.sampler.max_rows == 1 and det.sampler.cache_bytes == (longest + 6) * det.position_bytes
    assert v.truncated == v.invalid == 2 and v.flawed == [False, False]   # 6 random tokens: cut, unparsable, not flawed


def test_free_bytes_on_cpu_is_the_kernels_available_memory(monkeypatch):
    """MemAvailable from /proc/meminfo, and no more than a cgroup v2 limit leaves (a container)."""
    import builtins
    from fapo_mini import judge
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert abs(judge.free_bytes("cpu") - available) < 0.05 * available      # read moments apart

    def container(limit):                      # /sys/fs/cgroup as a container with that memory.max sees it
        files = {"/sys/fs/cgroup/memory.max": limit, "/sys/fs/cgroup/memory.current": "3000000000\n"}
        return lambda path, *a, **k: io.StringIO(files[path]) if path in files else builtins.open(path, *a, **k)
    monkeypatch.setattr(judge, "open", container("3500000000\n"), raising=False)
    assert judge.free_bytes("cpu") == 500_000_000                            # 3.5 GB allowed, 3 GB used
    monkeypatch.setattr(judge, "open", container("max\n"), raising=False)
    assert abs(judge.free_bytes("cpu") - available) < 0.05 * available      # no limit: MemAvailable
