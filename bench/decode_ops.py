"""Ops per decode step and per layer: what an eager decode launches, counted with torch.profiler.

Each top-level aten op of the decode step is one kernel launch (or more) on a GPU without CUDA
graphs, so this count is what separates eager decode from a fused engine; run it before and
after a change to model.py / attention.py. Tiny random models of both families; the per-layer
count is the difference between a 6-layer and a 2-layer model, divided by 4.

    python bench/decode_ops.py            # CPU: the SDPA path; on a GPU: the bf16 kernel path
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `python bench/decode_ops.py` from anywhere
from fapo_mini.model import ModelConfig, Qwen


# ops that only make a view (no kernel on any device)
VIEWS = {"aten::view", "aten::unsqueeze", "aten::squeeze", "aten::transpose", "aten::reshape", "aten::select",
         "aten::chunk", "aten::split", "aten::split_with_sizes", "aten::slice", "aten::expand", "aten::permute", "aten::as_strided"}


def top_level_ops(family: str, layers: int, device: str, dtype) -> tuple[int, int]:
    """(top-level aten ops, of which views) of one decode step of a random `layers`-layer model."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, model_type=family,
                      attention_bias=family == "qwen2", tie_word_embeddings=True, max_position_embeddings=256)
    model = Qwen(cfg).to(device, dtype).eval()
    B, L = 8, 64
    k = [torch.zeros(B, L, 2, 32, device=device, dtype=dtype) for _ in range(layers)]
    v = [torch.zeros(B, L, 2, 32, device=device, dtype=dtype) for _ in range(layers)]
    ids, seqlens = torch.randint(0, 1000, (B,), device=device), torch.full((B,), 10, dtype=torch.int32, device=device)
    with torch.no_grad():
        model.decode(ids, seqlens, k, v)                         # warm-up: lazy inits out of the count
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.decode(ids, seqlens, k, v)
    top = [e.name for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top), sum(name in VIEWS for name in top)


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for family in ("qwen2", "qwen3"):
        (two, two_v), (six, six_v) = top_level_ops(family, 2, device, dtype), top_level_ops(family, 6, device, dtype)
        per_layer, views = (six - two) / 4, (six_v - two_v) / 4
        print(f"{family} ({device}, {str(dtype)[6:]}): {per_layer:.0f} ops per layer ({views:.0f} of them views), "
              f"{two - 2 * per_layer:.0f} outside the layers, per decode step")
