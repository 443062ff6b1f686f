"""Judges: who says whether a correct rollout is a flawed positive.

Why this file exists: FAPO's reward needs one bit per correct rollout, "flawed or not"
(docs/method.md §1, §4), and there are several ways to get it, all called the same way,
judge(rows, responses) -> Verdicts:
  * GenRMJudge: a GenRM sampled in this process (the paper's method);
  * OracleJudge: the task's exact step checker (fapo_mini/tasks.py), where a task has one:
    an upper bound on what a GenRM could do.

GenRMJudge loads the GenRM's own weights on the policy's device behind our batched sampler,
with its own torch.Generator (checkpointed with the trainer's RNG states, so a resumed run
with a sampling GenRM continues exactly). A greedy GenRM (temperature 0, the default)
critiques each distinct (prompt, response) once: a group's correct rollouts are often the
same text, and a greedy critique is a function of its input. The prompt is the row's task's
(`Task.critic_prompt`), through the GenRM's chat template unless the task says not.

Memory: a wave's KV cache is dense, one slot of (longest critic prompt + the critique cap)
positions per critique (fapo_mini/slots.py), and the first slots' prompts are prefilled together,
so waves are sized by bytes, not rows: as many slots, with their share of that prefill, as fit
`cache_gb` GiB (default: half the memory free on the judge's device at that call), at most
`max_rows` (`wave_plan`). The critique cap is `max_new_tokens` (16384 by default, the authors')
unless the GenRM's context window or the budget cannot hold one slot that long; then it is what
fits, with one warning. The automatic budget follows free memory, so waves can differ between runs: give
`cache_gb` for a run that must repeat exactly.

Simplified away: one verdict per rollout (no voting); a cut-off or unparsable critique
counts as NOT flawed (docs/method.md §3) and is counted in `invalid` (and a cut one in `truncated`:
when many are, the judge's token cap is too small and FAPO is quietly turning into GRPO).
"""
import os
import warnings
from dataclasses import dataclass, replace

from fapo_mini.errors import UserError
from fapo_mini.genrm import NO_ERROR, policy_verdict
from fapo_mini.tasks import task_of


class JudgeUnavailable(UserError):
    """A judge that cannot answer (a served GenRM that stays unreachable): the run saves what it
    has and ends with this one line."""


@dataclass
class Verdicts:
    flawed: list[bool]          # one per judged rollout
    invalid: int = 0            # critiques that did not parse (counted as not flawed)
    truncated: int = 0          # critiques cut at the token cap (so invalid, unless a verdict came before the cut)
    critiques: int = 0          # critiques generated (distinct texts for a greedy GenRM)


class OracleJudge:
    """Flawed iff the task's oracle finds a wrong step. Every row's task must have one (checked
    by the caller before step 1)."""

    def __call__(self, rows: list[dict], responses: list[str]) -> Verdicts:
        return Verdicts([task_of(r).first_error(r, s) != -1 for r, s in zip(rows, responses)])


AUTO_SHARE = 0.5      # the automatic KV budget: this share of the memory free at the call


def free_bytes(device) -> int:
    """Memory the judge's device has free now: on CUDA what the driver reports plus what torch's
    allocator holds unused; on CPU the kernel's MemAvailable (Linux), else the free pages, and
    no more than the container's cgroup (v2) allows."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                free = min(free, int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return free


def wave_plan(longest_prompt: int, max_new: int, window: int, position_bytes: int, prefill_bytes: int,
              budget: float, max_rows: int) -> tuple[int, int]:
    """(critique cap, slots per wave) for one judge call. A slot costs its cache, longest_prompt + cap
    positions of position_bytes each, plus its prompt's share of the first fill's packed prefill,
    longest_prompt tokens of prefill_bytes each (every layer's K/V before they are copied into the
    slots, and one layer's activations: Slots.fill). The cap is max_new unless the model's window
    or the budget cannot hold one such slot (then what fits, at least 1 token); slots: as many as
    the budget holds, at least 1, at most max_rows."""
    room = int((budget - longest_prompt * prefill_bytes) // position_bytes) - longest_prompt   # cap one slot allows
    cap = max(1, min(max_new, window - longest_prompt, room))
    slot = (longest_prompt + cap) * position_bytes + longest_prompt * prefill_bytes
    return cap, max(1, min(max_rows, int(budget // slot)))


class GenRMJudge:
    """A GenRM model folder, sampled with our Sampler: judge(rows, responses) -> Verdicts.
    Each call's waves: `wave_plan` with a KV budget of `cache_gb` GiB (0: AUTO_SHARE of the memory
    free then). `cuda_graphs` replays its decode steps as CUDA graphs, as the policy's sampler
    does (GPU only)."""

    def __init__(self, model_dir, device, max_new_tokens=16384, temperature=0.0, trust_remote_code=False,
                 max_rows=256, cache_gb=0.0, cuda_graphs=False):
        import torch
        from fapo_mini.model import load_model, load_tokenizer
        from fapo_mini.sampler import Sampler, SamplingParams
        self.tok = load_tokenizer(model_dir, trust_remote_code)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32   # inference only
        model = load_model(model_dir, device, dtype).eval()
        self.sampler = Sampler(model, self.tok, max_rows=max_rows, cuda_graphs=cuda_graphs)
        self.params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.device, self.max_rows, self.cache_gb = device, max_rows, cache_gb
        cfg = model.cfg   # K and V of every layer, in the cache's dtype (the model's)
        self.position_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * dtype.itemsize
        # a prefilled token: its K/V of every layer, and one layer's widest activations (the residual
        # and its norm, 2 x hidden; the fused gate/up output, silu(gate) and their product, 4 x MLP width)
        self.prefill_bytes = self.position_bytes + (2 * cfg.hidden_size + 4 * cfg.intermediate_size) * dtype.itemsize
        self.window = cfg.max_position_embeddings
        self.warned = False

    def prompt(self, row: dict, response: str) -> str:
        task = task_of(row)
        text = task.critic_prompt(row, response)
        if task.chat_template and getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def __call__(self, rows: list[dict], responses: list[str]) -> Verdicts:
        if not rows:
            return Verdicts([])
        texts = [self.prompt(r, s) for r, s in zip(rows, responses)]
        greedy = self.params.temperature == 0                # greedy: one critique per distinct text
        unique = list(dict.fromkeys(texts)) if greedy else texts
        ids = [self.tok.encode(t, add_special_tokens=False) for t in unique]
        longest = max(map(len, ids))
        budget = self.cache_gb * 2**30 if self.cache_gb else AUTO_SHARE * free_bytes(self.device)
        cap, self.sampler.max_rows = wave_plan(longest, self.params.max_new_tokens, self.window, self.position_bytes,
                                               self.prefill_bytes, budget, self.max_rows)
        if cap < self.params.max_new_tokens and not self.warned:
            warnings.warn(f"GenRM judge: critiques capped at {cap} new tokens, not {self.params.max_new_tokens}: "
                          f"a {longest}-token critic prompt and the context window ({self.window}) or the KV "
                          f"budget ({budget / 2**30:.3g} GiB) leave no more; a cut critique counts as not flawed")
            self.warned = True
        samples = self.sampler.generate(ids, replace(self.params, max_new_tokens=cap), self.generator)
        verdicts = [(policy_verdict(s.text), s.finish_reason == "length") for s in samples]
        if greedy:                                           # back from distinct texts to rollouts
            of_text = dict(zip(unique, verdicts))
            verdicts = [of_text[t] for t in texts]
        return Verdicts([v is not None and v != NO_ERROR for v, _ in verdicts], sum(v is None for v, _ in verdicts),
                        sum(cut for _, cut in verdicts), len(ids))
