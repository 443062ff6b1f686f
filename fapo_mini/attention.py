"""The two attention calls the whole project uses, each with a flash-attn and an SDPA twin.

Why this file exists: attention is the only place where a fast GPU kernel and a plain
reference must agree. Everything else (model, sampler, trainers) calls exactly two
functions and never asks which implementation runs:

    varlen_attention(q, k, v, cu_seqlens, max_seqlen)        packed causal attention
    kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens)  new tokens vs a KV cache

The flash-attn versions are one-line calls to `flash_attn_varlen_func` and
`flash_attn_with_kvcache` (so what CPU tests cannot check is one line each). The SDPA
versions have the same signatures and semantics and are the tested reference. The
choice is automatic: flash-attn when it imports and the tensors are on CUDA.

Layouts follow flash-attn: packed tensors are (T, H, D); caches are (B, L, Hkv, D).
Grouped-query attention (Hkv < H) is handled by both.
"""
import torch
import torch.nn.functional as F

try:  # optional, GPU only
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the machine
    HAS_FLASH = False


def _use_flash(x: torch.Tensor) -> bool:
    return HAS_FLASH and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------
# packed variable-length causal attention (prefill and training)

def varlen_attention_flash(q, k, v, cu_seqlens, max_seqlen):
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)


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


def varlen_attention(q, k, v, cu_seqlens, max_seqlen):
    impl = varlen_attention_flash if _use_flash(q) else varlen_attention_sdpa
    return impl(q, k, v, cu_seqlens, max_seqlen)


# ----------------------------------------------------------------------------
# new tokens against a KV cache with per-row lengths (decode)

def kvcache_attention_flash(q, k_cache, v_cache, k, v, cache_seqlens):
    return flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens, causal=True)


def kvcache_attention_sdpa(q, k_cache, v_cache, k, v, cache_seqlens):
    """Reference for `flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=..., causal=True)`.

    q: (B, S, H, D) new queries; k, v: (B, S, Hkv, D) their keys/values;
    k_cache, v_cache: (B, L, Hkv, D), updated IN PLACE: row b's new keys are written at
    positions cache_seqlens[b] .. cache_seqlens[b]+S-1; cache_seqlens: (B,) int32 lengths
    before this call. Query s of row b attends to cache positions <= cache_seqlens[b]+s.
    Returns (B, S, H, D).
    """
    B, S, H, D = q.shape
    pos = cache_seqlens.long()[:, None] + torch.arange(S, device=q.device)    # (B, S) where the new tokens go
    rows = torch.arange(B, device=q.device)[:, None]
    k_cache[rows, pos] = k
    v_cache[rows, pos] = v
    L = int(pos.max()) + 1                                                    # no key past this is visible
    visible = torch.arange(L, device=q.device)[None, None, :] <= pos[:, :, None]   # (B, S, L)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k_cache[:, :L].transpose(1, 2), v_cache[:, :L].transpose(1, 2),
        attn_mask=visible[:, None], enable_gqa=k.shape[2] != H)              # (B, H, S, D)
    return out.transpose(1, 2)


def kvcache_attention(q, k_cache, v_cache, k, v, cache_seqlens):
    impl = kvcache_attention_flash if _use_flash(q) else kvcache_attention_sdpa
    return impl(q, k_cache, v_cache, k, v, cache_seqlens)
