"""The sampler's decode step as CUDA graphs, one per batch bucket (nano-vllm's idea).

Why this file exists: a decode step of a 28-layer model is ~1.6k small kernels; launched
one by one from Python it is bound by launch overhead, not by the GPU. A CUDA graph
records the step once and replays it with one launch. A graph has fixed shapes and fixed
memory addresses, so:
  - the step reads its inputs from static buffers (`tok`, `seqlens`) that each call fills;
  - the caches are the `Slots` tensors, whose slots never move during a call (compaction
    moves rows within them) and whose views [:b] are captured per bucket b;
  - attention sees every slot's whole L positions; the kernels (flash-attn or torch's
    varlen_attn) skip keys past `seqlens` on their own, and dead slots have length 0.
Capture runs the step once per bucket on a side stream first (it writes position 0 of
every slot, before any prompt is filled) and shares one memory pool across buckets.
The weights must already be bf16 / fp16: under autocast each replay would cast them again.
"""
import torch


class GraphedDecode:
    def __init__(self, model, slots, sizes):
        device = slots.row.device
        self.tok = torch.zeros(slots.B, dtype=torch.long, device=device)
        self.seqlens = torch.zeros(slots.B, dtype=torch.int32, device=device)
        self.graphs, pool = {}, None

        def step(b):
            h = model.decode(self.tok[:b], self.seqlens[:b], [k[:b] for k in slots.k], [v[:b] for v in slots.v])
            return model.lm_head(h).float()                                       # (b, V)

        side = torch.cuda.Stream(device)
        for b in sorted(sizes, reverse=True):              # largest first: the pool fits the rest
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step(b)                                    # warm-up outside the capture (lazy inits)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = step(b)
            pool = graph.pool()
            self.graphs[b] = (graph, out)

    def __call__(self, tok, seqlens, m):
        """Decode the first m slots (m a captured bucket); returns the graph's logits (m, V),
        valid until the next call."""
        self.tok[:m].copy_(tok)
        self.seqlens[:m].copy_(seqlens)
        graph, out = self.graphs[m]
        graph.replay()
        return out
