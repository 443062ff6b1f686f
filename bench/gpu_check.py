"""One GPU check, for the day a GPU is lent: CUDA tests, the sampler at 1.5B size, 2 RL steps at 0.5B,
the GenRM judge's decode step at 4B size.

usage: python bench/gpu_check.py [--out gpu_check.json] [--budget-s 450] [--parts judge]
       (bench/gpu_check.sh runs this; --parts picks some of: tests,calibrate,sampler,train,judge)

Needs torch with CUDA and transformers; installs nothing and uses no network. Every part runs in
its own subprocess with a timeout (a hang, an OOM or a crash is recorded, the next part still
runs), and the driver stops starting parts when --budget-s is spent. Parts, in order:

  tests      python -m pytest -q tests/test_cuda.py (a clear "missing" when the file is absent)
  calibrate  the EOS scale for RL-shaped lengths (bench/workloads.py: calibrate_eos) on the
             sampler model, 64 rows, a 128-step probe, target mean --target-mean of at most
             --new-tokens
  sampler_R  for R in 64, 256 rows: the attention backend the model's dtype gets (attention.backend
             on its weights: "flash", "varlen" or "sdpa", with the fallback warning if any); then,
             eager and, when Sampler takes `cuda_graphs`, with cuda_graphs=True: ms per decode
             step (a never-EOS run of 129 tokens minus one of 1 token, over 128 steps, all rows
             live), then an RL-shaped run of 2 x R samples (prompts of --prompt-len tokens, 8
             samples each, at most --new-tokens): tok/s with EOS counted, length statistics,
             peak GPU memory (torch.cuda.max_memory_allocated, weights included),
             sampler.cache_bytes when the sampler sets it
  train      toy-world data (python -m fapo_mini.toyworld world), a random Qwen2-shaped model on
             its tokenizer, 2 steps of train_policy.py --judge oracle; its metrics.jsonl lines
  judge      only when at least --judge-min-s of the budget is left (else "skipped"): the in-process
             GenRM judge's decode step. Rows: the slots of one wave that fapo_mini.judge.wave_plan
             gives the 1.5B policy recipe's judge (its GENRM_CACHE_GB, GENRM_ROWS, GENRM_MAX_NEW cap
             16384; critic prompts of 628 + MAX_NEW 3072 = 3700 tokens: bench/estimate.py's numbers),
             then 16 (--judge-rows overrides). Per rows, one distinct random prompt of --judge-prompt-len
             tokens a row, greedy like the judge, every cache slot as long as the judge's (prompt +
             cap positions, so a CUDA graph's attention spans what the judge's does); eager and, when
             Sampler takes `cuda_graphs`, with cuda_graphs=True: ms per decode step measured as in
             sampler_R (129 tokens minus 1 token, over 128 steps, never EOS), the attention backend,
             peak GPU memory (weights included), sampler.cache_bytes. The JSON is rewritten after each
             measurement, so a timeout keeps the ones done

Sizes on CUDA: the sampler model is Qwen2.5-1.5B-shaped (hidden 1536, 28 layers, 12 / 2 heads,
head_dim 128, MLP 8960, vocab 151936) in bf16 but with an untied lm_head (the EOS row is scaled
alone), random N(0, 0.02) weights, seed 0; the train model is Qwen2.5-0.5B-shaped (hidden 896,
24 layers, 14 / 2 heads, MLP 4864, tied) on the toy vocabulary; the judge model is Qwen3-4B-
Instruct-2507-shaped (hidden 2560, 36 layers, 32 / 8 heads, head_dim 128, MLP 9728, vocab 151936,
tied, qwen3 QK-norm) in bf16, random N(0, 0.02) weights, seed 0: 8.0 GB of weights, and at 16
rows a 47 GB cache (16 x 20084 positions x 144 KiB). Without CUDA every part runs at tiny sizes on
CPU so the script itself is checked; the JSON says "tiny": true. The JSON's
"attention" says which kernels import (flash-attn; torch's varlen_attn, or why it is not used).
It uses no torch API newer than 2.11, the GPU machine's torch (run here on 2.13 only).
Exit status: 0 when every part passed, 1 otherwise (on CPU a missing tests/test_cuda.py is not a failure).
"""
import argparse, inspect, json, os, signal, subprocess, sys, tempfile, time, traceback, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch

CUDA = torch.cuda.is_available()
SAMPLER_SHAPE = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, head_dim=128)
TRAIN_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                   num_key_value_heads=2, head_dim=64)
TINY_SAMPLER = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=64)
JUDGE_SHAPE = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128)
TINY_JUDGE = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32)
SAMPLER_NAME, JUDGE_NAME = "Qwen2.5-Math-1.5B", "Qwen3-4B-Instruct-2507"   # bench/estimate.py's model names
TINY_TRAIN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32)
N_PER_PROMPT = 8


def device_and_dtype():
    return (torch.device("cuda"), torch.bfloat16) if CUDA else (torch.device("cpu"), torch.float32)


def sync():
    if CUDA:
        torch.cuda.synchronize()


def sampler_model(shape, seed=0, model_type="qwen2", tied=False):
    """The random sampler model (by default untied lm_head, qwen2 layout), on the device in the compute dtype."""
    from fapo_mini.model import ModelConfig, Qwen
    device, dtype = device_and_dtype()
    cfg = ModelConfig(**shape, model_type=model_type, rope_theta=1e6, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen(cfg)
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
    return model.to(dtype).eval()


def prompts_for(n_prompts, length, vocab, eos, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (n_prompts, length), generator=g)       # never the EOS id (vocab - 1)
    assert eos == vocab - 1
    return ids.tolist()


def attention_used(model):
    """The attention backend the model's queries get (they take its weights' dtype on its device),
    and the warning attention.backend gives when a GPU has to fall back to SDPA."""
    from fapo_mini import attention
    weight = next(model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = attention.backend(weight)
    return {"backend": chosen, "dtype": str(weight.dtype), "device": str(weight.device),
            "warnings": [str(w.message) for w in caught]}


def part_calibrate(a):
    from fapo_mini.sampler import Sampler
    from workloads import calibrate_eos, word_tokenizer
    shape = TINY_SAMPLER if a.tiny else SAMPLER_SHAPE
    V = shape["vocab_size"]
    model = sampler_model(shape)
    sampler = Sampler(model, word_tokenizer(V, V - 1), max_rows=64 if not a.tiny else 16)
    prompts = prompts_for(8 if not a.tiny else 4, a.prompt_len, V, V - 1, seed=1)
    t = time.perf_counter()
    cal = calibrate_eos(model, sampler, V - 1, prompts, a.target_mean, a.new_tokens, n=N_PER_PROMPT if not a.tiny else 4,
                        probe_steps=min(128, a.new_tokens))
    cal["seconds"] = time.perf_counter() - t
    return cal


def time_decode(sampler, prompts, **params):
    """Warm-up, prefill and ms per decode step of one sampler, every row live for 128 steps (EOS is
    never sampled): the time of 129 new tokens minus that of 1, over 128."""
    from fapo_mini.sampler import SamplingParams
    t = time.perf_counter()
    sampler.generate(prompts, SamplingParams(max_new_tokens=8, **params))     # warm-up (graph capture, if any)
    sync()
    out = {"warmup_s": time.perf_counter() - t}
    times = {}
    for new in (1, 129):
        sync()
        t = time.perf_counter()
        sampler.generate(prompts, SamplingParams(max_new_tokens=new, **params))
        sync()
        times[new] = time.perf_counter() - t
    out.update(prefill_s=times[1], ms_per_decode_step=1000 * (times[129] - times[1]) / 128)
    return out


def part_sampler(a):
    from fapo_mini.sampler import Sampler, SamplingParams
    from workloads import length_stats, word_tokenizer
    shape = TINY_SAMPLER if a.tiny else SAMPLER_SHAPE
    V = shape["vocab_size"]
    model = sampler_model(shape)
    model.lm_head.weight.data[V - 1] *= a.eos_scale
    tok_rl, tok_fixed = word_tokenizer(V, V - 1), word_tokenizer(V, V)        # EOS id V: outside, never sampled
    has_graphs = "cuda_graphs" in inspect.signature(Sampler).parameters
    modes = ["eager"] + (["cuda_graphs"] if has_graphs and CUDA else [])
    n = N_PER_PROMPT if not a.tiny else 4
    rows = a.rows
    out = {"rows": rows, "shape": "tiny" if a.tiny else SAMPLER_NAME, "lm_head": "untied",
           "modes": modes, "cuda_graphs_argument": has_graphs, "prompt_len": a.prompt_len,
           "new_tokens": a.new_tokens, "samples_per_prompt": n, "attention": attention_used(model)}
    for mode in modes:
        kw = {"cuda_graphs": True} if mode == "cuda_graphs" else {}
        r = out[mode] = {}
        try:
            # ms per decode step: all rows live for 128 steps (never EOS)
            fixed = Sampler(model, tok_fixed, max_rows=rows, **kw)
            ps = prompts_for(rows // n, a.prompt_len, V, V - 1, seed=2)
            r.update(time_decode(fixed, ps, n=n))
            del fixed
            # RL-shaped: 2 x rows samples, lengths from the calibrated EOS
            sampler = Sampler(model, tok_rl, max_rows=rows, **kw)
            ps = prompts_for(2 * rows // n, a.prompt_len, V, V - 1, seed=3)
            t = time.perf_counter()
            sampler.generate(ps[:rows // n], SamplingParams(n=n, max_new_tokens=8))   # warm-up, every slot used
            sync()
            r["rl_warmup_s"] = time.perf_counter() - t
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            samples = sampler.generate(ps, SamplingParams(n=n, temperature=1.0, max_new_tokens=a.new_tokens))
            sync()
            seconds = time.perf_counter() - t
            lengths = [len(s.token_ids) for s in samples]
            r.update(rl_seconds=seconds, rl_samples=len(samples), rl_tokens=sum(lengths),
                     rl_tok_per_s=sum(lengths) / seconds, lengths=length_stats(lengths),
                     truncated=sum(s.finish_reason == "length" for s in samples),
                     cache_bytes=getattr(sampler, "cache_bytes", None))
            if CUDA:
                r["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
                r["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
            r["status"] = "pass"
            del sampler
        except Exception as e:                                                 # the other mode still runs
            r.update(status="fail", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
    out["status"] = "pass" if all(out[m]["status"] == "pass" for m in modes) else "fail"
    return out


def part_train(a):
    from fapo_mini.model import ModelConfig, Qwen, load_tokenizer, save_model
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    data = work / "data"
    cmd = [sys.executable, "-m", "fapo_mini.toyworld", "world", "--out", str(data), "--n-train", "64",
           "--n-sft", "1", "--n-test", "1", "--n-hard", "1", "--n-shift", "1"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    tok = load_tokenizer(data / "tokenizer")
    shape = TINY_TRAIN if a.tiny else TRAIN_SHAPE
    cfg = ModelConfig(vocab_size=len(tok), **shape, model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen(cfg)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    save_model(model, work / "model", tok)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    run = work / "run"
    cmd = [sys.executable, "train_policy.py", "--model", str(work / "model"), "--data", str(data / "train.jsonl"),
           "--out", str(run), "--steps", "2", "--prompts-per-step", "8", "--group-size", "8",
           "--max-new-tokens", str(64 if not a.tiny else 16), "--judge", "oracle", "--lam", "1", "--fresh"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    ok = p.returncode == 0 and len(metrics) == 2
    return {"status": "pass" if ok else "fail", "params": n_params, "command": " ".join(cmd), "rc": p.returncode,
            "seconds": seconds, "metrics": metrics, "output_tail": (p.stdout + p.stderr)[-3000:]}


def judge_defaults(a):
    """(prompt tokens, cap, rows list, the plan) of the judge part: bench/estimate.py's 1.5B policy
    recipe (POLICY_1P5B, the longest critic prompt critic_overhead_max + MAX_NEW) through the
    judge's own wave_plan; tiny sizes without CUDA."""
    if a.tiny:
        return a.judge_prompt_len or 32, a.judge_cap or 256, a.judge_rows or [2, 4], None
    from estimate import POLICY_1P5B, QWEN3_4B_INSTRUCT_2507, Assumptions, judge_plan
    prompt = a.judge_prompt_len or Assumptions().critic_overhead_max + POLICY_1P5B["MAX_NEW"]     # 628 + 3072
    cap = a.judge_cap or POLICY_1P5B["GENRM_MAX_NEW"]
    gb, max_rows = POLICY_1P5B["GENRM_CACHE_GB"], POLICY_1P5B["GENRM_ROWS"]
    plan_cap, slots = judge_plan(QWEN3_4B_INSTRUCT_2507, prompt, cap, max_rows, gb * 2**30)
    plan = {"recipe": "policy_qwen25_math_1p5b.sh", "genrm_cache_gb": gb, "genrm_rows": max_rows,
            "cap": plan_cap, "slots": slots}
    return prompt, cap, a.judge_rows or sorted({slots, 16}), plan


def part_judge(a):
    """The GenRM judge's decode step: a random Qwen3-4B-shaped model behind our Sampler, one distinct
    prompt a row (n=1, greedy), every slot prompt + cap positions long like the judge's waves."""
    import gc
    import fapo_mini.sampler as sampler_module
    from fapo_mini.sampler import Sampler
    from fapo_mini.slots import Slots
    from workloads import word_tokenizer
    shape = TINY_JUDGE if a.tiny else JUDGE_SHAPE
    V = shape["vocab_size"]
    prompt_len, cap, rows_list, plan = judge_defaults(a)
    slot_len = prompt_len + max(cap, 129)                # at least what the 129-token run needs

    def judge_slots(cfg, B, L, dtype, device, R):       # the judge's slot length, whatever max_new_tokens is
        return Slots(cfg, B, max(L, slot_len), dtype, device, R)

    sampler_module.Slots = judge_slots                   # this subprocess only
    model = sampler_model(shape, model_type="qwen3", tied=True)
    if CUDA:
        torch.cuda.empty_cache()
    tok = word_tokenizer(V, V)                           # EOS id V: outside the vocabulary, never sampled
    has_graphs = "cuda_graphs" in inspect.signature(Sampler).parameters
    modes = ["eager"] + (["cuda_graphs"] if has_graphs and CUDA else [])
    out = {"status": "running", "shape": "tiny" if a.tiny else JUDGE_NAME, "lm_head": "tied", "rows": rows_list,
           "plan": plan, "prompt_len": prompt_len, "cap": cap, "slot_positions": slot_len, "temperature": 0.0,
           "modes": modes, "cuda_graphs_argument": has_graphs, "attention": attention_used(model),
           "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()), "by_rows": {}}

    def save():                                          # what is done so far survives a timeout
        Path(a.part_out).write_text(json.dumps(out, indent=2))

    save()
    for rows in rows_list:
        for mode in modes:
            kw = {"cuda_graphs": True} if mode == "cuda_graphs" else {}
            r = out["by_rows"].setdefault(str(rows), {})[mode] = {"status": "running"}
            fixed = None
            try:
                fixed = Sampler(model, tok, max_rows=rows, **kw)
                ps = prompts_for(rows, prompt_len, V, V - 1, seed=4)
                if CUDA:
                    torch.cuda.reset_peak_memory_stats()
                r.update(time_decode(fixed, ps, n=1, temperature=0.0),
                         cache_bytes=getattr(fixed, "cache_bytes", None), status="pass")
                if CUDA:
                    r["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            except Exception as e:                       # the next mode / rows still run
                r.update(status="fail", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            del fixed
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
            save()
    runs = [m for by in out["by_rows"].values() for m in by.values()]
    out["status"] = "pass" if all(m["status"] == "pass" for m in runs) else "fail"
    return out


PARTS = {"calibrate": part_calibrate, "sampler": part_sampler, "train": part_train, "judge": part_judge}
ALL_PARTS = ("tests", "calibrate", "sampler", "train", "judge")


def run_part(a):
    """Child process: run one part, write its JSON to --part-out (also on failure)."""
    t = time.perf_counter()
    try:
        res = PARTS[a.part](a)
        res.setdefault("status", "pass")
    except Exception as e:
        res = {"status": "fail", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    res["seconds_total"] = time.perf_counter() - t
    Path(a.part_out).write_text(json.dumps(res, indent=2))


def run_killable(cmd, timeout):
    """subprocess.run in its own session; on timeout the whole process group (the part and anything it
    started, e.g. train_policy.py) is killed, so nothing is left holding the GPU. None on timeout."""
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def child(a, part, timeout, extra=()):
    """Run `part` in a subprocess with a timeout; its JSON, or a record of how it failed."""
    out = Path(tempfile.mkstemp(suffix=f"_{part}.json")[1])
    cmd = [sys.executable, __file__, "--part", part, "--part-out", str(out), "--prompt-len", str(a.prompt_len),
           "--new-tokens", str(a.new_tokens), "--target-mean", str(a.target_mean)] + (["--tiny"] if a.tiny else []) + list(extra)
    t = time.perf_counter()
    p = run_killable(cmd, timeout)
    if p is None:                                        # a part that saves as it goes (judge) keeps what it did
        try:
            res = json.loads(out.read_text()) if out.stat().st_size else {}
        except (OSError, json.JSONDecodeError):
            res = {}
        return dict(res, status="timeout", timeout_s=timeout, wall_s=time.perf_counter() - t)
    try:
        res = json.loads(out.read_text()) if out.stat().st_size else {"status": "fail", "error": "the part wrote no result"}
    except (OSError, json.JSONDecodeError) as e:
        res = {"status": "fail", "error": f"unreadable part result {out}: {e}"}
    res.update(rc=p.returncode, wall_s=time.perf_counter() - t)
    if p.returncode != 0 or res.get("status") != "pass":
        res["output_tail"] = (p.stdout + p.stderr)[-3000:]
    return res


def run_tests(timeout):
    path = ROOT / "tests" / "test_cuda.py"
    if not path.is_file():
        return {"status": "missing", "error": f"{path.relative_to(ROOT)} not found: the CUDA tests are not in this checkout"}
    cmd = [sys.executable, "-m", "pytest", "-q", str(path.relative_to(ROOT))]
    p = run_killable(cmd, timeout)
    if p is None:
        return {"status": "timeout", "timeout_s": timeout}
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    return {"status": "pass" if p.returncode == 0 else "fail", "rc": p.returncode, "summary": lines[-1] if lines else "",
            "output_tail": (p.stdout + p.stderr)[-3000:]}


def driver(a):
    t0 = time.perf_counter()
    left = lambda: a.budget_s - (time.perf_counter() - t0)
    report = {"cuda": CUDA, "tiny": a.tiny, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if CUDA else "cpu (no CUDA: tiny sizes, CPU-safe parts only)",
              "settings": {"prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "target_mean": a.target_mean,
                           "rows": a.rows_list, "budget_s": a.budget_s, "parts": a.parts}, "parts": {}}
    from fapo_mini import attention              # the kernels this machine has; each sampler part records the one it ran
    report["attention"] = {"flash_attn": attention.HAS_FLASH, "torch_varlen_attn": attention.HAS_VARLEN,
                           "varlen_missing": attention.VARLEN_MISSING}
    parts = report["parts"]

    def record(name, res):
        parts[name] = res
        print(f"[{time.perf_counter() - t0:6.0f} s] {name}: {res.get('status')}"
              + (f" ({res.get('error') or res.get('summary', '')})" if res.get("error") or res.get("summary") else ""),
              flush=True)
        Path(a.out).write_text(json.dumps(report, indent=2))

    def budget(own):
        return max(1, min(own, int(left())))

    def guarded(fn, *args):
        if left() <= 10:
            return {"status": "skipped", "error": "no time left in --budget-s"}
        try:
            return fn(*args)
        except Exception as e:                                                 # the driver itself must not stop
            return {"status": "fail", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}

    if "tests" in a.parts:
        record("tests", guarded(lambda: run_tests(budget(a.tests_timeout))))
    cal = {}
    if "calibrate" in a.parts:
        cal = guarded(lambda: child(a, "calibrate", budget(90)))
        record("calibrate", cal)
    scale = cal.get("scale", 1.0)
    if "sampler" in a.parts:
        for rows in a.rows_list:
            res = guarded(lambda: child(a, "sampler", budget(a.sampler_timeout), ["--rows", str(rows), "--eos-scale", str(scale)]))
            if "scale" not in cal:
                res["note"] = "calibration failed or not run: EOS row unscaled (lengths are not RL-shaped)"
            record(f"sampler_{rows}", res)
    if "train" in a.parts:
        record("train", guarded(lambda: child(a, "train", budget(a.train_timeout))))
    if "judge" in a.parts:                               # last: the costliest part, only with time for it
        extra = [f"--judge-{k}={v}" for k, v in (("prompt-len", a.judge_prompt_len), ("cap", a.judge_cap),
                                                 ("rows", ",".join(map(str, a.judge_rows or [])))) if v]
        if left() < a.judge_min_s:
            record("judge", {"status": "skipped", "error": f"under --judge-min-s {a.judge_min_s:g} s left in --budget-s"})
        else:
            record("judge", guarded(lambda: child(a, "judge", budget(a.judge_timeout), extra)))
    report["total_s"] = time.perf_counter() - t0
    bad = [k for k, v in parts.items() if v.get("status") not in ("pass",) and not (k == "tests" and v.get("status") == "missing" and not CUDA)]
    report["all_pass"] = not bad
    report["not_passed"] = bad
    Path(a.out).write_text(json.dumps(report, indent=2))
    summarize(report)
    print(f"wrote {a.out}; {'all parts passed' if not bad else 'not passed: ' + ', '.join(bad)}")
    return 0 if not bad else 1


def summarize(report):
    j = report["parts"].get("judge") or {}
    for rows, by in (j.get("by_rows") or {}).items():
        for mode, r in by.items():
            if r.get("status") == "pass":
                mem = f", peak {r['peak_gpu_bytes'] / 2**30:.1f} GiB" if "peak_gpu_bytes" in r else ""
                print(f"  judge {j['shape']} {rows} rows x {j['slot_positions']} positions {mode} "
                      f"({j['attention']['backend']} attention): {r['ms_per_decode_step']:.2f} ms/decode step, "
                      f"cache {r['cache_bytes'] / 2**30:.1f} GiB{mem}")
    for name, p in report["parts"].items():
        if not name.startswith("sampler_"):
            continue
        for mode in p.get("modes", []):
            r = p.get(mode, {})
            if r.get("status") == "pass":
                s = r["lengths"]
                mem = f", peak {r['peak_gpu_bytes'] / 2**30:.1f} GiB" if "peak_gpu_bytes" in r else ""
                print(f"  {name} {mode} ({p['attention']['backend']} attention): {r['ms_per_decode_step']:.2f} ms/decode "
                      f"step, RL {r['rl_tok_per_s']:.0f} tok/s, mean length {s['mean']:.0f} (median {s['median']:.0f}, "
                      f"p90 {s['p90']:.0f}, max {s['max']}){mem}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=450, help="start no part after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rows-list", default=None, help="sampler rows, comma list (default 64,256; tiny 8,16)")
    ap.add_argument("--prompt-len", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--target-mean", type=float)
    ap.add_argument("--eos-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--tests-timeout", type=int, default=150)
    ap.add_argument("--sampler-timeout", type=int, default=150)
    ap.add_argument("--train-timeout", type=int, default=150)
    ap.add_argument("--parts", default=",".join(ALL_PARTS), help="comma list of the parts to run, in their fixed order")
    ap.add_argument("--judge-timeout", type=int, default=200)
    ap.add_argument("--judge-min-s", type=float, default=60, help="skip the judge part with less of the budget left")
    ap.add_argument("--judge-rows", default=None, help="judge rows, comma list (default: the 1.5B recipe's slots "
                                                       "per wave, 10, and 16; tiny 2,4)")
    ap.add_argument("--judge-prompt-len", type=int, help="judge prompt tokens (default 3700; tiny 32)")
    ap.add_argument("--judge-cap", type=int, help="the critique cap in each slot's length (default 16384; tiny 256)")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--part-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.tiny = a.tiny or not CUDA
    d = dict(prompt_len=16, new_tokens=64, target_mean=25.0) if a.tiny else dict(prompt_len=256, new_tokens=1024, target_mean=400.0)
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.rows_list = [int(x) for x in (a.rows_list or ("8,16" if a.tiny else "64,256")).split(",")]
    a.judge_rows = [int(x) for x in a.judge_rows.split(",")] if a.judge_rows else None
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = [x for x in a.parts if x not in ALL_PARTS]
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(ALL_PARTS)})")
    if a.part:
        run_part(a)
        return 0
    return driver(a)


if __name__ == "__main__":
    sys.exit(main())
