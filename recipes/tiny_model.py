"""A random tiny model folder with the architecture of a real recipe model, for dry runs.

Why this file exists: the recipes are written for Qwen2.5-Math-1.5B (policy) and
Qwen3-4B-Instruct-2507 (GenRM) on a GPU node, which the machines this project is built
on cannot reach. `DRY_RUN=1` runs each recipe's full code path on CPU with a folder made
here instead: the same model class and the same architecture switches as the real
checkpoint, with tiny sizes, so shape, template and config mistakes show up before
anyone rents a node.

    --like qwen2   Qwen2.5-Math-1.5B's switches: q/k/v bias, GQA, tied head, rope_theta 1e4,
                   4096 positions, EOS = <|endoftext|> (a base model)
    --like qwen2-untied   Qwen2.5-Math-7B's: the same, with its own lm_head (no tie)
    --like qwen3   Qwen3-4B-Instruct-2507's switches: QK-norm, no bias, GQA, head_dim != hidden /
                   heads, tied head, rope_theta 5e6, EOS = <|im_end|> (a chat model)

The tokenizer is the byte-level one the project makes its own models with (fapo_mini.byte_tokenizer: one
token per byte, <|endoftext|> = 256) plus Qwen's chat markers <|im_start|> (257) and
<|im_end|> (258) and a ChatML chat template like Qwen's, so `prompt_text` goes through
`apply_chat_template` exactly as with the real tokenizer.

Simplified away: Qwen's default system turn, tool calls and thinking tags in the
template; the real vocabulary. Weights are random (transformers' own init) and saved in
bf16, as the hub checkpoints are.

    python -m recipes.tiny_model --like qwen2 --out /tmp/tiny_policy
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from fapo_mini.byte_tokenizer import make_tokenizer

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# ChatML, Qwen's format: <|im_start|>{role}\n{content}<|im_end|>\n per message, then the assistant header
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# the real checkpoint's architecture switches; sizes are tiny
LIKE = {
    "qwen2": dict(config=Qwen2Config, eos=ENDOFTEXT, head_dim=None, rope_theta=1e4, max_positions=4096, tied=True),
    "qwen2-untied": dict(config=Qwen2Config, eos=ENDOFTEXT, head_dim=None, rope_theta=1e4, max_positions=4096,
                         tied=False),
    "qwen3": dict(config=Qwen3Config, eos=IM_END, head_dim=32, rope_theta=5e6, max_positions=262144, tied=True),
}


def make_chat_tokenizer(eos: str, max_length: int):
    """Byte-level tokenizer + <|im_start|>, <|im_end|> + ChatML template; `eos` is its EOS token."""
    tok = make_tokenizer(model_max_length=max_length)
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.eos_token = eos
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny(like: str, out, seed: int = 0):
    """Write a random tiny model folder (config.json, model.safetensors, tokenizer files) to `out`."""
    if like not in LIKE:
        raise ValueError(f"--like must be one of {sorted(LIKE)}, got {like!r}")
    spec = LIKE[like]
    tok = make_chat_tokenizer(spec["eos"], spec["max_positions"])
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    if spec["head_dim"]:
        sizes["head_dim"] = spec["head_dim"]
    cfg = spec["config"](
        vocab_size=len(tok), **sizes, tie_word_embeddings=spec["tied"], max_position_embeddings=spec["max_positions"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
        bos_token_id=tok.convert_tokens_to_ids(ENDOFTEXT), eos_token_id=tok.eos_token_id,
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--like", required=True, choices=sorted(LIKE), help="architecture to copy")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make_tiny(args.like, args.out, args.seed)
    print(f"tiny {args.like} model -> {args.out}")


if __name__ == "__main__":
    main()
