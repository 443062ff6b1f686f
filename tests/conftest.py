"""Shared fixtures: tiny random Qwen2 / Qwen3 checkpoints and a byte-level tokenizer.

Why this file exists: the model, attention and sampler tests check our code against
transformers, so they need real Hugging Face checkpoint folders. We make them here with
transformers' own `save_pretrained` (nothing is downloaded), once per test session:

  qwen2_dir  Qwen2Config: q/k/v bias, untied head, GQA (4 query heads, 2 KV heads), head_dim 16
  qwen3_dir  Qwen3Config: QK-norm, tied head, GQA, explicit head_dim 32 (!= hidden / heads)

Every parameter is redrawn with a large spread (biases and norm weights included: their
defaults, 0 and 1, would hide a missing bias or a skipped norm) so that greedy outputs
are not one repeated token. The tokenizer has one token per byte plus <|endoftext|> (id
256, the EOS), so any text round-trips and token i < 256 is byte i.
"""
import multiprocessing
import os
import socket
import traceback

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from fapo_mini.byte_tokenizer import make_tokenizer

EOS = 256
VOCAB = 257

# Tiny matrices: one thread is fastest, and it does not collapse when other processes
# share the cores (two spinning OpenMP threads on a busy 2-core machine run ~10x slower).
torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_process(target, rank, port, args):
    try:
        target(rank, port, *args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)       # a forked child must not run pytest's teardown


def fork_ranks(target, world_size, *args, timeout=60) -> list:
    """Run target(rank, port, *args) in world_size forked CPU processes (gloo ranks: the caller
    sets the torchrun variables it needs from rank and port); returns their exit codes, 0 where
    target returned, 1 where it raised (its traceback printed), -9 where it hung past `timeout`."""
    port, ctx = free_port(), multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_process, args=(target, r, port, args)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        if p.exitcode is None:          # hung: kill it, so the test fails instead of waiting at exit
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def make_byte_tokenizer():
    """One token per byte, <|endoftext|> = 256 as EOS and pad."""
    return make_tokenizer()


def tiny_config(kind, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, eos_token_id=EOS, bos_token_id=None,
                  pad_token_id=EOS, initializer_range=0.3)
    if kind == "qwen2":
        return Qwen2Config(**{**common, "tie_word_embeddings": False, **overrides})
    return Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True, **overrides})


def make_hf_model(kind, seed=0, **overrides):
    """A random transformers model; weights and biases ~ N(0, 0.3), norm weights ~ 1 + N(0, 0.3)."""
    torch.manual_seed(seed)
    cfg = tiny_config(kind, **overrides)
    model = (Qwen2ForCausalLM if kind == "qwen2" else Qwen3ForCausalLM)(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()


def _checkpoint(tmp_path_factory, kind):
    folder = tmp_path_factory.mktemp(kind)
    make_hf_model(kind).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "qwen3")


@pytest.fixture(params=["qwen2", "qwen3"])
def ckpt_dir(request):
    """Both checkpoint kinds, one after the other."""
    return request.getfixturevalue(f"{request.param}_dir")
