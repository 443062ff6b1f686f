"""Fixed KV-cache slots for one `Sampler.generate` call: admit, free, refill, compact.

Why this file exists: the sampler's loop should read as "sample, decode, check", while
the bookkeeping that lets a finished row give its cache slot to the next prompt without
copying anyone else's cache lives here.

The cache is B dense slots of L = longest prompt + max_new_tokens positions, per layer
(B, L, Hkv, D). Per slot, on the device (updated by the loop with no host sync):
  row      the output row it holds (R = none: outputs go to a scratch row R)
  n_gen    tokens generated so far
  seqlens  tokens cached = the position the next token is written to (0 once dead)
  alive    still generating
  stop_hit a token that may complete a stop string was sampled since the last check
and on the host, updated only at a check: row_h, off_h = prompt length - the step the
slot was admitted at (so a live slot's seqlens at step t is off_h + t, and
max(off_h) + t + 1 bounds every slot's key span with no sync: see `views`), seen_h = n_gen
at the last check (where the stop-string scan resumes).

Only the first `m` slots are in use; the loop works on views [:m]. Once the queue is empty
and the live rows fit in a smaller bucket (powers of two), `compact` moves them to the front,
in place, a few rows at a time: the cache is never copied whole, and on CUDA the decode step
can be a CUDA graph captured once per bucket.
"""
import torch

from fapo_mini import attention

NONE = float("-inf")   # off_h of a slot that holds no row


def buckets(B: int) -> list[int]:
    """The batch sizes the live slots are compacted to: 1, 2, 4, ... below B, and B."""
    out, b = [], 1
    while b < B:
        out.append(b)
        b *= 2
    return out + [B]


class Slots:
    def __init__(self, cfg, B: int, L: int, dtype, device, R: int):
        shape = (B, L, cfg.num_key_value_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.B, self.L, self.R, self.m = B, L, R, B
        self.row = torch.full((B,), R, dtype=torch.long, device=device)
        self.n_gen = torch.zeros(B, dtype=torch.long, device=device)
        self.seqlens = torch.zeros(B, dtype=torch.int32, device=device)
        self.alive = torch.zeros(B, dtype=torch.bool, device=device)
        self.stop_hit = torch.zeros(B, dtype=torch.bool, device=device)
        self.row_h, self.off_h, self.seen_h = [R] * B, [NONE] * B, [0] * B
        self.cut_keys = attention.backend(self.k[0]) == "sdpa"
        self.bytes = sum(t.numel() * t.element_size() for t in self.k + self.v)

    def views(self, step: int):
        """Per-layer caches of the m slots in use for the decode at `step`, (m, span, Hkv, D) each.

        The GPU kernels skip unused keys themselves, so they get whole slots (span = L). SDPA
        (the CPU path) computes on every key it is given, so it gets only the keys any slot can
        attend to: span = the longest live row's length + 1, from the host-side off_h (no sync).
        That saves 6-14% of the sampler's CPU time (d96-l4, one thread: 14% for 12 prompts x 8
        x 64 tokens, 11% for 256 x 1 x 64, 6% for 16 x 8 x 160 with 100-token prompts; AMD EPYC,
        2026-12-07). It also sets the float rounding: whole slots give the same tokens but
        log-probs that differ in the last bits."""
        span = int(min(self.L, max(self.off_h[:self.m]) + step + 1)) if self.cut_keys else self.L
        return [k[:self.m, :span] for k in self.k], [v[:self.m, :span] for v in self.v]

    def free(self, alive_h: list) -> list[int]:
        """Slots that hold no live row (alive_h: the host copy of alive[:m]); releases them."""
        out = []
        for s, a in enumerate(alive_h):
            if not a:
                self.row_h[s], self.off_h[s] = self.R, NONE
                out.append(s)
        return out

    def fill(self, model, slots: list[int], rows: list[int], prompts: list[list[int]], n: int,
             logits: torch.Tensor, step: int):
        """Prefill rows (output row r samples prompt r // n) into `slots`, each distinct prompt
        once, packed with no padding; its K/V are copied into the slot of each of its rows.
        Writes the slots' first-token logits into `logits` (m, V)."""
        device = self.row.device
        distinct = sorted({r // n for r in rows})
        local = {p: j for j, p in enumerate(distinct)}
        seqs = [prompts[p] for p in distinct]
        lens = torch.tensor([len(p) for p in seqs], device=device)
        ids = torch.tensor([t for p in seqs for t in p], device=device)
        pos = torch.cat([torch.arange(len(p), device=device) for p in seqs])
        cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        kv = []
        h = model(ids, pos, cu, int(lens.max()), kv_out=kv)                        # (T, C)
        first = model.lm_head(h[cu[1:].long() - 1]).float()                        # (P, V) next-token logits

        # cache[slot, position] = kv[token] for every token of each slot's prompt
        j = torch.tensor([local[r // n] for r in rows], device=device)            # (k,) prompt of each slot
        slot_t = torch.tensor(slots, device=device)
        dst_slot = torch.repeat_interleave(slot_t, lens[j])                        # (sum of lens,)
        src = torch.cat([torch.arange(int(cu[i]), int(cu[i + 1]), device=device) for i in j.tolist()])
        for layer, (k, v) in enumerate(kv):
            self.k[layer][dst_slot, pos[src]] = k[src]
            self.v[layer][dst_slot, pos[src]] = v[src]
        logits[slot_t] = first[j]
        self.row[slot_t] = torch.tensor(rows, device=device)
        self.n_gen[slot_t] = 0
        self.seqlens[slot_t] = lens[j].to(torch.int32)
        self.alive[slot_t] = True
        self.stop_hit[slot_t] = False
        for s, r, jj in zip(slots, rows, j.tolist()):
            self.row_h[s], self.off_h[s], self.seen_h[s] = r, len(seqs[jj]) - step, 0

    def compact(self, live: list[int], logits: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Move the live slots to the front and shrink m to the smallest bucket that holds
        them. In place, `chunk` slots at a time (targets are never ahead of sources, so no
        live slot is overwritten before it is read). Returns logits for the new m."""
        n = len(live)
        b = next(x for x in buckets(self.B) if x >= n)
        idx = torch.tensor(live, dtype=torch.long, device=self.row.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            for t in self.k + self.v:
                t[s:e] = t[idx[s:e]]
        for t in (self.row, self.n_gen, self.seqlens, self.alive, self.stop_hit):
            t[:n] = t[idx].clone()
        logits[:n] = logits[idx].clone()
        self.row[n:b], self.alive[n:b], self.seqlens[n:b], self.stop_hit[n:b] = self.R, False, 0, False
        for hv, empty in ((self.row_h, self.R), (self.off_h, NONE), (self.seen_h, 0)):
            hv[:n] = [hv[s] for s in live]
            hv[n:b] = [empty] * (b - n)
        self.m = b
        return logits[:b]
