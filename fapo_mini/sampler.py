"""Batched KV-cache sampler: many prompts of different lengths, n samples each, one loop.

Why this file exists: GRPO samples n responses per prompt with the *live* policy every
step, so sampling is most of an RL step's time. This sampler is what nano-vllm's engine
reduces to when there is one model and one job:

  1. B fixed cache slots (`slots.py`). Prefill packs each distinct prompt once with no
     padding (varlen attention) and copies its K/V into the slots of its n samples.
  2. decode: one token per slot per step against the cache (per-row lengths), sampled
     with the exponential race (no `multinomial`, no host sync).
  3. every `check_every` steps one small transfer tells the host which rows finished (EOS,
     a stop string, max_new_tokens). Their slots are refilled from the queue at once, so
     the batch stays full until the queue drains; then live rows are compacted into a
     smaller power-of-two bucket. No cache is copied when a row finishes.

Each sampled token comes with its log-prob under the distribution it was drawn from,
softmax(logits / temperature) before top-k / top-p filtering: the quantity the trainer
recomputes, so the first PPO ratio is exactly 1 up to float error.

check_every: 1 on CPU, where a device-to-host read costs nothing and every step a dead
row runs on is wasted work; 8 on CUDA, where each read stalls the launch queue, so rows
that finish run on for up to 7 steps (their tokens are discarded) in exchange for one
sync per 8 tokens. The GPU kernels get whole cache slots: static shapes, and the step can
be a CUDA graph (`cuda_graphs=True`, one graph per bucket, `cudagraph.py`); on the SDPA path
(CPU) `Slots.views` cuts the keys to the longest live row.

What nano-vllm does that this does not: paged KV blocks and prefix caching (our slots are
dense, L = longest prompt + max_new_tokens each), chunked prefill mixed into decode steps
(a refill here is its own small prefill call), preemption, tensor parallelism, and a
scheduler across many requests with their own sampling parameters.
"""
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from fapo_mini.cudagraph import GraphedDecode
from fapo_mini.slots import Slots, buckets


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
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")


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
    """sampler = Sampler(model, tokenizer); samples = sampler.generate(prompt_ids, params).

    max_rows: cache slots (rows decoded at once); check_every: steps between finish checks
    (None: 1 on CPU, 8 on CUDA, see the module docstring); cuda_graphs: replay the decode
    step as CUDA graphs (needs bf16 / fp16 weights on CUDA). After a call, `cache_bytes`
    is the size of the K/V cache it allocated."""

    def __init__(self, model, tokenizer, max_rows=256, check_every=None, cuda_graphs=False):
        if max_rows < 1 or (check_every is not None and check_every < 1):
            raise ValueError("max_rows and check_every must be >= 1")
        self.model, self.tok, self.max_rows = model, tokenizer, max_rows
        self.check_every, self.cuda_graphs = check_every, cuda_graphs
        self.eos = torch.tensor(eos_ids(model, tokenizer))   # tokenizer + config.json + generation_config.json
        self._eos_set = set(self.eos.tolist())
        self._stop_masks = {}
        self.cache_bytes = 0

    def _stop_candidates(self, stops):
        """(V,) bool: tokens whose text contains the last character of some stop string
        (or an incomplete UTF-8 piece). Only rows that sampled such a token are decoded."""
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
        weight = next(self.model.parameters())
        device = weight.device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        # fp32 weights on CUDA: one autocast region for the whole call, so each weight is cast
        # once per call (autocast's cast cache lives as long as the region), not once per token
        autocast = device.type == "cuda" and weight.dtype == torch.float32
        if self.cuda_graphs and (device.type != "cuda" or autocast):
            raise ValueError("cuda_graphs needs the model on CUDA in bf16 or fp16")
        with torch.autocast("cuda", torch.bfloat16) if autocast else nullcontext():
            tok, logp, length, reason = self._run(prompts, params, generator, device,
                                                  torch.bfloat16 if autocast else weight.dtype)
        names = ("eos", "stop", "length")
        out = [Sample(r // params.n, tok[r][:length[r]], logp[r][:length[r]], names[reason[r]])
               for r in range(len(prompts) * params.n)]
        for smp in out:
            smp.text = self.tok.decode(smp.token_ids, skip_special_tokens=True)
        return out

    def _run(self, prompts, params, generator, device, dtype):
        model, n, max_new = self.model, params.n, params.max_new_tokens
        R = len(prompts) * n                                                  # output rows, prompt-major
        slots = Slots(model.cfg, min(self.max_rows, R), max(map(len, prompts)) + max_new, dtype, device, R)
        self.cache_bytes = slots.bytes
        graph = GraphedDecode(model, slots, buckets(slots.B)) if self.cuda_graphs else None
        every = self.check_every or (8 if device.type == "cuda" else 1)
        eos = self.eos.to(device)
        stop_mask = self._stop_candidates(tuple(params.stop)).to(device) if params.stop else None
        out_tok = torch.zeros(R + 1, max_new, dtype=torch.long, device=device)   # row R: scratch for dead slots
        out_logp = torch.zeros(R + 1, max_new, device=device)
        length = torch.zeros(R + 1, dtype=torch.long, device=device)
        reason = torch.full((R + 1,), 2, dtype=torch.long, device=device)      # 0 eos, 1 stop, 2 length
        logits = torch.empty(slots.B, model.cfg.vocab_size, device=device)
        slots.fill(model, list(range(slots.B)), list(range(slots.B)), prompts, n, logits, 0)
        queued, step = slots.B, 0                                              # next row to admit
        while True:
            m = slots.m
            alive, row, n_gen = slots.alive[:m], slots.row[:m], slots.n_gen[:m]
            tok, logp = sample_tokens(logits, params, generator)
            dst, col = torch.where(alive, row, R), n_gen.clamp(max=max_new - 1)   # dead slots -> scratch row
            out_tok[dst, col] = tok
            out_logp[dst, col] = logp
            if stop_mask is not None:
                slots.stop_hit[:m] |= stop_mask[tok] & alive
            n_gen += alive
            hit_eos = alive & torch.isin(tok, eos)
            done = hit_eos | (alive & (n_gen == max_new))
            reason[torch.where(hit_eos, row, R)] = 0
            length[torch.where(done, row, R)] = n_gen
            alive &= ~done
            # decode every slot in use; dead ones write to their position 0 and are ignored
            if graph is not None:
                logits = graph(tok, slots.seqlens[:m], m)
            else:
                k_caches, v_caches = slots.views(step)
                logits = model.lm_head(model.decode(tok, slots.seqlens[:m], k_caches, v_caches)).float()
            slots.seqlens[:m] = torch.where(alive, slots.seqlens[:m] + 1, 0)
            step += 1
            if step % every == 0:
                queued, logits = self._check(slots, prompts, params, logits, out_tok, length, reason, queued, step)
                if logits is None:
                    break
        return out_tok[:R].tolist(), out_logp[:R].tolist(), length[:R].tolist(), reason[:R].tolist()

    def _check(self, slots, prompts, params, logits, out_tok, length, reason, queued, step):
        """The host's look at the batch: one transfer of the live mask (and, with stop strings,
        of n_gen and stop_hit). Cuts rows at stop strings, refills free slots from the queue,
        or, once it is empty, compacts. Returns (next queued row, logits for the slots in use),
        logits None when every row is done."""
        m, R = slots.m, slots.R
        if params.stop:
            alive_h, n_gen_h, hit_h = torch.stack(
                [slots.alive[:m].long(), slots.n_gen[:m], slots.stop_hit[:m].long()]).tolist()
            self._cut_at_stops(slots, params.stop, alive_h, n_gen_h, hit_h, out_tok, length, reason)
        else:
            alive_h = slots.alive[:m].tolist()
        free = slots.free(alive_h)
        if queued < R:
            if free:
                take = free[:R - queued]
                slots.fill(self.model, take, list(range(queued, queued + len(take))), prompts, params.n,
                           logits, step)
                queued += len(take)
            return queued, logits
        live = [s for s, a in enumerate(alive_h) if a]
        if not live:
            return queued, None
        if len(live) <= m // 2:
            logits = slots.compact(live, logits)
        return queued, logits

    def _cut_at_stops(self, slots, stops, alive_h, n_gen_h, hit_h, out_tok, length, reason):
        """Rows that sampled a stop-candidate token since the last check: decode the tail
        ending at each such token; the first that completes a stop string ends the row there
        (tokens it sampled after it are discarded). A row whose EOS completes one ends on EOS."""
        cand = self._stop_set(stops)
        max_stop = max(len(x) for x in stops)
        for s in (s for s, h in enumerate(hit_h) if h):
            r, toks = slots.row_h[s], out_tok[slots.row_h[s], :n_gen_h[s]].tolist()
            for j in range(slots.seen_h[s], len(toks)):
                if toks[j] in cand and toks[j] not in self._eos_set:
                    if any(x in self.tok.decode(toks[max(0, j - 4 * max_stop): j + 1]) for x in stops):
                        length[r], reason[r] = j + 1, 1
                        slots.alive[s], slots.seqlens[s], alive_h[s] = False, 0, False
                        break
        slots.seen_h[:slots.m] = n_gen_h
        slots.stop_hit[:slots.m] = False

    def _stop_set(self, stops):
        key = ("set", tuple(stops))
        if key not in self._stop_masks:
            self._stop_masks[key] = set(self._stop_candidates(tuple(stops)).nonzero()[:, 0].tolist())
        return self._stop_masks[key]
