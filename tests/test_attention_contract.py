"""The GPU attention calls' arguments, checked on CPU.

A CPU test cannot run flash-attn or torch's varlen_attn, but it can run every line that
calls them. Here each kernel is replaced by a stand-in that first asserts the kernel's
documented contract (dtypes, int32 offsets and lengths, shapes and layouts, contiguity,
the causal flag, lengths within the cache) and then computes the documented result with
an independent reference: a per-sequence loop over SDPA with an explicit mask. The real
call sites (the model's packed forward, the sampler's prefill and decode, the trainer's
log-probs) then run through `attention.backend` forced to "flash" or "varlen". The varlen
stand-in also records the keywords it is given: each must be one `find_varlen` checks the
installed torch for, and a torch whose varlen_attn lacks one must fall back to SDPA.

Sources of the contracts: flash-attn's `flash_attn_varlen_func` / `flash_attn_with_kvcache`
docstrings, and `torch.nn.attention.varlen.varlen_attn`'s (torch 2.13).
"""
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fapo_mini import attention
from fapo_mini.model import load_model
from fapo_mini.sampler import Sampler, SamplingParams

HALF = (torch.float16, torch.bfloat16)
CALLS = {}
KEYWORDS = set()                                                              # every keyword passed to varlen_attn


def attend(q, k, v, causal_end):
    """One sequence, reference: q (S, H, D), k, v (N, Hkv, D). causal_end: query s sees keys
    < N - S + 1 + s (bottom-right aligned); None: every key. Computed in fp32."""
    S, N = q.shape[0], k.shape[0]
    mask = None
    if causal_end:
        mask = torch.arange(N)[None, :] < (N - S + 1 + torch.arange(S))[:, None]   # (S, N)
    out = F.scaled_dot_product_attention(q.float().transpose(0, 1), k.float().transpose(0, 1),
                                         v.float().transpose(0, 1), attn_mask=mask,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(0, 1).to(q.dtype)


def check_offsets(cu, total, name):
    assert cu.dtype == torch.int32 and cu.dim() == 1, f"{name} must be a 1-D int32 tensor"
    assert cu[0] == 0 and cu[-1] == total and (cu[1:] >= cu[:-1]).all(), f"{name} must run 0 .. {total}"


def check_qkv(q, k, v, heads_dim=1):
    assert q.dtype in HALF and k.dtype == v.dtype == q.dtype, "kernels take bf16 / fp16, one dtype"
    for t in (q, k, v):
        assert t.stride(-1) == 1, "last dimension must be contiguous"
    assert q.shape[-1] == k.shape[-1] == v.shape[-1] and q.shape[-1] % 8 == 0, "head_dim: equal, multiple of 8"
    assert q.shape[heads_dim] % k.shape[heads_dim] == 0, "query heads must be a multiple of KV heads"


def fake_flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):
    CALLS["flash_varlen"] = CALLS.get("flash_varlen", 0) + 1
    check_qkv(q, k, v)
    assert q.dim() == k.dim() == 3 and causal is True
    check_offsets(cu_q, q.shape[0], "cu_seqlens_q")
    check_offsets(cu_k, k.shape[0], "cu_seqlens_k")
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    out = torch.empty_like(q)
    for a, b, c, d in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        out[a:b] = attend(q[a:b], k[c:d], v[c:d], causal_end=True)
    return out


def fake_flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, causal=False):
    CALLS["flash_kvcache"] = CALLS.get("flash_kvcache", 0) + 1
    check_qkv(q, k_cache, v_cache, heads_dim=2)
    B, S, H, D = q.shape
    assert k_cache.dim() == 4 and k_cache.shape[0] == B and v_cache.shape == k_cache.shape and causal is True
    assert k.shape == v.shape == (B, S, k_cache.shape[2], D) and k.dtype == q.dtype
    assert cache_seqlens.dtype == torch.int32 and cache_seqlens.shape == (B,)
    assert (cache_seqlens + S <= k_cache.shape[1]).all(), "new tokens must fit in the cache"
    out = torch.empty_like(q)
    for b, n in enumerate(cache_seqlens.tolist()):
        k_cache[b, n:n + S], v_cache[b, n:n + S] = k[b], v[b]
        out[b] = attend(q[b], k_cache[b, :n + S], v_cache[b, :n + S], causal_end=True)
    return out


def fake_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kw):
    CALLS["varlen"] = CALLS.get("varlen", 0) + 1
    KEYWORDS.update(kw)
    unchecked = set(kw) - set(attention.VARLEN_KEYWORDS)
    assert not unchecked, f"find_varlen does not check that varlen_attn takes {unchecked}"
    window_size, enable_gqa = kw.get("window_size", (-1, -1)), kw.get("enable_gqa", False)
    seqused_k = kw.get("seqused_k")
    check_qkv(query, key, value)
    assert query.dim() == key.dim() == 3
    assert enable_gqa == (key.shape[1] != query.shape[1]), "enable_gqa must say whether KV heads are shared"
    assert window_size in ((-1, 0), (-1, -1)), "causal (-1, 0) or full (-1, -1)"
    check_offsets(cu_seq_q, query.shape[0], "cu_seq_q")
    check_offsets(cu_seq_k, key.shape[0], "cu_seq_k")
    q_lens, k_lens = cu_seq_q[1:] - cu_seq_q[:-1], cu_seq_k[1:] - cu_seq_k[:-1]
    assert max_q >= int(q_lens.max()) and max_k >= int(k_lens.max())
    used = k_lens
    if seqused_k is not None:
        assert seqused_k.dtype == torch.int32 and seqused_k.shape == q_lens.shape
        assert (seqused_k <= k_lens).all() and (seqused_k >= q_lens).all()
        used = seqused_k
    out = torch.empty_like(query)
    for a, b, c, n in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist(), cu_seq_k[:-1].tolist(), used.tolist()):
        out[a:b] = attend(query[a:b], key[c:c + n], value[c:c + n], causal_end=window_size == (-1, 0))
    return out


@pytest.fixture(params=["flash", "varlen"])
def gpu_backend(request, monkeypatch):
    """attention.backend forced to the GPU kernels, each replaced by its contract stand-in."""
    monkeypatch.setattr(attention, "flash_attn_varlen_func", fake_flash_attn_varlen_func, raising=False)
    monkeypatch.setattr(attention, "flash_attn_with_kvcache", fake_flash_attn_with_kvcache, raising=False)
    monkeypatch.setattr(attention, "varlen_attn", fake_varlen_attn, raising=False)
    monkeypatch.setattr(attention, "backend", lambda x: request.param)
    CALLS.clear()
    KEYWORDS.clear()
    return request.param


def test_backend_order_on_cpu(monkeypatch):
    """CPU tensors, and fp32 on any device, always take SDPA; torch 2.13 has the varlen
    arguments we use; its kernel refuses CPU tensors, which is why SDPA is the CPU path."""
    assert attention.backend(torch.zeros(1, dtype=torch.bfloat16)) == "sdpa"
    real, missing = attention.find_varlen()
    assert real is not None and missing is None
    monkeypatch.setattr(attention, "varlen_attn", real)
    q = torch.randn(4, 2, 16, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(Exception):
        attention.varlen_attention_torch(q, q, q, cu, 4)


def varlen_attn_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """The signature torch 2.9 documents."""


def varlen_attn_no_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                       window_size=(-1, -1), seqused_k=None):
    """The signature of a torch main-branch build that had window_size and seqused_k but no enable_gqa."""


@pytest.mark.parametrize("older,missing", [(varlen_attn_2_9, "window_size, enable_gqa, seqused_k"),
                                           (varlen_attn_no_gqa, "enable_gqa")])
def test_older_varlen_attn_falls_back_to_sdpa_with_one_warning(monkeypatch, older, missing):
    """A varlen_attn without every keyword our calls pass is not used (the call would raise TypeError
    mid-run): find_varlen says why, and a GPU without flash-attn then runs SDPA and warns once, naming
    the torch version, the missing keywords and the fallback."""
    import torch.nn.attention.varlen
    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", older)
    found, why = attention.find_varlen()
    assert found is None and why == f"torch {torch.__version__}'s varlen_attn takes no {missing}"
    # the module's import on such a CUDA machine without flash-attn, then half-precision CUDA queries
    for name, value in dict(HAS_FLASH=False, varlen_attn=None, HAS_VARLEN=False, VARLEN_MISSING=why,
                            _warned=False).items():
        monkeypatch.setattr(attention, name, value)
    cuda_bf16 = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)          # backend reads only these two
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")                                       # count every warn call
        assert [attention.backend(cuda_bf16) for _ in range(3)] == ["sdpa"] * 3
    assert [str(w.message) for w in caught] == [
        f"no flash-attn, and torch {torch.__version__}'s varlen_attn takes no {missing}: attention falls back "
        "to SDPA; its decode path (bool mask + GQA) runs on the slow math kernel on CUDA"]


@pytest.mark.parametrize("S", [1, 3])
def test_gpu_functions_equal_sdpa(gpu_backend, S):
    """Each GPU function, through its stand-in, against the SDPA twin on the same bf16 inputs."""
    g = torch.Generator().manual_seed(S)
    lens = [5, 1, 9]
    q = torch.randn(sum(lens), 4, 16, generator=g).bfloat16()
    k, v = (torch.randn(sum(lens), 2, 16, generator=g).bfloat16() for _ in range(2))
    cu = torch.nn.functional.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)
    torch.testing.assert_close(attention.varlen_attention(q, k, v, cu, max(lens)),
                               attention.varlen_attention_sdpa(q, k, v, cu, max(lens)), atol=2e-2, rtol=2e-2)
    B, L = 3, 12
    seqlens = torch.tensor([0, 4, 12 - S], dtype=torch.int32)
    q = torch.randn(B, S, 4, 16, generator=g).bfloat16()
    k, v = (torch.randn(B, S, 2, 16, generator=g).bfloat16() for _ in range(2))
    kc, vc = (torch.randn(B, L, 2, 16, generator=g).bfloat16() for _ in range(2))
    kc2, vc2 = kc.clone(), vc.clone()
    out = attention.kvcache_attention(q, kc, vc, k, v, seqlens)
    ref = attention.kvcache_attention_sdpa(q, kc2, vc2, k, v, seqlens)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)                     # the same cache writes
    assert CALLS == ({"flash_varlen": 1, "flash_kvcache": 1} if gpu_backend == "flash" else {"varlen": 2})
    assert KEYWORDS == (set() if gpu_backend == "flash" else set(attention.VARLEN_KEYWORDS))   # each one is used


def test_sampler_and_trainer_call_sites(gpu_backend, qwen3_dir, byte_tokenizer):
    """The sampler's prefill, refill and decode, and the trainer's packed log-probs, in bf16
    through the stand-ins: every call passes the contract, and what the sampler reports as
    log-probs is what the trainer's forward computes from the same tokens (bf16 tolerance)."""
    model = load_model(qwen3_dir, dtype=torch.bfloat16).eval()
    prompts = [[10, 200, 31], [7, 7, 120, 99, 1, 65, 66, 250], [42]]
    samples = Sampler(model, byte_tokenizer, max_rows=4).generate(
        prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=0))
    assert sum(CALLS.values()) > 10                                          # prefills, refills, every decode step
    seqs = [prompts[s.prompt_index] + s.token_ids for s in samples]
    lens = torch.tensor([len(x) for x in seqs])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    with torch.no_grad():
        h = model(torch.tensor([t for x in seqs for t in x]), torch.cat([torch.arange(n) for n in lens.tolist()]),
                  cu, int(lens.max()))
    for s, start in zip(samples, cu[:-1].tolist()):
        P = len(prompts[s.prompt_index])
        at = torch.arange(start + P - 1, start + P - 1 + len(s.token_ids))
        ref = model.token_logprobs(h[at], torch.tensor(s.token_ids))
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=0.1, rtol=0)
