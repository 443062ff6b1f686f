"""Batched KV-cache sampler: many prompts of different lengths, n samples each, one loop.

Why this file exists: GRPO samples n responses per prompt with the *live* policy every
step, so sampling is most of an RL step's time. This sampler is what nano-vllm's
engine reduces to when there is one model and one batch:

  1. prefill: every distinct prompt once, packed with no padding (varlen attention);
     its K/V are copied into n cache rows, one per sample;
  2. decode: one token per active row per step against the cache (per-row lengths);
  3. rows that finish (EOS, a stop string, max_new_tokens) leave the batch at once, so
     the tail of long answers does not pay for the short ones.

Each sampled token comes with its log-prob under the distribution it was drawn from,
softmax(logits / temperature) before top-k / top-p filtering: the quantity the trainer
recomputes, so the first PPO ratio is exactly 1 up to float error.

Simplified away: paged memory and continuous batching. The cache is a dense
(rows, prompt + max_new_tokens) block, so large jobs run in waves of `max_rows` rows.
No Python work per token per row: the loop is tensor ops, plus decoding the few rows
whose last token could complete a stop string.
"""
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    n: int = 1                    # samples per prompt
    temperature: float = 1.0      # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                # 0 = off
    max_new_tokens: int = 256
    stop: tuple = ()              # stop strings (kept in the output, like the EOS token)
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError("n and max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


@dataclass
class Sample:
    prompt_index: int
    token_ids: list           # generated ids, the EOS / stop-completing token included
    logprobs: list            # one per generated token
    finish_reason: str        # "eos", "stop" or "length"
    text: str = field(default="", repr=False)


def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the top-k and outside the top-p nucleus.
    logits (B, V). The nucleus is the smallest set of most likely tokens whose
    probabilities sum to >= top_p (a token is dropped when the mass before it reaches p)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = torch.nn.functional.pad(probs.cumsum(-1)[:, :-1], (1, 0))   # (B, V) exclusive cumsum
        drop = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits, params: SamplingParams, generator):
    """logits (B, V) fp32 -> tokens (B,), logprobs (B,) under softmax(logits / T)."""
    if params.temperature == 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0]
    logits = logits / params.temperature
    logp = torch.log_softmax(logits, -1)
    probs = filter_logits(logits, params.top_k, params.top_p).softmax(-1)
    # exponential-race sampling: argmax p_i / E_i with E_i ~ Exp(1) draws i with prob p_i (no host sync);
    # E = -log(U) with U uniform has that law and is cheaper on CPU than Tensor.exponential_
    noise = -torch.rand(probs.shape, generator=generator, device=probs.device).log()
    tok = (probs / noise).argmax(-1)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a row: the tokenizer's EOS and the EOS ids of config.json and of
    generation_config.json (an int or a list each; Qwen's chat models list <|im_end|> there)."""
    ids = {tokenizer.eos_token_id}
    for eos in (model.cfg.eos_token_id, (getattr(model, "generation_config", None) or {}).get("eos_token_id")):
        ids |= set(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


class Sampler:
    """sampler = Sampler(model, tokenizer); samples = sampler.generate(prompt_ids, params)."""

    def __init__(self, model, tokenizer, max_rows=256):
        self.model, self.tok, self.max_rows = model, tokenizer, max_rows
        self.eos = torch.tensor(eos_ids(model, tokenizer))   # tokenizer + config.json + generation_config.json
        self._stop_masks = {}

    def _stop_candidates(self, stops):
        """(V,) bool: tokens whose text contains the last character of some stop string
        (or an incomplete UTF-8 piece). Only rows ending in such a token are decoded."""
        if stops not in self._stop_masks:
            V = self.model.cfg.vocab_size
            last = {s[-1] for s in stops}
            texts = self.tok.batch_decode([[i] for i in range(min(V, len(self.tok)))])
            mask = torch.zeros(V, dtype=torch.bool)
            for i, t in enumerate(texts):
                mask[i] = any(c in t for c in last) or "\ufffd" in t
            self._stop_masks[stops] = mask
        return self._stop_masks[stops]

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams, generator=None):
        """prompts: list of token-id lists. Returns len(prompts) * n Samples, prompt-major
        (all samples of prompt 0, then prompt 1, ...). `generator` (a torch.Generator on the
        model's device) makes sampling reproducible; by default one is seeded from params.seed."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        device = next(self.model.parameters()).device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        per_wave = max(1, self.max_rows // params.n)
        out = []
        for s in range(0, len(prompts), per_wave):
            out += self._wave(prompts[s:s + per_wave], s, params, generator, device)
        for smp in out:
            smp.text = self.tok.decode(smp.token_ids, skip_special_tokens=True)
        return out

    def _wave(self, prompts, offset, params, generator, device):
        model, n, max_new = self.model, params.n, params.max_new_tokens
        P = len(prompts)
        B = P * n
        lens = torch.tensor([len(p) for p in prompts], device=device)
        ac = (torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext())
        eos = self.eos.to(device)
        stop_mask = self._stop_candidates(tuple(params.stop)).to(device) if params.stop else None
        max_stop = max((len(s) for s in params.stop), default=0)

        # 1. prefill each distinct prompt once, packed
        ids = torch.tensor([t for p in prompts for t in p], device=device)
        pos = torch.cat([torch.arange(int(l), device=device) for l in lens])
        cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        kv = []
        with ac:
            h = model(ids, pos, cu, int(lens.max()), kv_out=kv)               # (T, C)
            logits = model.lm_head(h[cu[1:].long() - 1]).float()              # (P, V) last prompt token
        logits = logits.repeat_interleave(n, 0)                               # (B, V)

        # copy prompt K/V into n cache rows each: cache[row, position] = kv[token]
        L = int(lens.max()) + max_new
        row_of_tok = torch.repeat_interleave(torch.arange(P, device=device), lens)      # (T,)
        rows = (row_of_tok[:, None] * n + torch.arange(n, device=device)).flatten()     # (T*n,)
        cols = pos.repeat_interleave(n)
        src = torch.arange(ids.numel(), device=device).repeat_interleave(n)
        k_caches, v_caches = [], []
        for k, v in kv:
            kc = k.new_zeros(B, L, *k.shape[1:])                                  # (B, L, Hkv, D)
            vc = v.new_zeros(B, L, *v.shape[1:])
            kc[rows, cols], vc[rows, cols] = k[src], v[src]
            k_caches.append(kc)
            v_caches.append(vc)
        del kv

        # 2. decode; `live` maps batch position -> original row, finished rows are dropped
        seqlens = lens.repeat_interleave(n).to(torch.int32)                  # (B,) cached tokens per row
        live = torch.arange(B, device=device)
        out_tok = torch.zeros(B, max_new, dtype=torch.long, device=device)
        out_logp = torch.zeros(B, max_new, device=device)
        n_gen = torch.zeros(B, dtype=torch.long, device=device)
        reason = torch.full((B,), 2, dtype=torch.long, device=device)       # 0 eos, 1 stop, 2 length
        for step in range(max_new):
            tok, logp = sample_tokens(logits, params, generator)
            out_tok[live, step], out_logp[live, step] = tok, logp
            is_eos = torch.isin(tok, eos)
            done = is_eos | (step + 1 == max_new)
            reason[live[is_eos]] = 0
            if stop_mask is not None and stop_mask[tok].any():
                for j in stop_mask[tok].nonzero()[:, 0].tolist():           # only candidate rows
                    tail = self.tok.decode(out_tok[live[j], max(0, step - 4 * max_stop): step + 1].tolist())
                    if any(s in tail for s in params.stop) and not is_eos[j]:
                        done[j] = True
                        reason[live[j]] = 1
            if done.any():
                n_gen[live[done]] = step + 1
                keep = ~done
                if not keep.any():
                    break
                live, tok, seqlens = live[keep], tok[keep], seqlens[keep]
                for i in range(len(k_caches)):  # one layer at a time: peak = cache + one layer's copy
                    k_caches[i], v_caches[i] = k_caches[i][keep], v_caches[i][keep]
            with ac:
                h = model.decode(tok, seqlens, k_caches, v_caches)            # (B_live, C)
                logits = model.lm_head(h).float()
            seqlens = seqlens + 1

        names = ("eos", "stop", "length")
        n_gen, reason = n_gen.tolist(), reason.tolist()
        out_tok, out_logp = out_tok.tolist(), out_logp.tolist()
        return [Sample(offset + r // n, out_tok[r][:n_gen[r]], out_logp[r][:n_gen[r]], names[reason[r]])
                for r in range(B)]
