"""CUDA-only checks: the GPU kernels against their SDPA twins, CUDA graphs against eager
decode, and the bf16 rollout's log-prob gap. Skipped without CUDA; `bench/gpu_check.sh`
runs this file on a GPU machine."""
import random

import pytest
import torch

from fapo_mini import attention
from fapo_mini.model import load_model
from fapo_mini.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_varlen = pytest.mark.skipif(not attention.HAS_VARLEN, reason=f"torch varlen_attn unusable: {attention.VARLEN_MISSING}")
PROMPTS = [[10, 200, 31], [7, 7, 120, 99, 1, 65, 66, 250], [42], [5, 6, 7, 8, 9]]


def rand(g, *shape):
    return torch.randn(*shape, device="cuda", generator=g, dtype=torch.bfloat16)


def test_backend_on_cuda_is_a_kernel():
    # a kernel whenever one takes every keyword we pass; else SDPA, and find_varlen says what is missing
    kernel = attention.HAS_FLASH or attention.HAS_VARLEN
    assert attention.backend(torch.zeros(1, device="cuda", dtype=torch.bfloat16)) in (
        ("flash", "varlen") if kernel else ("sdpa",)), attention.VARLEN_MISSING
    assert attention.backend(torch.zeros(1, device="cuda")) == "sdpa"                # fp32: no kernel


@needs_varlen
def test_varlen_attn_equals_sdpa():
    g = torch.Generator(device="cuda").manual_seed(0)
    lens = [37, 1, 200, 64]
    q, k, v = rand(g, sum(lens), 8, 64), rand(g, sum(lens), 2, 64), rand(g, sum(lens), 2, 64)
    cu = torch.nn.functional.pad(torch.tensor(lens, device="cuda").cumsum(0), (1, 0)).to(torch.int32)
    torch.testing.assert_close(attention.varlen_attention_torch(q, k, v, cu, max(lens)).float(),
                               attention.varlen_attention_sdpa(q, k, v, cu, max(lens)).float(), atol=2e-2, rtol=2e-2)


@needs_varlen
@pytest.mark.parametrize("S", [1, 4])
def test_varlen_attn_kvcache_equals_sdpa(S):
    g = torch.Generator(device="cuda").manual_seed(S)
    B, L = 4, 256
    seqlens = torch.tensor([0, 5, 100, L - S], dtype=torch.int32, device="cuda")
    q, k, v = rand(g, B, S, 8, 64), rand(g, B, S, 2, 64), rand(g, B, S, 2, 64)
    kc, vc = rand(g, B, L, 2, 64), rand(g, B, L, 2, 64)
    kc2, vc2 = kc.clone(), vc.clone()
    out = attention.kvcache_attention_torch(q, kc, vc, k, v, seqlens)
    ref = attention.kvcache_attention_sdpa(q, kc2, vc2, k, v, seqlens)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


def test_cuda_graphs_equal_eager(qwen3_dir, byte_tokenizer):
    """Greedy tokens and log-probs of the graphed decode equal eager decode's (same kernels,
    same shapes: graph replay changes nothing numerically), with refill and compaction."""
    model = load_model(qwen3_dir, "cuda", torch.bfloat16).eval()
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=40)
    eager = Sampler(model, byte_tokenizer, max_rows=8, check_every=4).generate(PROMPTS, params)
    graphed = Sampler(model, byte_tokenizer, max_rows=8, check_every=4, cuda_graphs=True).generate(PROMPTS, params)
    assert [s.token_ids for s in graphed] == [s.token_ids for s in eager]
    for a, b in zip(graphed, eager):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-3, rtol=0)


def test_genrm_judge_cuda_graphs_equal_eager(tmp_path, qwen3_dir):
    """The in-process judge with --cuda-graphs gives the verdicts and cut counts of eager decode."""
    from fapo_mini import toyworld
    from fapo_mini.judge import GenRMJudge
    problems = toyworld.generate(6, 0, "test")
    rows = toyworld.policy_rows(problems, "test")
    responses = [toyworld.teacher_solution(p.prompt, style, random.Random(i))
                 for i, (p, style) in enumerate(zip(problems, ["clean", "sloppy", "jump"] * 2))]
    eager = GenRMJudge(qwen3_dir, "cuda", max_new_tokens=24)(rows, responses)
    graphed = GenRMJudge(qwen3_dir, "cuda", max_new_tokens=24, cuda_graphs=True)(rows, responses)
    assert (graphed.flawed, graphed.invalid, graphed.truncated) == (eager.flawed, eager.invalid, eager.truncated)


def test_bf16_rollout_logprob_gap(qwen3_dir, byte_tokenizer):
    """The RL loop samples with bf16 weights and trains with fp32 master weights: the gap
    between the sampler's log-probs and fp32 log-probs of the same tokens stays small."""
    m16 = load_model(qwen3_dir, "cuda", torch.bfloat16).eval()
    m32 = load_model(qwen3_dir, "cuda", torch.float32).eval()
    samples = Sampler(m16, byte_tokenizer).generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=32))
    seqs = [PROMPTS[s.prompt_index] + s.token_ids for s in samples]
    lens = torch.tensor([len(x) for x in seqs], device="cuda")
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    ids = torch.tensor([t for x in seqs for t in x], device="cuda")
    pos = torch.cat([torch.arange(len(x), device="cuda") for x in seqs])
    gaps = []
    with torch.no_grad():
        h = m32(ids, pos, cu, int(lens.max()))
        for s, start in zip(samples, cu[:-1].tolist()):
            P = len(PROMPTS[s.prompt_index])
            at = torch.arange(start + P - 1, start + P - 1 + len(s.token_ids), device="cuda")
            ref = m32.token_logprobs(h[at], torch.tensor(s.token_ids, device="cuda"))
            gaps.append((torch.tensor(s.logprobs, device="cuda") - ref).abs())
    gap = torch.cat(gaps)
    print(f"bf16 rollout vs fp32: mean |dlogp| {gap.mean():.4f}, max {gap.max():.4f}")
    assert gap.mean() < 0.05


def test_fp32_weights_sample_under_one_autocast(qwen3_dir, byte_tokenizer):
    """fp32 weights on CUDA run in bf16 autocast for the whole call, with a bf16 cache."""
    model = load_model(qwen3_dir, "cuda", torch.float32).eval()
    sampler = Sampler(model, byte_tokenizer, max_rows=4)
    out = sampler.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=8))
    c = model.cfg
    assert sampler.cache_bytes == 2 * c.num_hidden_layers * 4 * (8 + 8) * c.num_key_value_heads * c.head_dim * 2
    assert all(len(s.token_ids) == 8 or s.finish_reason == "eos" for s in out)
