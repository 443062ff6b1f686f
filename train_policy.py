"""RL for the policy: GRPO (--lam 0) or FAPO (--lam 1), one process or DDP under torchrun.

    python train_policy.py --model DIR --data train.jsonl --out runs/fapo --judge genrm --genrm GENRM_DIR
    torchrun --nproc_per_node=8 train_policy.py ...        # one node, DDP (nccl on GPU, gloo on CPU)
    torchrun --nproc_per_node=8 train_policy.py --fsdp ... # one node, FSDP2 (a 7B policy)
    torchrun --nnodes=N --node-rank=R --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \
        --rdzv-id=RUN train_policy.py ...                   # node R of N (run on every node)

One step (docs/method.md §4 and §6; the loop itself is fapo_mini/rl.py, shared with train_genrm.py):
  1. each rank samples n rollouts for its shard of prompts with the live policy;
  2. outcome: +1 if the final answer is right, -1 if not (the row's task: fapo_mini/tasks.py);
  3. only the CORRECT rollouts go to the judge, which says whether each is flawed:
       --judge genrm   the GenRM (the paper's method): a model folder loaded on every rank (--genrm DIR),
                       or an OpenAI-compatible server of it (--genrm-url URL, as the authors run theirs)
       --judge oracle  the task's exact step checker, where it has one (the toy world; an upper bound)
       --judge none    nobody: plain GRPO rewards (flawed positives are still measured);
  4. r = outcome - lam * flawed (FAPO), group advantages, PPO-clip update.
Where the rows' task has an exact oracle (the toy world) its flawed-positive ratio is always
logged (`fp_ratio`, over the correct rollouts of such rows when the data mixes sources), whatever the judge;
`judge_fp_ratio` is the GenRM's view whenever --genrm is given (with --judge none or oracle it
is measured only, as the paper tracks its GenRM beside a GRPO run). With --eval-data FILE
--eval-every K the policy is scored on held-out rows every K steps and after the last, at the
paper's evaluation settings by default (avg@4 at temperature 1.0, top-p 0.7): eval/accuracy,
eval/pass@k, eval/response_len, eval/fp_ratio (where the task has an oracle), eval/judge_fp_ratio
(with --genrm); the numbers rollout.py gives on that step's checkpoint with the same settings.
"""
import argparse
import math

import torch

from fapo_mini import dist, flags, grpo, rl
from fapo_mini.errors import UserError, cli
from fapo_mini.judge import GenRMJudge, OracleJudge
from fapo_mini.served_judge import ServedJudge
from fapo_mini.preflight import check_eval_inputs, check_flags, check_ground_truths, check_run_inputs
from fapo_mini.scoring import policy_counts
from fapo_mini.tasks import is_correct, task_of

# this command's own flags, checked before any work (the shared ones: preflight.TRAINER_RANGES)
RANGES = (("lam", lambda v: v >= 0, ">= 0 (0 = GRPO)"),
          ("genrm_max_new_tokens", lambda v: v >= 1, ">= 1"),
          ("genrm_max_rows", lambda v: v >= 1, ">= 1"),
          ("genrm_cache_gb", lambda v: math.isfinite(v) and v >= 0, ">= 0 (0 = half the memory free at each judge call)"),
          ("genrm_temperature", lambda v: v >= 0, ">= 0 (0 = greedy)"),
          ("genrm_concurrency", lambda v: v >= 1, ">= 1"),
          ("genrm_timeout", lambda v: v > 0, "> 0"),
          ("genrm_retries", lambda v: v >= 0, ">= 0"))


def make_reward_fn(lam: float, judge, genrm, oracle):
    """reward_fn(rows, samples) -> (rewards (N,), counts) for rl.train (docs/method.md §4):
    verify every rollout, ask `judge` about the correct ones, r = outcome - lam * flawed.
    `genrm` (a GenRMJudge or None) is also measured when it is not the judge (judge_fp_ratio);
    `oracle` (an OracleJudge or None, when the data's tasks have one) gives fp_ratio, counted
    over the correct rollouts of rows whose task has an oracle."""
    def reward_fn(rows, samples):
        rows = [rows[s.prompt_index] for s in samples]
        responses = [s.text for s in samples]
        correct = [is_correct(r, text) for r, text in zip(rows, responses)]
        pos = [i for i, c in enumerate(correct) if c]
        pos_rows, pos_text = [rows[i] for i in pos], [responses[i] for i in pos]
        counts = {"accuracy": (len(pos), len(samples))}
        verdicts = {}
        if oracle is not None:
            known = [j for j, r in enumerate(pos_rows) if task_of(r).first_error is not None]
            found = oracle([pos_rows[j] for j in known], [pos_text[j] for j in known]).flawed
            counts["fp_ratio"] = (sum(found), len(known))
            if judge is oracle:                  # every row has an oracle (checked in main), so known = all
                verdicts["oracle"] = found
        if genrm is not None:
            v = genrm(pos_rows, pos_text)
            verdicts["genrm"] = v.flawed
            counts.update(judge_fp_ratio=(sum(v.flawed), len(pos)), judge_invalid=(v.invalid, len(pos)),
                          judge_truncated=(v.truncated, len(pos)),     # critiques cut at the token cap
                          judge_distinct=(v.critiques, len(pos)))   # critiques made / rollouts judged
        flawed = torch.zeros(len(samples), dtype=torch.bool)
        if judge is not None and pos:
            flawed[pos] = torch.tensor(verdicts["oracle" if judge is oracle else "genrm"], dtype=torch.bool)
        return grpo.fapo_rewards(torch.tensor(correct), flawed, lam), counts   # docs/method.md §4
    return reward_fn


def main():
    ap = flags.add_eval_args(flags.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])))
    g = ap.add_argument_group("FAPO reward")
    g.add_argument("--lam", type=float, default=1.0, help="penalty for a flawed positive (0 = GRPO)")
    g.add_argument("--judge", choices=("genrm", "oracle", "none"), default="genrm",
                   help="who says a correct rollout is flawed: the GenRM, the task's exact oracle, or nobody (GRPO)")
    g.add_argument("--genrm", help="GenRM model folder (for --judge genrm; with --judge none or oracle it only "
                                   "measures: judge_fp_ratio)")
    g.add_argument("--genrm-max-new-tokens", type=int, default=16384,
                   help="critique cap, the authors' 16384 (less where the GenRM's window or --genrm-cache-gb "
                        "cannot hold it; a cut critique counts as not flawed: judge_truncated)")
    g.add_argument("--genrm-temperature", type=float, default=0.0, help="0 = greedy verdicts")
    g.add_argument("--genrm-max-rows", type=int, default=256, help="at most this many critiques a judge wave")
    g.add_argument("--genrm-cache-gb", type=float, default=0.0,
                   help="GiB for a judge wave's KV cache and its first prefill: as many critiques as fit, each a "
                        "dense slot of critic prompt + cap positions (0 = half the memory free at each call, on "
                        "each rank; set it for runs that must repeat)")
    g = ap.add_argument_group("a served GenRM (fapo_mini/served_judge.py), instead of --genrm DIR")
    g.add_argument("--genrm-url", help="an OpenAI-compatible server of the GenRM (vLLM, SGLang, a router): "
                                       "http://HOST:PORT")
    g.add_argument("--genrm-model", help="the served model's name (default: the one the server lists)")
    g.add_argument("--genrm-concurrency", type=int, default=16, help="critique requests in flight")
    g.add_argument("--genrm-timeout", type=float, default=600.0, help="seconds one request may take")
    g.add_argument("--genrm-retries", type=int, default=5,
                   help="tries after the first on a refused connection, timeout or 5xx, with exponential backoff")
    args = ap.parse_args()
    check_flags(args, RANGES)
    if args.genrm and args.genrm_url:
        raise UserError("give one GenRM: --genrm DIR (loaded here) or --genrm-url URL (served)")
    if args.judge == "genrm" and not (args.genrm or args.genrm_url):
        raise UserError("--judge genrm needs --genrm DIR or --genrm-url URL")
    rows, prompt_ids = check_run_inputs(args, ("prompt", "reward_model.ground_truth"))
    check_ground_truths(rows, args.data)
    eval_rows, eval_ids = check_eval_inputs(args)
    no_oracle = [i for i, r in enumerate(rows, start=1) if task_of(r).first_error is None]
    if args.judge == "oracle" and no_oracle:
        raise UserError(f"--judge oracle: {args.data}:{no_oracle[0]}: data_source {rows[no_oracle[0] - 1].get('data_source')!r} "
                        "has no exact step oracle (the toy world has one; real data does not)")

    info = dist.setup(args.dist_timeout)
    genrm = None
    if args.genrm:
        try:
            genrm = GenRMJudge(args.genrm, info.device, args.genrm_max_new_tokens, args.genrm_temperature,
                               trust_remote_code=args.trust_remote_code, max_rows=args.genrm_max_rows,
                               cache_gb=args.genrm_cache_gb, cuda_graphs=args.cuda_graphs)
        except UserError as e:
            raise UserError(f"--genrm: {e}") from None
    elif args.genrm_url:                          # asks the server for its model name: a wrong URL fails here
        genrm = ServedJudge(args.genrm_url, args.genrm_model, args.genrm_max_new_tokens, args.genrm_temperature,
                            args.genrm_concurrency, args.genrm_timeout, args.genrm_retries)
    oracle = OracleJudge() if len(no_oracle) < len(rows) else None   # decided from the data: same keys on every rank
    judge = {"genrm": genrm, "oracle": oracle, "none": None}[args.judge]
    evaluation = None
    if eval_rows is not None:                     # held-out avg@n, pass@k, fp_ratio (oracle), judge_fp_ratio (GenRM)
        has_oracle = any(task_of(r).first_error is not None for r in eval_rows)
        evaluation = rl.Evaluation(eval_rows, eval_ids, lambda rows, n: policy_counts(rows, n, has_oracle, genrm))
    rl.train(args, info, make_reward_fn(args.lam, judge, genrm, oracle), rows, prompt_ids,
             generators={"genrm": genrm.generator} if args.genrm else None, evaluation=evaluation)


if __name__ == "__main__":
    cli(main)
