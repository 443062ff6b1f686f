"""Tests for fapo_mini/attention.py.

The SDPA functions are checked against a plain loop (one sequence, one head at a time,
explicit softmax, GQA by indexing the shared KV head). The flash-attn functions are
checked against their SDPA twins in bf16; those tests skip without CUDA and flash_attn.
"""
import math

import pytest
import torch

from fapo_mini import attention
from fapo_mini.attention import kvcache_attention_sdpa, varlen_attention_sdpa

D = 16


def loop_attention(q, k, v, n_visible):
    """One sequence: q (S, H, D), k, v (L, Hkv, D); query s sees keys 0 .. n_visible[s]-1.
    Returns (S, H, D). Query head h reads KV head h // (H / Hkv), as GQA repeats KV heads."""
    S, H, _ = q.shape
    group = H // k.shape[1]
    out = torch.empty_like(q)
    for s in range(S):
        for h in range(H):
            kh, vh = k[:n_visible[s], h // group], v[:n_visible[s], h // group]
            scores = kh @ q[s, h] / math.sqrt(q.shape[-1])                   # (n,)
            p = scores.exp() / scores.exp().sum()
            out[s, h] = p @ vh
    return out


def cu_seqlens(lens):
    return torch.nn.functional.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(torch.int32)


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])                   # MHA, GQA, MQA
def test_varlen_sdpa_equals_loop(H, Hkv):
    lens = [3, 1, 6, 2]
    T = sum(lens)
    g = torch.Generator().manual_seed(H * 10 + Hkv)
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (H, Hkv, Hkv))
    out = varlen_attention_sdpa(q, k, v, cu_seqlens(lens), max(lens))
    assert out.shape == (T, H, D)
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        ref = loop_attention(q[sl], k[sl], v[sl], n_visible=range(1, n + 1))  # causal, no leak across sequences
        torch.testing.assert_close(out[sl], ref, atol=1e-5, rtol=1e-5)
        start += n


@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2)])
def test_kvcache_sdpa_equals_loop_and_writes_cache(S, H, Hkv):
    B, L = 3, 12
    seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    g = torch.Generator().manual_seed(S * 100 + Hkv)
    q = torch.randn(B, S, H, D, generator=g)
    k, v = torch.randn(B, S, Hkv, D, generator=g), torch.randn(B, S, Hkv, D, generator=g)
    k_cache, v_cache = torch.randn(B, L, Hkv, D, generator=g), torch.randn(B, L, Hkv, D, generator=g)
    k_before, v_before = k_cache.clone(), v_cache.clone()

    out = kvcache_attention_sdpa(q, k_cache, v_cache, k, v, seqlens)
    assert out.shape == (B, S, H, D)
    for b, n in enumerate(seqlens.tolist()):
        # the cache is written in place at n .. n+S-1 and nowhere else
        torch.testing.assert_close(k_cache[b, n:n + S], k[b], atol=0, rtol=0)
        torch.testing.assert_close(v_cache[b, n:n + S], v[b], atol=0, rtol=0)
        for cache, before in ((k_cache, k_before), (v_cache, v_before)):
            torch.testing.assert_close(cache[b, :n], before[b, :n], atol=0, rtol=0)
            torch.testing.assert_close(cache[b, n + S:], before[b, n + S:], atol=0, rtol=0)
        keys = torch.cat([k_before[b, :n], k[b]])                             # old cache, then the new keys
        values = torch.cat([v_before[b, :n], v[b]])
        ref = loop_attention(q[b], keys, values, n_visible=range(n + 1, n + S + 1))
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_dispatch_uses_sdpa_on_cpu():
    q = torch.randn(4, 2, D)
    cu = cu_seqlens([4])
    torch.testing.assert_close(attention.varlen_attention(q, q, q, cu, 4), varlen_attention_sdpa(q, q, q, cu, 4))


# ----------------------------------------------------------------------------- flash-attn vs SDPA (GPU only)

needs_flash = pytest.mark.skipif(not (attention.HAS_FLASH and torch.cuda.is_available()),
                                 reason="needs CUDA and flash_attn")


@needs_flash
def test_varlen_flash_equals_sdpa():
    lens = [37, 1, 200, 64]
    T, H, Hkv, Dh = sum(lens), 8, 2, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(T, h, Dh, device="cuda", generator=g, dtype=torch.bfloat16) for h in (H, Hkv, Hkv))
    cu = cu_seqlens(lens).cuda()
    flash = attention.varlen_attention_flash(q, k, v, cu, max(lens))
    sdpa = varlen_attention_sdpa(q, k, v, cu, max(lens))
    torch.testing.assert_close(flash.float(), sdpa.float(), atol=2e-2, rtol=2e-2)


@needs_flash
def test_kvcache_flash_equals_sdpa():
    B, L, H, Hkv, Dh = 4, 256, 8, 2, 64
    seqlens = torch.tensor([0, 5, 100, 250], dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g, dtype=torch.bfloat16)

    q, k, v = rand(B, 1, H, Dh), rand(B, 1, Hkv, Dh), rand(B, 1, Hkv, Dh)
    k_cache, v_cache = rand(B, L, Hkv, Dh), rand(B, L, Hkv, Dh)
    kc2, vc2 = k_cache.clone(), v_cache.clone()
    flash = attention.kvcache_attention_flash(q, k_cache, v_cache, k, v, seqlens)
    sdpa = kvcache_attention_sdpa(q, kc2, vc2, k, v, seqlens)
    torch.testing.assert_close(flash.float(), sdpa.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(k_cache, kc2, atol=0, rtol=0)                 # both wrote the same cache
    torch.testing.assert_close(v_cache, vc2, atol=0, rtol=0)
