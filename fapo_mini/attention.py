"""The two attention calls the whole project uses, each with GPU kernels and an SDPA twin.

Why this file exists: attention is the only place where a fast GPU kernel and a plain
reference must agree. Everything else (model, sampler, trainers) calls exactly two
functions and never asks which implementation runs:

    varlen_attention(q, k, v, cu_seqlens, max_seqlen)            packed causal attention
    kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens)  new tokens vs a KV cache

`backend(q)` picks, in this order:
  1. "flash":  flash-attn's `flash_attn_varlen_func` / `flash_attn_with_kvcache`, when the
     package imports (an optional, separately built dependency);
  2. "varlen": PyTorch's own FlashAttention, `torch.nn.attention.varlen.varlen_attn`, which
     ships in PyTorch's CUDA builds and raises on CPU. It appeared in torch 2.9 with only
     `is_causal`; our calls pass the keywords in VARLEN_KEYWORDS, which the torch 2.12 and
     2.13 docs list. Builds in between had `window_size` and `seqused_k` but no `enable_gqa`
     (added in April 2026, pytorch PR 179468); torch 2.11 may be one. `find_varlen` checks
     the signature for all three, so such a build falls to SDPA, with one warning naming the
     torch version and the missing keywords (bench/gpu_check.json records which ran).
     Where it is used, a GPU user gets flash kernels with no flash-attn build;
  3. "sdpa":   the reference twins below, on CPU or any tensor the kernels cannot take.
The kernels need CUDA tensors in bf16 / fp16. What CPU tests cannot run is the kernel call
itself: each GPU function is a few lines, and tests/test_attention_contract.py runs the real
call sites through stand-ins that check every documented argument contract.

Layouts follow flash-attn: packed tensors are (T, H, D); caches are (B, L, Hkv, D).
Grouped-query attention (Hkv < H) is handled by all three.
"""
import inspect
import warnings

import torch
import torch.nn.functional as F

try:  # optional, GPU only
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the machine
    HAS_FLASH = False


# Every keyword varlen_attention_torch and kvcache_attention_torch pass to varlen_attn.
VARLEN_KEYWORDS = ("window_size", "enable_gqa", "seqused_k")


def find_varlen():
    """(varlen_attn, None) if this torch's varlen_attn takes every keyword in VARLEN_KEYWORDS,
    else (None, why not): a call with a keyword the function lacks would raise TypeError mid-run.
    (The Python module exists on CPU builds too; only its kernel needs CUDA.)"""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover - older torch
        return None, f"torch {torch.__version__} has no torch.nn.attention.varlen"
    missing = [k for k in VARLEN_KEYWORDS if k not in inspect.signature(varlen_attn).parameters]
    if missing:
        return None, f"torch {torch.__version__}'s varlen_attn takes no {', '.join(missing)}"
    return varlen_attn, None


# Looked up only where it can run: the module imports torch._dynamo, about a second of start-up.
varlen_attn, VARLEN_MISSING = find_varlen() if torch.cuda.is_available() else (None, "no CUDA")
HAS_VARLEN = varlen_attn is not None

_warned = False


def backend(x: torch.Tensor) -> str:
    """'flash', 'varlen' or 'sdpa' for a query tensor x (see the module docstring)."""
    global _warned
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    if HAS_FLASH:
        return "flash"
    if HAS_VARLEN:
        return "varlen"
    if not _warned:  # one warning per process, at the first half-precision CUDA call
        warnings.warn(f"no flash-attn, and {VARLEN_MISSING}: attention falls back to SDPA; its decode path "
                      "(bool mask + GQA) runs on the slow math kernel on CUDA")
        _warned = True
    return "sdpa"


# ----------------------------------------------------------------------------
# packed variable-length causal attention (prefill and training)

def varlen_attention_flash(q, k, v, cu_seqlens, max_seqlen):
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)


def varlen_attention_torch(q, k, v, cu_seqlens, max_seqlen):
    # window (-1, 0): causal (each query sees keys up to its own position), per sequence
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, window_size=(-1, 0),
                       enable_gqa=k.shape[1] != q.shape[1])


def varlen_attention_sdpa(q, k, v, cu_seqlens, max_seqlen):
    """Reference for `flash_attn_varlen_func(..., causal=True)`.

    q: (T, H, D), k, v: (T, Hkv, D) for B sequences packed back to back;
    cu_seqlens: (B+1,) int32 offsets; max_seqlen: int. Returns (T, H, D).
    The packed tokens are scattered into a right-padded (B, H, L, D) batch. With
    right padding a plain causal mask is exact: a real query at position i only sees
    keys 0..i, which are all real, and padded queries are dropped on the way out.
    """
    T, H, D = q.shape
    B = cu_seqlens.numel() - 1
    lens = cu_seqlens[1:] - cu_seqlens[:-1]                                   # (B,)
    row = torch.repeat_interleave(torch.arange(B, device=q.device), lens)     # (T,) sequence of each token
    col = torch.arange(T, device=q.device) - cu_seqlens[:-1].long()[row]      # (T,) position within it

    def pad(x):  # (T, h, D) -> (B, h, L, D)
        out = x.new_zeros(B, max_seqlen, x.shape[1], D)
        out[row, col] = x
        return out.transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), is_causal=True,
                                         enable_gqa=k.shape[1] != H)          # (B, H, L, D)
    return out.transpose(1, 2)[row, col]                                      # (T, H, D)


_VARLEN = {"flash": varlen_attention_flash, "varlen": varlen_attention_torch, "sdpa": varlen_attention_sdpa}


def varlen_attention(q, k, v, cu_seqlens, max_seqlen):
    return _VARLEN[backend(q)](q, k, v, cu_seqlens, max_seqlen)


# ----------------------------------------------------------------------------
# new tokens against a KV cache with per-row lengths (decode)

def kvcache_attention_flash(q, k_cache, v_cache, k, v, cache_seqlens):
    return flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens, causal=True)


def _write_cache(k_cache, v_cache, k, v, cache_seqlens):
    """Row b's S new keys / values go to positions cache_seqlens[b] .. + S - 1, in place.
    Returns those positions, (B, S)."""
    B, S = k.shape[:2]
    pos = cache_seqlens.long()[:, None] + torch.arange(S, device=k.device)   # (B, S)
    rows = torch.arange(B, device=k.device)[:, None]
    k_cache[rows, pos] = k
    v_cache[rows, pos] = v
    return pos


def kvcache_attention_torch(q, k_cache, v_cache, k, v, cache_seqlens):
    """flash_attn_with_kvcache's semantics from torch's varlen_attn: write the new keys,
    then read each row's first cache_seqlens[b] + S keys of its (L,) slot. The dense cache
    is a packed key tensor with offsets b * L, and `seqused_k` says how much of each is used."""
    B, S, H, D = q.shape
    L, Hkv = k_cache.shape[1], k_cache.shape[2]
    _write_cache(k_cache, v_cache, k, v, cache_seqlens)
    cu_q = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=q.device)
    out = varlen_attn(q.reshape(B * S, H, D), k_cache.view(B * L, Hkv, D), v_cache.view(B * L, Hkv, D),
                      cu_q, cu_k, S, L, seqused_k=(cache_seqlens + S).to(torch.int32),
                      # one query: it sees every used key; S > 1: causal, aligned to the end of the keys
                      window_size=(-1, -1) if S == 1 else (-1, 0), enable_gqa=Hkv != H)
    return out.view(B, S, H, D)


def kvcache_attention_sdpa(q, k_cache, v_cache, k, v, cache_seqlens):
    """Reference for `flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=..., causal=True)`.

    q: (B, S, H, D) new queries; k, v: (B, S, Hkv, D) their keys/values;
    k_cache, v_cache: (B, L, Hkv, D), updated IN PLACE: row b's new keys are written at
    positions cache_seqlens[b] .. cache_seqlens[b]+S-1; cache_seqlens: (B,) int32 lengths
    before this call. Query s of row b attends to cache positions <= cache_seqlens[b]+s.
    Returns (B, S, H, D). The cost follows L: the sampler passes a view of the cache cut
    to the longest row, so no key past it is computed on.
    """
    H = q.shape[2]
    pos = _write_cache(k_cache, v_cache, k, v, cache_seqlens)                 # (B, S)
    L = k_cache.shape[1]
    visible = torch.arange(L, device=q.device)[None, None, :] <= pos[:, :, None]   # (B, S, L)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
        attn_mask=visible[:, None], enable_gqa=k.shape[2] != H)              # (B, H, S, D)
    return out.transpose(1, 2)


_KVCACHE = {"flash": kvcache_attention_flash, "varlen": kvcache_attention_torch, "sdpa": kvcache_attention_sdpa}


def kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens):
    return _KVCACHE[backend(q)](q, k_cache, v_cache, k, v, cache_seqlens)
