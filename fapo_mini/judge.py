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

Simplified away: one verdict per rollout (no voting); a cut-off or unparsable critique
counts as NOT flawed (docs/method.md §3) and is counted in `invalid` (and a cut one in `cut`:
when many are, the judge's token cap is too small and FAPO is quietly turning into GRPO).
"""
from dataclasses import dataclass

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
    cut: int = 0                # critiques cut at max_new_tokens (so invalid, unless a verdict came before the cut)
    critiques: int = 0          # critiques generated (distinct texts for a greedy GenRM)


class OracleJudge:
    """Flawed iff the task's oracle finds a wrong step. Every row's task must have one (checked
    by the caller before step 1)."""

    def __call__(self, rows: list[dict], responses: list[str]) -> Verdicts:
        return Verdicts([task_of(r).first_error(r, s) != -1 for r, s in zip(rows, responses)])


class GenRMJudge:
    """A GenRM model folder, sampled with our Sampler: judge(rows, responses) -> Verdicts.
    A wave decodes at most `max_rows` critiques, and with `cache_tokens` at most as many as fit a
    KV cache of that many positions (the longest critic prompt + max_new_tokens each).
    `cuda_graphs` replays its decode steps as CUDA graphs, as the policy's sampler does (GPU only)."""

    def __init__(self, model_dir, device, max_new_tokens=256, temperature=0.0, trust_remote_code=False,
                 max_rows=256, cache_tokens=0, cuda_graphs=False):
        import torch
        from fapo_mini.model import load_model, load_tokenizer
        from fapo_mini.sampler import Sampler, SamplingParams
        self.tok = load_tokenizer(model_dir, trust_remote_code)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32   # inference only
        self.sampler = Sampler(load_model(model_dir, device, dtype).eval(), self.tok, max_rows=max_rows,
                               cuda_graphs=cuda_graphs)
        self.params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.max_rows, self.cache_tokens = max_rows, cache_tokens

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
        if self.cache_tokens:          # a wave's KV cache is rows x (longest prompt + max_new_tokens) positions
            per_row = max(map(len, ids)) + self.params.max_new_tokens
            self.sampler.max_rows = max(1, min(self.max_rows, self.cache_tokens // per_row))
        samples = self.sampler.generate(ids, self.params, self.generator)
        verdicts = [(policy_verdict(s.text), s.finish_reason == "length") for s in samples]
        if greedy:                                           # back from distinct texts to rollouts
            of_text = dict(zip(unique, verdicts))
            verdicts = [of_text[t] for t in texts]
        return Verdicts([v is not None and v != NO_ERROR for v, _ in verdicts], sum(v is None for v, _ in verdicts),
                        sum(cut for _, cut in verdicts), len(ids))
