"""Tests for fapo_mini/model.py against transformers, the independent reference.

Checkpoints come from conftest.py (random tiny Qwen2 and Qwen3 folders written by
transformers' `save_pretrained`). Everything runs in fp32 on CPU.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import EOS, VOCAB, make_byte_tokenizer, make_hf_model
from fapo_mini.errors import UserError
from fapo_mini.model import load_model, load_tokenizer, save_model

LENS = [5, 1, 9, 3]


def random_seqs(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, EOS, (n,), generator=g) for n in lens]


def packed_args(seqs):
    """ids, pos (T,), cu_seqlens (B+1,) int32, max_seqlen for sequences packed back to back."""
    lens = torch.tensor([len(s) for s in seqs])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    return torch.cat(seqs), torch.cat([torch.arange(n) for n in lens.tolist()]), cu, int(lens.max())


def hf_logits(hf, seqs):
    with torch.no_grad():
        return torch.cat([hf(s[None]).logits[0] for s in seqs])               # (T, V), one sequence at a time


def our_logits(model, seqs):
    with torch.no_grad():
        return model.lm_head(model(*packed_args(seqs)))                       # (T, V)


# ----------------------------------------------------------------------------- forward

def test_packed_logits_equal_transformers(ckpt_dir):
    hf = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).eval()
    model = load_model(ckpt_dir)
    seqs = random_seqs(LENS)
    ref = hf_logits(hf, seqs)
    assert ref.std() > 1                                                      # a real spread, not ~0 logits
    torch.testing.assert_close(our_logits(model, seqs), ref, atol=1e-5, rtol=1e-5)


def test_config_features_were_read(qwen2_dir, qwen3_dir):
    q2, q3 = load_model(qwen2_dir), load_model(qwen3_dir)
    attn2, attn3 = q2.model.layers[0].self_attn, q3.model.layers[0].self_attn
    assert attn2.qkv_proj.bias is not None and attn2.o_proj.bias is None and not hasattr(attn2, "q_norm")
    assert attn3.qkv_proj.bias is None and hasattr(attn3, "q_norm")
    assert q2.lm_head.weight is not q2.model.embed_tokens.weight
    assert q3.lm_head.weight is q3.model.embed_tokens.weight                  # tied after loading
    assert (q3.cfg.head_dim, q3.cfg.num_key_value_heads, q3.cfg.num_attention_heads) == (32, 2, 4)


@pytest.mark.parametrize("form", ["rope_theta", "rope_parameters"])
def test_rope_theta_from_both_config_forms(tmp_path, qwen3_dir, form):
    """Old configs say `"rope_theta": x`; transformers 5 writes `"rope_parameters": {...}`."""
    theta = 37.0                                                              # far from every default
    shutil.copytree(qwen3_dir, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters"), cfg.pop("rope_scaling", None), cfg.pop("rope_theta", None)
    cfg.update({"rope_theta": theta} if form == "rope_theta" else
               {"rope_parameters": {"rope_type": "default", "rope_theta": theta}})
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_theta"] == theta                  # the reference did read it
    model = load_model(tmp_path)
    assert model.cfg.rope_theta == theta
    seqs = random_seqs([12, 7])
    ours = our_logits(model, seqs)
    torch.testing.assert_close(ours, hf_logits(hf, seqs), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, our_logits(load_model(qwen3_dir), seqs), atol=1e-3)   # theta matters


def test_cached_decode_equals_full_forward(ckpt_dir):
    """Prefill prefixes of different lengths, then decode the rest one token a step:
    the hidden state of every decoded token equals the full packed forward's."""
    model = load_model(ckpt_dir)
    cfg = model.cfg
    prefix, steps = [3, 6, 1], 5
    seqs = random_seqs([p + steps for p in prefix], seed=1)
    with torch.no_grad():
        full = model(*packed_args(seqs))                                      # (T, C)
        kv = []
        model(*packed_args([s[:p] for s, p in zip(seqs, prefix)]), kv_out=kv)
        B, L = len(seqs), max(prefix) + steps
        k_caches = [torch.zeros(B, L, cfg.num_key_value_heads, cfg.head_dim) for _ in kv]
        v_caches = [torch.zeros_like(c) for c in k_caches]
        starts = [0] + torch.tensor(prefix).cumsum(0).tolist()
        for (k, v), kc, vc in zip(kv, k_caches, v_caches):
            for b, p in enumerate(prefix):
                kc[b, :p], vc[b, :p] = k[starts[b]:starts[b] + p], v[starts[b]:starts[b] + p]
        seqlens = torch.tensor(prefix, dtype=torch.int32)
        full_starts = [0] + torch.tensor([len(s) for s in seqs]).cumsum(0).tolist()
        for step in range(steps):
            ids = torch.stack([s[p + step] for s, p in zip(seqs, prefix)])   # (B,)
            h = model.decode(ids, seqlens, k_caches, v_caches)               # (B, C)
            ref = torch.stack([full[full_starts[b] + prefix[b] + step] for b in range(B)])
            torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
            seqlens = seqlens + 1


# ----------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])                        # untied, tied
def test_save_model_loads_in_transformers(tmp_path, request, kind):
    src = request.getfixturevalue(f"{kind}_dir")
    save_model(load_model(src), tmp_path / "out", tokenizer=make_byte_tokenizer())
    names = set(json.loads((tmp_path / "out" / "config.json").read_text()))
    assert {"architectures", "rope_parameters", "head_dim", "tie_word_embeddings"} <= names
    hf_ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    hf_out = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert hf_out.config.tie_word_embeddings == (kind == "qwen3")
    seqs = random_seqs([6, 4], seed=2)
    torch.testing.assert_close(hf_logits(hf_out, seqs), hf_logits(hf_ref, seqs), atol=0, rtol=0)
    assert load_tokenizer(tmp_path / "out").eos_token_id == EOS


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])                        # q/k/v bias, QK-norm
def test_fused_projections_save_as_transformers_names(tmp_path, request, kind):
    """Our qkv_proj / gate_up_proj are written as transformers' q/k/v and gate/up tensors, and
    only those: the saved file holds exactly the source folder's names, and transformers reads
    the weights of a model we changed (each row of the fused weights different) with our logits."""
    src = request.getfixturevalue(f"{kind}_dir")
    model = load_model(src)
    assert not any(n.endswith(("q_proj.weight", "gate_proj.weight")) for n, _ in model.named_parameters())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in model.model.layers:                                      # rows no longer the source's
            for lin in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj):
                lin.weight.add_(0.1 * torch.randn(lin.weight.shape, generator=g))
                if lin.bias is not None:
                    lin.bias.add_(0.1 * torch.randn(lin.bias.shape, generator=g))
    save_model(model, tmp_path / "out")
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert saved.keys() == load_file(src / "model.safetensors").keys()         # the HF split names, only
    assert not any("qkv_proj" in k or "gate_up_proj" in k for k in saved)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    seqs = random_seqs([6, 4], seed=8)
    ours = our_logits(model, seqs)
    assert not torch.allclose(ours, our_logits(load_model(src), seqs), atol=1e-3)   # the change shows
    torch.testing.assert_close(hf_logits(hf, seqs), ours, atol=1e-5, rtol=1e-5)
    again = load_model(tmp_path / "out")                                       # and we read it back exactly
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_missing_part_of_a_fused_weight_is_named(tmp_path, qwen2_dir):
    """A folder without one of q/k/v is reported in the file's own (transformers') names."""
    shutil.copytree(qwen2_dir, tmp_path, dirs_exist_ok=True)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.1.self_attn.k_proj.bias"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"missing 1 tensors \(model\.layers\.1\.self_attn\.k_proj\.bias\)$"):
        load_model(tmp_path)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_sharded_checkpoint_loads(tmp_path, kind):
    hf = make_hf_model(kind, seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    seqs = random_seqs([7, 2], seed=3)
    torch.testing.assert_close(our_logits(load_model(tmp_path), seqs), hf_logits(hf, seqs), atol=1e-5, rtol=1e-5)


def test_load_errors(tmp_path, qwen3_dir):
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)
    shutil.copy(qwen3_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(UserError, match="no model.safetensors"):
        load_model(tmp_path)
    for key, value, msg in [("model_type", "llama", "model_type 'llama' is not supported"),
                            ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0},
                             "rope type 'yarn' is not supported"),
                            ("use_sliding_window", True, "sliding-window")]:
        cfg = json.loads((qwen3_dir / "config.json").read_text())
        cfg[key] = value
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(UserError, match=msg):
            load_model(tmp_path)


def test_tokenizer_without_eos_raises(tmp_path):
    tok = make_byte_tokenizer()
    tok.eos_token = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="has no EOS token"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- log-probs and gradients

def reference_logprobs(model, h, targets, temperature):
    return torch.log_softmax(model.lm_head(h).float() / temperature, -1).gather(-1, targets[:, None])[:, 0]


def assert_close_scaled(a, b, rel, name):
    """max |a - b| <= rel * max |b|: float noise in a sum of many terms scales with its largest."""
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} * {scale:.3g}"


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_token_logprobs_chunked_equals_plain_with_gradient(ckpt_dir):
    model = load_model(ckpt_dir)
    seqs = random_seqs(LENS, seed=4)
    ids, pos, cu, max_len = packed_args(seqs)
    targets = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(5))   # any downstream loss

    h = model(ids, pos, cu, max_len)
    ref = reference_logprobs(model, h, targets, 0.7)
    g_ref = grads(model, (ref * weights).sum())
    h = model(ids, pos, cu, max_len)
    logp, ent = model.token_logprobs(h, targets, temperature=0.7, chunk=3, with_entropy=True)   # T=18 > 3
    g_ours = grads(model, (logp * weights).sum())

    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        logp_all = torch.log_softmax(model.lm_head(h) / 0.7, -1)
        unchunked = model.token_logprobs(h, targets, temperature=0.7)
    torch.testing.assert_close(ent, -(logp_all.exp() * logp_all).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unchunked, ref.detach(), atol=1e-5, rtol=1e-5)
    assert g_ours.keys() == g_ref.keys()
    for name in g_ref:
        assert_close_scaled(g_ours[name], g_ref[name], 1e-5, name)


def test_gradient_checkpointing_same_gradients(ckpt_dir):
    model = load_model(ckpt_dir)
    seqs = random_seqs(LENS, seed=6)
    ids, pos, cu, max_len = packed_args(seqs)
    targets = torch.cat([s.roll(-1) for s in seqs])

    def loss():
        return -model.token_logprobs(model(ids, pos, cu, max_len), targets).mean()

    g_plain = grads(model, loss())
    model.gradient_checkpointing = True
    g_ckpt = grads(model, loss())
    for name in g_plain:
        assert g_plain[name].abs().sum() > 0, name                            # every parameter is reached
        assert_close_scaled(g_ckpt[name], g_plain[name], 1e-5, name)


def test_embedding_init_and_lean_load(ckpt_dir):
    """A fresh Qwen's embedding is drawn as nn.Embedding draws it (same RNG stream, same values);
    load_model builds on the meta device without that init, so it never imports torch._dynamo."""
    import subprocess
    import sys
    from pathlib import Path

    from fapo_mini.model import ModelConfig, Qwen
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, head_dim=32)
    torch.manual_seed(0)
    ours = Qwen(cfg).model.embed_tokens.weight
    torch.manual_seed(0)
    assert torch.equal(ours, torch.nn.Embedding(50, 32).weight)
    code = (f"import sys; from fapo_mini.model import load_model; load_model({str(ckpt_dir)!r}); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "False"
