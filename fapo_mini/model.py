"""The Qwen2 / Qwen3 decoder family in plain PyTorch, reading and writing Hugging Face folders.

Why this file exists: RL for reasoning needs the same weights in three places (the
sampler, the trainer, the saved checkpoint) and full control of the forward pass
(packed sequences, a KV cache, log-probs without a (T, vocab) logits tensor). A
transformers model gives none of that cheaply, so we write the ~200 lines ourselves
and prove them equal to transformers in tests/test_model.py.

What it simplifies away: only the default RoPE (no YaRN / dynamic scaling), no sliding
window, no MoE; those raise a clear error when a config asks for them. Parameter names
match transformers', except that q/k/v and gate/up are each one fused Linear (qkv_proj,
gate_up_proj: one matmul each per layer); load_model and save_model fuse and split them, so
Hugging Face folders read and write with transformers' own names (fuse_hf, split_hf).

Two forward paths, attention metadata kept out of the layers (see attention.py):
    forward(ids, pos, cu_seqlens, max_seqlen)          packed prefill / training
    decode(ids, cache_seqlens, k_caches, v_caches)      one new token per row
and `token_logprobs` turns hidden states into log-probs of given targets, chunk by chunk.
"""
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from fapo_mini.attention import kvcache_attention, varlen_attention
from fapo_mini.errors import UserError

SUPPORTED = ("qwen2", "qwen3")   # model_type values this file implements


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "qwen3"          # qwen3: QK-norm, no bias; qwen2: q/k/v bias
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    tie_word_embeddings: bool = False
    attention_bias: bool = False       # q/k/v/o bias (Qwen3 option; Qwen2 has q/k/v bias always)
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None

    @classmethod
    def from_hf(cls, d: dict, source="config.json") -> "ModelConfig":
        """A transformers config dict -> ModelConfig; UserError (naming `source`) for what we cannot run."""
        if d.get("model_type") not in SUPPORTED:
            raise UserError(f"{source}: model_type {d.get('model_type')!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED)})")
        rope = d.get("rope_parameters") or {}                     # transformers 5 form
        scaling = d.get("rope_scaling") or {}
        kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if kind != "default":
            raise UserError(f"{source}: rope type {kind!r} is not supported (default RoPE only)")
        if d.get("use_sliding_window"):
            raise UserError(f"{source}: sliding-window attention is not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if not isinstance(d.get(k), int)]
        if missing:
            raise UserError(f"{source}: needs an integer {', '.join(repr(k) for k in missing)}")
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            model_type=d["model_type"], rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            attention_bias=d.get("attention_bias", False),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))

    def to_hf(self) -> dict:
        d = asdict(self)
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]
        d.update(architectures=[arch], hidden_act="silu", torch_dtype="float32", use_cache=True,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        if self.model_type == "qwen2":
            d.pop("attention_bias")
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # RMSNorm: x / sqrt(mean(x^2) + eps) * w, the normalisation computed in fp32
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)  # rounded as transformers does
        # fp32 weights times bf16 activations promote to fp32: cast back, so bf16 stays bf16 for flash-attn
        return (self.weight * normed).to(x.dtype)


def rope_cos_sin(pos, head_dim, theta, dtype):
    """RoPE tables for positions pos (N,) -> cos, sin (N, 1, head_dim), half-split layout."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    freqs = pos.float()[:, None] * inv_freq[None]                            # (N, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]                          # (N, 1, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    # RoPE (Su et al. 2021): x * cos + rotate_half(x) * sin
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_bias = cfg.model_type == "qwen2" or cfg.attention_bias
        # q_proj, k_proj and v_proj as one Linear, their rows stacked: one matmul, one kernel launch
        # instead of three. HF folders keep the three apart (fuse_hf / split_hf below).
        self.qkv_proj = nn.Linear(cfg.hidden_size, (H + 2 * Hkv) * D, bias=qkv_bias)
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=cfg.model_type == "qwen3" and cfg.attention_bias)
        if cfg.model_type == "qwen3":  # QK-norm: RMSNorm over each head's dim, before RoPE
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.H, self.Hkv, self.D = H, Hkv, D

    def forward(self, x, cos, sin, attn):
        N, H, Hkv = x.shape[0], self.H, self.Hkv                              # x: (N, C), N tokens
        qkv = self.qkv_proj(x).view(N, H + 2 * Hkv, self.D)                   # q, k, v heads side by side
        qk, v = qkv.split([H + Hkv, Hkv], dim=1)                               # views, no copies
        if hasattr(self, "q_norm"):                                           # QK-norm, one weight each
            q, k = qk.split([H, Hkv], dim=1)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=1)
        q, k = apply_rope(qk, cos, sin).split([H, Hkv], dim=1)                # q and k rotated in one go
        return self.o_proj(attn(q, k, v).reshape(N, H * self.D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # gate_proj and up_proj as one Linear (gate rows, then up rows): one matmul, one launch
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)                              # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


def embedding(cfg: ModelConfig) -> nn.Embedding:
    """nn.Embedding(vocab_size, hidden_size) with nn.Embedding's own N(0, 1) init (the same RNG
    calls, so a seeded sft.new_model gets the same weights), except on the meta device
    (load_model), where the init is skipped.

    Why not plain nn.Embedding: on the meta device torch runs normal_ through its Python reference
    kernels, which import torch._dynamo. Skipping that saves 1.5-2.0 CPU seconds of start-up (1.9-6 s
    wall on a busy VM) in every process that loads a model and builds no optimizer: the demo's
    evaluations and rollout.py (torch's AdamW imports torch._dynamo anyway). Measured on a 2-core
    AMD EPYC VM, 2026-12-07."""
    w = torch.empty(cfg.vocab_size, cfg.hidden_size)
    if w.device.type != "meta":
        nn.init.normal_(w)
    return nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=w)


class Decoder(nn.Module):  # named `model` inside Qwen, as transformers' parameter names require
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = embedding(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self.generation_config: dict | None = None  # the source folder's generation_config.json, if any

    def _run(self, ids, pos, attn_for_layer):
        x = self.model.embed_tokens(ids)                                      # (N, C)
        cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, attn_for_layer(i), use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_for_layer(i))
        return self.model.norm(x)                                             # (N, C)

    def forward(self, ids, pos, cu_seqlens, max_seqlen, kv_out=None):
        """Packed causal forward: ids, pos (T,) for sequences concatenated along T,
        cu_seqlens (B+1,) int32. Returns final hidden states (T, C). If kv_out is a list,
        each layer's (k, v), (T, Hkv, D), is appended to it (the sampler's prefill)."""
        def attn_for_layer(_):
            def attn(q, k, v):
                if kv_out is not None:  # copies: k and v are views into this layer's q/k/v buffers
                    kv_out.append((k.contiguous(), v.contiguous()))
                return varlen_attention(q, k, v, cu_seqlens, max_seqlen)
            return attn
        return self._run(ids, pos, attn_for_layer)

    def decode(self, ids, cache_seqlens, k_caches, v_caches):
        """One new token per row: ids (B,), cache_seqlens (B,) int32 tokens already cached
        (also the new token's position); caches: per layer (B, L, Hkv, D), written in place.
        Returns hidden states (B, C)."""
        def attn_for_layer(i):
            def attn(q, k, v):  # (B, H, D) -> add the length-1 query axis flash-attn expects
                return kvcache_attention(q[:, None], k_caches[i], v_caches[i], k[:, None], v[:, None],
                                         cache_seqlens)[:, 0]
            return attn
        return self._run(ids, cache_seqlens, attn_for_layer)

    def token_logprobs(self, hidden, targets, temperature=1.0, chunk=2048, with_entropy=False):
        """log p(targets | prefix) under softmax(logits / temperature), without ever holding
        logits for more than `chunk` tokens: each chunk is recomputed in backward.
        hidden (T, C), targets (T,) -> logp (T,) [, entropy (T,), detached]."""
        def one_chunk(h, t):
            logits = self.lm_head(h).float() / temperature                     # (n, V)
            logp_all = torch.log_softmax(logits, dim=-1)
            logp = logp_all.gather(-1, t[:, None])[:, 0]
            ent = -(logp_all.exp() * logp_all).sum(-1).detach() if with_entropy else logp.new_zeros(0)
            return logp, ent
        outs = []
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            outs.append(checkpoint(one_chunk, h, t, use_reentrant=False) if torch.is_grad_enabled()
                        else one_chunk(h, t))
        logp = torch.cat([o[0] for o in outs])
        return (logp, torch.cat([o[1] for o in outs])) if with_entropy else logp


# ----------------------------------------------------------------------------
# Hugging Face folders: config.json + safetensors (+ index) + tokenizer files

def model_folder(folder) -> Path:
    """`folder` as a Path, or a UserError when it is not an existing folder (we never download)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such model folder (a local Hugging Face folder is needed; "
                        "download a hub model first, e.g. with `hf download`)")
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a model folder")
    return folder


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def load_config(folder) -> ModelConfig:
    """The ModelConfig of a Hugging Face folder's config.json, without touching the weights."""
    folder = model_folder(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json (not a Hugging Face model folder)")
    return ModelConfig.from_hf(_read_json(folder / "config.json"), folder / "config.json")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no 'weight_map'")
        shards = [folder / f for f in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise UserError(f"{shard}: missing, but {index.name} lists it")
        return shards
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    hint = f" (found {', '.join(other)}: convert it to safetensors)" if other else ""
    raise UserError(f"{folder}: no model.safetensors or model.safetensors.index.json{hint}")


def fused_parts(cfg: ModelConfig) -> dict[str, list[tuple[str, int]]]:
    """Each fused Linear's Hugging Face parts, in the order of its rows: name -> [(HF name, rows)]."""
    H, Hkv, D, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    return {"qkv_proj": [("q_proj", H * D), ("k_proj", Hkv * D), ("v_proj", Hkv * D)],
            "gate_up_proj": [("gate_proj", I), ("up_proj", I)]}


def _module_and_param(key: str) -> tuple[str, str, str]:
    """'model.layers.3.self_attn.q_proj.weight' -> ('model.layers.3.self_attn', 'q_proj', 'weight')."""
    module, _, param = key.rpartition(".")
    parent, _, name = module.rpartition(".")
    return parent, name, param


def fuse_hf(sd: dict, cfg: ModelConfig) -> dict:
    """A state dict with transformers' names -> ours: each fused Linear's HF parts (weights, and
    biases where there are) concatenated along the rows. Every part must be present."""
    groups = {parts[0][0]: (fused, parts) for fused, parts in fused_parts(cfg).items()}   # q_proj -> qkv_proj
    out = dict(sd)
    for key in sd:
        parent, name, param = _module_and_param(key)
        if name in groups:
            fused, parts = groups[name]
            out[f"{parent}.{fused}.{param}"] = torch.cat([out.pop(f"{parent}.{hf}.{param}") for hf, _ in parts])
    return out


def split_hf(sd: dict, cfg: ModelConfig) -> dict:
    """Ours -> transformers' names, the inverse of fuse_hf: each fused tensor split by rows (views)."""
    parts_of = fused_parts(cfg)
    out = {}
    for key, t in sd.items():
        parent, name, param = _module_and_param(key)
        if name not in parts_of:
            out[key] = t
            continue
        for (hf, _), part in zip(parts_of[name], t.split([rows for _, rows in parts_of[name]])):
            out[f"{parent}.{hf}.{param}"] = part
    return out


INCOMPLETE = "INCOMPLETE"   # beside the weights of a run that was stopped early (fapo_mini/sft.py)


def load_model(folder, device="cpu", dtype=torch.float32) -> Qwen:
    """Read a Hugging Face Qwen2 / Qwen3 folder (config.json + safetensors, one file or
    sharded with an index). Every problem with the folder is a UserError naming the file.
    A folder holding INCOMPLETE (a stopped warm start) loads, with a warning on stderr."""
    cfg = load_config(folder)
    folder = Path(folder)
    if (folder / INCOMPLETE).is_file():
        print(f"warning: {folder / INCOMPLETE}: {(folder / INCOMPLETE).read_text().strip()}", file=sys.stderr, flush=True)
    sd = {}
    for shard in _weight_files(folder):
        try:
            sd.update(load_file(shard, device=str(device)))
        except SafetensorError as e:
            raise UserError(f"{shard}: unreadable safetensors file, truncated or corrupt ({e})") from None
    if cfg.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    with torch.device("meta"):
        model = Qwen(cfg)
    expected = {k: v.shape for k, v in split_hf(model.state_dict(), cfg).items()}   # the names in the file
    missing, unexpected = sorted(expected.keys() - sd.keys()), sorted(sd.keys() - expected.keys())
    if missing or unexpected:
        raise UserError(f"{folder}: the weights do not match config.json: "
                        + "; ".join(f"{what} {len(ks)} tensors ({', '.join(ks[:3])}{', ...' if len(ks) > 3 else ''})"
                                    for what, ks in (("missing", missing), ("unexpected", unexpected)) if ks))
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise UserError(f"{folder}: tensor {k} has shape {tuple(sd[k].shape)}, config.json implies {tuple(shape)}")
    model.load_state_dict(fuse_hf({k: v.to(dtype) for k, v in sd.items()}, cfg), strict=True, assign=True)
    if cfg.tie_word_embeddings:  # assign=True replaced the shared tensor: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.generation_config = read_generation_config(folder)
    return model.to(device)


def read_generation_config(folder) -> dict | None:
    """A folder's generation_config.json (Qwen's EOS list, default sampling settings), or None."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def save_model(model: Qwen, folder, tokenizer=None):
    """Write a folder that transformers' AutoModelForCausalLM (and vLLM) load, with the source's
    generation_config.json (EOS list, default sampling settings) copied through when it had one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in split_hf(model.state_dict(), model.cfg).items()}
    if model.cfg.tie_word_embeddings:
        del sd["lm_head.weight"]
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    hf = model.cfg.to_hf()
    hf["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    if model.generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(model.generation_config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# files a tokenizer can load from: the fast tokenizer, or Qwen's slow one (vocab + merges), or sentencepiece
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def load_tokenizer(folder, trust_remote_code=False):
    """The tokenizer of a local model folder; UserError when it is missing, unloadable or unusable."""
    from transformers import AutoTokenizer
    folder = model_folder(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES) and not trust_remote_code:
        raise UserError(f"{folder}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers and tokenizers raise ValueError, OSError or a bare Exception here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder}: cannot load the tokenizer: {first}") from None
    if tok.eos_token_id is None:
        raise UserError(f"{folder}: the tokenizer has no EOS token; generation could never stop")
    if not tok.encode("a b 1", add_special_tokens=False):
        raise UserError(f"{folder}: the tokenizer turns text into no tokens (broken tokenizer files?)")
    return tok
