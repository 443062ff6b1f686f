"""Tokens/s of fapo_mini's Sampler against transformers' generate (or vLLM) on one workload.

usage: python bench/bench_sampler.py [--prompts 64] [--n 4] [--new-tokens 128] [--threads 2]
       /tmp/vllm-venv/bin/python bench/bench_sampler.py --vllm      (set-up in bench/README.md)

A random Qwen3 (hidden 256, 4 layers, head_dim 64, vocab 1000) is written to a temp folder;
prompts of 10-60 tokens, n samples each, temperature 1, no top-k / top-p, one process.
Every row makes exactly --new-tokens tokens: the tokenizer's EOS id is 1000, outside the
model's vocabulary, so it is never sampled (transformers / vLLM: min_new_tokens / ignore_eos).
"""
import argparse, os, random, sys, tempfile, time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fapo_mini.model import load_model
from fapo_mini.sampler import Sampler, SamplingParams

parser = argparse.ArgumentParser()
parser.add_argument("--prompts", type=int, default=64, help="distinct prompts")
parser.add_argument("--n", type=int, default=4, help="samples per prompt")
parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sample")
parser.add_argument("--threads", type=int, default=2, help="torch (and vLLM OpenMP) threads")
parser.add_argument("--vllm", action="store_true", help="compare with vLLM instead of transformers")
args = parser.parse_args()
torch.set_num_threads(args.threads)
V = 1000

folder = tempfile.mkdtemp()
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=V, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, initializer_range=0.1, eos_token_id=None)
Qwen3ForCausalLM(cfg).save_pretrained(folder)
tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
tok.add_special_tokens(["<|endoftext|>"])                                          # id 1000 = V
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="t0").save_pretrained(folder)

rng = random.Random(0)
prompts = [[rng.randrange(V) for _ in range(rng.randint(10, 60))] for _ in range(args.prompts)]
n_tokens = args.prompts * args.n * args.new_tokens


def timed(generate):
    """generate(prompts, new_tokens) -> number of tokens it made; checked, so the work is equal."""
    generate(prompts[:2], 4)                                                          # warm-up
    t = time.perf_counter()
    made = generate(prompts, args.new_tokens)
    assert made == n_tokens, f"made {made} tokens, expected {n_tokens}"
    return time.perf_counter() - t


def ours():
    sampler = Sampler(load_model(folder), PreTrainedTokenizerFast.from_pretrained(folder), max_rows=len(prompts) * args.n)
    return timed(lambda ps, new: sum(len(s.token_ids) for s in sampler.generate(
        ps, SamplingParams(n=args.n, temperature=1.0, max_new_tokens=new))))


def transformers_generate():
    model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def generate(ps, new):
        L = max(map(len, ps))
        ids = torch.tensor([[0] * (L - len(p)) + p for p in ps])                      # LEFT padding
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in ps])
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             num_return_sequences=args.n, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        return out[:, L:].numel()
    return timed(generate)


def vllm_generate():
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"                              # one process, like the others
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")                             # GiB of KV cache
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from vllm import LLM, SamplingParams as VParams
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True, max_model_len=256, seed=0)
    params = lambda new: VParams(n=args.n, temperature=1.0, max_tokens=new, ignore_eos=True, detokenize=False)
    return timed(lambda ps, new: sum(len(c.token_ids) for o in llm.generate(
        [{"prompt_token_ids": p} for p in ps], params(new), use_tqdm=False) for c in o.outputs))


t_ours = ours()
peer, t_peer = ("vllm", vllm_generate()) if args.vllm else ("transformers", transformers_generate())
print(f"workload: {args.prompts} prompts x {args.n} samples x {args.new_tokens} new tokens = {n_tokens} tokens, "
      f"{args.threads} threads")
print(f"fapo_mini Sampler: {n_tokens / t_ours:8.0f} tok/s ({t_ours:.1f} s)")
print(f"{peer:>17}: {n_tokens / t_peer:8.0f} tok/s ({t_peer:.1f} s)")
print(f"ours / {peer}: {t_peer / t_ours:.2f}x")
