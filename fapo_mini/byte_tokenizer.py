"""A tokenizer with one token per byte, for models this project makes itself.

Why this file exists: the toy world's models, the tests' tiny random Qwen checkpoints and
the recipes' dry-run models need a real Hugging Face tokenizer without a download. One
token per byte round-trips any text, and token id i < 256 is byte i.
"""

EOS = "<|endoftext|>"


def make_tokenizer(model_max_length: int = 1024):
    """Byte-level BPE with no merges (token id = byte value) plus `<|endoftext|>` (id 256) as eos and pad.

    Why not a char vocabulary: transformers 5 may rebuild a tokenizer as Qwen2Tokenizer
    from config.json's model_type, re-applying Qwen's byte-level pre-tokenization; a
    char vocabulary then silently loses its spaces. Byte-level BPE with no merges gives
    the same ids whichever class loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's byte -> printable-unicode map, which ByteLevel (pre-tokenizer and decoder) uses
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    vocab = {chr(b if b in printable else next(extra)): b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, model_max_length=model_max_length)
