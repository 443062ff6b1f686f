"""Tests for fapo_mini/sampler.py.

References: transformers' greedy `generate` (one prompt at a time), the model's own
`token_logprobs` on the packed prompt + response, hand-made distributions for top-k /
top-p, and a chi-square test on many draws for `sample_tokens`.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import EOS
from fapo_mini import slots
from fapo_mini.model import load_model
from fapo_mini.sampler import Sampler, SamplingParams, filter_logits, sample_tokens

PROMPTS = [[10, 200, 31], [7, 7, 120, 99, 1, 65, 66, 250], [42], [5, 6, 7, 8, 9]]


def run(folder_or_model, tok, prompts=PROMPTS, max_rows=256, check_every=None, **params):
    model = load_model(folder_or_model) if not isinstance(folder_or_model, torch.nn.Module) else folder_or_model
    return Sampler(model, tok, max_rows=max_rows, check_every=check_every).generate(prompts, SamplingParams(**params))


# ----------------------------------------------------------------------------- against references

def test_greedy_equals_transformers_generate(ckpt_dir, byte_tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).eval()
    samples = run(ckpt_dir, byte_tokenizer, n=2, temperature=0.0, max_new_tokens=16)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    for i, p in enumerate(PROMPTS):
        ref = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16, eos_token_id=EOS,
                          pad_token_id=EOS)[0, len(p):].tolist()
        assert len(set(ref)) > 2                                              # not one repeated token
        for s in samples[2 * i: 2 * i + 2]:
            assert s.token_ids == ref
            assert s.finish_reason == ("eos" if ref[-1] == EOS else "length")


@pytest.mark.parametrize("max_rows", [256, 3])                              # 3 slots: rows refill them
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_logprobs_equal_model_token_logprobs(ckpt_dir, byte_tokenizer, dtype, atol, max_rows):
    """The sampler's log-probs are log softmax(logits / T) before top-k / top-p: what the
    trainer recomputes on the packed prompt + response. In fp32 the cached-decode and packed
    paths differ by float noise that grows to ~1e-5 in log-prob after 12 steps at logits ~15;
    in fp64 the only rounding left is the sampler's cast of logits to fp32."""
    model = load_model(ckpt_dir, dtype=dtype)
    samples = run(model, byte_tokenizer, n=2, temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=12,
                  max_rows=max_rows)
    seqs = [PROMPTS[s.prompt_index] + s.token_ids for s in samples]
    lens = torch.tensor([len(q) for q in seqs])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    ids = torch.tensor([t for q in seqs for t in q])
    pos = torch.cat([torch.arange(n) for n in lens.tolist()])
    with torch.no_grad():
        h = model(ids, pos, cu, int(lens.max()))                              # (T, C)
        for s, start in zip(samples, cu[:-1].tolist()):
            P = len(PROMPTS[s.prompt_index])
            at = torch.arange(start + P - 1, start + P - 1 + len(s.token_ids))   # states predicting the response
            ref = model.token_logprobs(h[at], torch.tensor(s.token_ids), temperature=0.7)
            torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=atol, rtol=0)


def test_top_k_1_equals_greedy(qwen3_dir, byte_tokenizer):
    model = load_model(qwen3_dir)
    greedy = run(model, byte_tokenizer, temperature=0.0, max_new_tokens=10)
    top1 = run(model, byte_tokenizer, temperature=0.9, top_k=1, max_new_tokens=10, n=3)
    for s in top1:
        assert s.token_ids == greedy[s.prompt_index].token_ids


def test_refill_equals_one_batch(qwen2_dir, byte_tokenizer):
    model = load_model(qwen2_dir)
    one = run(model, byte_tokenizer, n=2, temperature=0.0, max_new_tokens=8)
    refill = run(model, byte_tokenizer, n=2, temperature=0.0, max_new_tokens=8, max_rows=3)   # 3 slots, 8 rows
    assert [(s.prompt_index, s.token_ids) for s in refill] == [(s.prompt_index, s.token_ids) for s in one]


def eos_from_greedy(model, tok, steps):
    """An EOS id that ends the greedy rows of PROMPTS at different steps (or not at all)."""
    free = run(model, tok, temperature=0.0, max_new_tokens=steps)
    for t in free[0].token_ids[2:]:
        ends = {s.token_ids.index(t) if t in s.token_ids else steps for s in free}
        if len(ends) >= 3:
            return t
    raise AssertionError("no token ends the greedy rows at three different steps")


@pytest.mark.parametrize("max_rows,check_every", [(256, 1), (3, 1), (3, 4), (5, 2)])
def test_slots_refill_and_compaction_equal_transformers(ckpt_dir, byte_tokenizer, max_rows, check_every,
                                                        monkeypatch):
    """Rows end on EOS at different steps, so slots free up mid-run, are refilled from the
    queue, and once it drains the live rows are compacted into smaller buckets. Each row is
    still exactly what transformers' greedy `generate` gives for its prompt alone; checking
    only every 4 or 8 steps (rows run on past their EOS, and those tokens are dropped) too."""
    model = load_model(ckpt_dir)
    eos_tok = eos_from_greedy(model, byte_tokenizer, 24)
    model.cfg.eos_token_id = [eos_tok, EOS]
    hf = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).eval()
    calls = {"fill": 0, "compact": 0}
    for name in calls:
        def counted(self, *a, _f=getattr(slots.Slots, name), _n=name, **kw):
            calls[_n] += 1
            return _f(self, *a, **kw)
        monkeypatch.setattr(slots.Slots, name, counted)
    samples = run(model, byte_tokenizer, n=2, temperature=0.0, max_new_tokens=24, max_rows=max_rows,
                  check_every=check_every)
    assert calls["compact"] >= 1 and calls["fill"] >= (2 if max_rows < 8 else 1)   # refilled, then compacted
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    reasons = set()
    for s in samples:
        p = PROMPTS[s.prompt_index]
        ref = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=24, eos_token_id=[eos_tok, EOS],
                          pad_token_id=EOS)[0, len(p):].tolist()
        assert s.token_ids == ref
        assert s.finish_reason == ("eos" if ref[-1] in (eos_tok, EOS) else "length")
        assert len(s.logprobs) == len(s.token_ids)
        reasons.add((s.finish_reason, len(s.token_ids)))
    assert len(reasons) >= 3                                                  # rows really ended apart


def test_check_every_keeps_sampled_rows(qwen3_dir, byte_tokenizer):
    """With sampling, the rows a check every 8 steps gives are the rows a check every step
    gives when no row finishes early (the same noise is drawn for the same slots)."""
    model = load_model(qwen3_dir)
    a = run(model, byte_tokenizer, n=3, temperature=1.0, max_new_tokens=10, seed=4, check_every=1)
    b = run(model, byte_tokenizer, n=3, temperature=1.0, max_new_tokens=10, seed=4, check_every=8)
    assert [(s.token_ids, s.logprobs, s.finish_reason) for s in a] == \
        [(s.token_ids, s.logprobs, s.finish_reason) for s in b]


def test_cut_key_span_agrees_with_whole_slots(ckpt_dir, byte_tokenizer, monkeypatch):
    """On the SDPA path `Slots.views` cuts each decode's keys to the longest live row + 1 (a CPU
    saving); the whole slots the GPU kernels get give the same tokens, and log-probs equal up to
    float rounding. With 3 slots rows are refilled and compacted, so the span moves both ways."""
    spans, whole_slots = [], []

    def spied(self, step, _views=slots.Slots.views):
        if whole_slots:
            self.cut_keys = False                                             # as on a GPU
        k, v = _views(self, step)
        spans.append((k[0].shape[1], self.L))
        return k, v
    monkeypatch.setattr(slots.Slots, "views", spied)
    model = load_model(ckpt_dir)
    kw = dict(n=2, temperature=1.0, max_new_tokens=12, seed=3, max_rows=3)
    cut = run(model, byte_tokenizer, **kw)
    # step 0: slots hold prompts 0, 0, 1 (3, 3 and 8 tokens); the longest attends to its 8 + 1 keys
    assert spans[0] == (9, 8 + 12) and all(s <= L for s, L in spans)
    cut_spans, spans[:] = list(spans), []
    whole_slots.append(True)
    whole = run(model, byte_tokenizer, **kw)
    assert all(s == L for s, L in spans) and len(spans) == len(cut_spans)
    assert sum(s for s, _ in cut_spans) < 0.8 * sum(L for _, L in spans)      # the cut really is smaller
    for a, b in zip(cut, whole):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_cache_bytes_is_the_dense_slot_cache(qwen2_dir, byte_tokenizer):
    model = load_model(qwen2_dir)
    sampler = Sampler(model, byte_tokenizer, max_rows=5)
    sampler.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=7))
    c = model.cfg
    slots, L = 5, max(map(len, PROMPTS)) + 7                                   # min(max_rows, rows), prompt + new
    assert sampler.cache_bytes == 2 * c.num_hidden_layers * slots * L * c.num_key_value_heads * c.head_dim * 4


# ----------------------------------------------------------------------------- stopping

@pytest.mark.parametrize("max_rows,check_every", [(256, 1), (2, 5)])   # rows run past the stop, then are cut
def test_stop_string_cuts_at_first_occurrence(qwen3_dir, byte_tokenizer, max_rows, check_every):
    model = load_model(qwen3_dir)
    free = run(model, byte_tokenizer, temperature=0.0, max_new_tokens=40)
    # a stop string the greedy output of prompt 1 is known to contain: two ASCII bytes in a row
    toks = free[1].token_ids
    i = next(i for i in range(5, len(toks) - 1) if 32 <= toks[i] < 127 and 32 <= toks[i + 1] < 127)
    stop = bytes(toks[i:i + 2]).decode()
    cut = next(j for j in range(len(toks)) if stop in byte_tokenizer.decode(toks[:j + 1]))   # first occurrence

    stopped = run(model, byte_tokenizer, temperature=0.0, max_new_tokens=40, stop=(stop, "never seen \x01"),
                  check_every=check_every, max_rows=max_rows)
    s = stopped[1]
    assert s.finish_reason == "stop"
    assert s.token_ids == toks[:cut + 1]
    assert s.text.endswith(stop) and s.text.count(stop) == 1
    for other, ref in zip(stopped, free):                                     # rows without the string run on
        if stop not in ref.text:
            assert other.token_ids == ref.token_ids and other.finish_reason == ref.finish_reason


def test_stop_candidates_cover_split_characters(qwen3_dir, byte_tokenizer):
    """Only rows whose last token could complete a stop string are decoded: tokens holding
    the stop's last character, and pieces of a character split over tokens (here every byte
    >= 0x80, each alone decoding to U+FFFD), so a stop such as "é" (c3 a9) is not missed."""
    sampler = Sampler(load_model(qwen3_dir), byte_tokenizer)
    assert sampler._stop_candidates(("ab",)).nonzero()[:, 0].tolist() == [ord("b")] + list(range(128, 256))
    assert sampler._stop_candidates(("é", "x")).nonzero()[:, 0].tolist() == \
        [ord("x")] + list(range(128, 256)) + [EOS]                            # "<|endoftext|>" holds an x


def test_eos_stops_a_row_and_max_new_tokens_gives_length(qwen2_dir, byte_tokenizer):
    model = load_model(qwen2_dir)
    free = run(model, byte_tokenizer, temperature=0.0, max_new_tokens=20)
    assert all(s.finish_reason == "length" and len(s.token_ids) == 20 for s in free)
    # make a token that prompt 0's greedy output produces at step k the EOS
    eos_tok = free[0].token_ids[6]
    k = free[0].token_ids.index(eos_tok)
    model.cfg.eos_token_id = [eos_tok, EOS]
    stopped = run(model, byte_tokenizer, temperature=0.0, max_new_tokens=20)
    assert stopped[0].finish_reason == "eos" and stopped[0].token_ids == free[0].token_ids[:k + 1]
    for s, ref in zip(stopped, free):
        if eos_tok in ref.token_ids:
            k = ref.token_ids.index(eos_tok)
            assert (s.finish_reason, s.token_ids) == ("eos", ref.token_ids[:k + 1])
        else:
            assert (s.finish_reason, s.token_ids) == ("length", ref.token_ids)
    assert any(s.finish_reason == "length" for s in stopped)                  # finished rows left, others went on


# ----------------------------------------------------------------------------- randomness

def test_seed_reproducible(qwen3_dir, byte_tokenizer):
    model = load_model(qwen3_dir)
    a = run(model, byte_tokenizer, n=3, temperature=1.0, max_new_tokens=10, seed=1)
    b = run(model, byte_tokenizer, n=3, temperature=1.0, max_new_tokens=10, seed=1)
    c = run(model, byte_tokenizer, n=3, temperature=1.0, max_new_tokens=10, seed=2)
    assert [(s.token_ids, s.logprobs) for s in a] == [(s.token_ids, s.logprobs) for s in b]
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    assert len({tuple(s.token_ids) for s in a[:3]}) > 1                       # the n samples of a prompt differ


def chi_square(counts, probs):
    expected = counts.sum() * probs
    keep = probs > 0
    assert counts[~keep].sum() == 0, "drew a token of probability zero"
    return (((counts - expected)[keep] ** 2) / expected[keep]).sum().item()


@pytest.mark.parametrize("temperature,top_k,top_p,expected", [
    (1.0, 0, 1.0, [0.4, 0.3, 0.15, 0.1, 0.05]),
    (0.5, 0, 1.0, [16 / 28.5, 9 / 28.5, 2.25 / 28.5, 1 / 28.5, 0.25 / 28.5]),   # p^(1/T), normalised
    (1.0, 2, 1.0, [4 / 7, 3 / 7, 0, 0, 0]),
    (1.0, 0, 0.75, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),               # 0.4 + 0.3 < 0.75: keep a third
])
def test_sample_tokens_distribution(temperature, top_k, top_p, expected):
    probs = torch.tensor([0.15, 0.4, 0.05, 0.3, 0.1])                         # shuffled, so order matters
    order = torch.tensor([1, 3, 0, 4, 2])                                     # probs[order] = 0.4, 0.3, ...
    N = 40000
    logits = probs.log().expand(N, -1).contiguous()                           # (N, V)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    tok, logp = sample_tokens(logits, params, torch.Generator().manual_seed(0))
    counts = torch.bincount(tok, minlength=5)[order].double()
    stat = chi_square(counts, torch.tensor(expected, dtype=torch.double))
    assert stat < 20.5                                                        # chi2(df=4) 99.96% quantile
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, tok[:, None])[:, 0]   # before filtering
    torch.testing.assert_close(logp, ref)


# ----------------------------------------------------------------------------- filtering and errors

def kept(logits, **kw):
    return torch.isfinite(filter_logits(logits, **kw))[0]


def test_filter_logits_top_p_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    logits = probs.log()
    assert kept(logits, top_p=0.75).tolist() == [False, True, False, True]
    assert kept(logits, top_p=0.81).sum() == 3 and kept(logits, top_p=0.81)[[1, 3]].all()
    assert kept(logits, top_p=0.5).tolist() == [False, True, False, False]
    assert kept(logits, top_p=1.0).all()
    dyadic = torch.tensor([[0.125, 0.5, 0.125, 0.25]]).log()                 # exact in binary: p = 0.75 is reached by 2
    assert kept(dyadic, top_p=0.75).tolist() == [False, True, False, True]
    assert kept(logits, top_k=2).tolist() == [False, True, False, True]
    assert kept(logits, top_k=10).all()
    assert kept(logits, top_k=3, top_p=0.6).tolist() == [False, True, False, True]
    two_rows = filter_logits(torch.cat([logits, logits.flip(-1)]), top_p=0.75)   # rows are independent
    assert torch.isfinite(two_rows).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_filter_logits_top_p_exact_boundary():
    """0.5 + 0.3 reaches p = 0.8, so the nucleus is 2 tokens. (A regression test: the
    form `probs.cumsum(-1) - probs` computes 0.9 - 0.1 = 0.79999995 in fp32 and kept a third.)"""
    logits = torch.tensor([[0.1, 0.5, 0.1, 0.3]]).log()
    assert kept(logits, top_p=0.8).tolist() == [False, True, False, True]


@pytest.mark.parametrize("bad", [dict(n=0), dict(max_new_tokens=0), dict(temperature=-0.1), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-1)])
def test_bad_params_raise(bad):
    with pytest.raises(ValueError, match="must be >= 1|need temperature >= 0"):
        SamplingParams(**bad)


def test_bad_prompts_raise(qwen3_dir, byte_tokenizer):
    sampler = Sampler(load_model(qwen3_dir), byte_tokenizer)
    for prompts in ([], [[1, 2], []]):
        with pytest.raises(ValueError, match="at least one token"):
            sampler.generate(prompts, SamplingParams())
