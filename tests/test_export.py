"""Saved model folders carry generation_config.json, and the sampler stops on all its EOS ids.

The tiny checkpoints here are shaped like Qwen's chat models: config.json and the tokenizer
say EOS = <|endoftext|>, and only generation_config.json lists <|im_end|>, the token that
ends an assistant turn. transformers is the reference twice: it must read our saved folder
with the source's GenerationConfig, and its own `generate` must stop where our sampler does.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from conftest import make_hf_model
from fapo_mini.model import load_model, save_model
from fapo_mini.sampler import Sampler, SamplingParams
from recipes.tiny_model import ENDOFTEXT, IM_END, make_chat_tokenizer

PROMPT = [97, 61, 55, 10]   # "a=7\n"


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def chat_dir(request, tmp_path_factory):
    """A tiny random model with a chat tokenizer and Qwen-Instruct-like generation defaults."""
    tok = make_chat_tokenizer(ENDOFTEXT, 1024)
    folder = tmp_path_factory.mktemp(f"chat_{request.param}")
    make_hf_model(request.param, vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    eos = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)]
    GenerationConfig(bos_token_id=eos[1], pad_token_id=eos[1], eos_token_id=eos, do_sample=True,
                     temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05).save_pretrained(folder)
    return folder, tok, eos


def force(model, token):
    """Make `token` the argmax of every next-token distribution (a huge lm_head bias)."""
    def hook(_module, _inputs, logits):
        return logits.index_add(-1, torch.tensor([token]), torch.full((*logits.shape[:-1], 1), 1e4,
                                                                      dtype=logits.dtype))
    return model.lm_head.register_forward_hook(hook)


def test_saved_folder_keeps_the_generation_config(chat_dir, tmp_path):
    src, tok, _ = chat_dir
    save_model(load_model(src), tmp_path / "out", tok)
    want = GenerationConfig.from_pretrained(src)
    assert GenerationConfig.from_pretrained(tmp_path / "out") == want
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert hf.generation_config == want and hf.generation_config.eos_token_id == want.eos_token_id


def test_no_generation_config_is_invented(qwen2_dir, byte_tokenizer, tmp_path):
    model = load_model(qwen2_dir)
    model.generation_config = None                 # a source folder without generation_config.json
    save_model(model, tmp_path / "out", byte_tokenizer)
    assert not (tmp_path / "out" / "generation_config.json").exists()


def test_generation_stops_on_every_listed_eos(chat_dir, tmp_path):
    src, tok, eos = chat_dir
    save_model(load_model(src), tmp_path / "out", tok)
    ours, hf = load_model(tmp_path / "out"), AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                                                  dtype=torch.float32)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5)
    for token in eos:                              # <|im_end|> (generation_config.json only), <|endoftext|>
        h1, h2 = force(ours, token), force(hf, token)
        [s] = Sampler(ours, tok).generate([PROMPT], greedy)
        ref = hf.generate(torch.tensor([PROMPT]), max_new_tokens=5, do_sample=False)[0, len(PROMPT):]
        h1.remove(), h2.remove()
        assert (s.token_ids, s.finish_reason) == ([token], "eos") and ref.tolist() == [token]
    # the control: without generation_config.json, <|im_end|> does not end the row
    ours.generation_config = None
    with_im_end = force(ours, eos[0])
    [s] = Sampler(ours, tok).generate([PROMPT], greedy)
    with_im_end.remove()
    assert (s.token_ids, s.finish_reason) == ([eos[0]] * 5, "length")
