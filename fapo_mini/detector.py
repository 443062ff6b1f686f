"""The flaw detector: a GenRM run on the policy's correct rollouts during training.

Why this file exists: FAPO asks a generative reward model whether each correct rollout
is a flawed positive (docs/method.md §1, §3). genrm.py holds everything about the GenRM
that is plain text; this file holds the part that loads a model and samples from it:
the GenRM's own weights, on the policy's device, behind our batched sampler, with its
own torch.Generator (checkpointed with the trainer's RNG states, so a resumed run with
a sampling GenRM continues exactly). A greedy GenRM (temperature 0, the default) critiques
each distinct (prompt, response) once: a group's correct rollouts are often the same text,
and a greedy critique is a function of its input.

What it simplifies away: no separate inference server and no weight sharing with the
policy (the GenRM is a second, frozen model in the same process); one verdict per
rollout (no voting); a cut-off or unparsable critique counts as NOT flawed.
Data sets with a prompt of their own (the toy world's compact listing) plug in through
`prompts`, keyed by the row's `data_source`; every other row gets the authors'
policy-time prompt through the GenRM's chat template.
"""
from typing import Callable

from fapo_mini.genrm import NO_ERROR, policy_critic_prompt, policy_verdict


class FlawDetector:
    """Runs a GenRM on correct rollouts: detector(rows, responses) -> (flawed, n_invalid).

    `prompts` maps a row's `data_source` to `fn(row, response) -> str`, the text sent to the
    GenRM as is (no chat template); other rows get POLICY_CRITIC_TEMPLATE. A verdict that does
    not parse counts as NOT flawed (docs/method.md §3) and is counted in n_invalid.
    """

    def __init__(self, model_dir, device, max_new_tokens=256, temperature=0.0, trust_remote_code=False,
                 max_rows=256, prompts: dict[str, Callable[[dict, str], str]] | None = None):
        import torch
        from fapo_mini.model import load_model, load_tokenizer
        from fapo_mini.sampler import Sampler, SamplingParams
        self.tok = load_tokenizer(model_dir, trust_remote_code)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32   # inference only
        self.sampler = Sampler(load_model(model_dir, device, dtype).eval(), self.tok, max_rows=max_rows)
        self.params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.prompts = dict(prompts or {})
        self.critiqued = 0                          # critiques generated so far (distinct texts when greedy)

    def prompt(self, row: dict, response: str) -> str:
        own = self.prompts.get(row.get("data_source"))
        if own is not None:
            return own(row, response)
        p = row["prompt"]
        # the authors send the raw question (extra_info.question) when there is one, not the prompt with its suffix
        problem = (row.get("extra_info") or {}).get("question") or (
            p if isinstance(p, str) else [m for m in p if m["role"] == "user"][-1]["content"])
        text = policy_critic_prompt(problem, row["reward_model"]["ground_truth"], response)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def __call__(self, rows, responses):
        if not rows:
            return [], 0
        texts = [self.prompt(r, s) for r, s in zip(rows, responses)]
        greedy = self.params.temperature == 0                # greedy: one critique per distinct text
        unique = list(dict.fromkeys(texts)) if greedy else texts
        ids = [self.tok.encode(t, add_special_tokens=False) for t in unique]
        self.critiqued += len(ids)
        verdicts = [policy_verdict(s.text) for s in self.sampler.generate(ids, self.params, self.generator)]
        if greedy:                                           # back from distinct texts to rollouts
            of_text = dict(zip(unique, verdicts))
            verdicts = [of_text[t] for t in texts]
        return [v is not None and v != NO_ERROR for v in verdicts], sum(v is None for v in verdicts)
