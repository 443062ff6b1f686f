"""RL for the policy: GRPO (--lam 0) or FAPO (--lam 1), one process or DDP under torchrun.

    python train_policy.py --model DIR --data train.jsonl --out runs/fapo --judge genrm --genrm GENRM_DIR
    torchrun --nproc_per_node=8 train_policy.py ...        # one node, DDP (nccl on GPU, gloo on CPU)
    torchrun --nproc_per_node=8 train_policy.py --fsdp ... # one node, FSDP2 (a 7B policy)
    torchrun --nnodes=N --node-rank=R --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \
        --rdzv-id=RUN train_policy.py ...                   # node R of N (run on every node)

One step (docs/method.md §4 and §6; the loop itself is fapo_mini/rl.py, shared with train_genrm.py):
  1. each rank samples n rollouts for its shard of prompts with the live policy;
  2. outcome: +1 if the final answer is right, -1 if not (fapo_mini/verify.py);
  3. only the CORRECT rollouts go to the judge, which says whether each is flawed:
       --judge genrm   the GenRM (the paper's method)
       --judge oracle  the toy world's exact step checker (an upper bound)
       --judge none    nobody: plain GRPO rewards (flawed positives are still measured);
  4. r = outcome - lam * flawed (FAPO), group advantages, PPO-clip update.
On toy-world data the oracle's flawed-positive ratio is always logged (`fp_ratio`, over the
correct rollouts of toy-world rows when the data mixes sources), whatever the judge;
`judge_fp_ratio` is the GenRM's view whenever --genrm is given (with --judge none or oracle it
is measured only, as the paper tracks its GenRM beside a GRPO run).
"""
import argparse

import torch

from fapo_mini import dist, grpo, rl, toycritic, toyworld
from fapo_mini.detector import FlawDetector
from fapo_mini.errors import UserError, cli
from fapo_mini.preflight import check_run_inputs
from fapo_mini.verify import is_correct

# The toy world plugs into the real interfaces by the row's data_source (a fork without it drops these)
TOY_CHECKS = {"toyworld": toyworld.is_correct}
TOY_PROMPTS = {"toyworld": lambda row, response: toycritic.critic_prompt(row["prompt"], response)}


def main():
    ap = rl.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    g = ap.add_argument_group("FAPO reward")
    g.add_argument("--lam", type=float, default=1.0, help="penalty for a flawed positive (0 = GRPO)")
    g.add_argument("--judge", choices=("genrm", "oracle", "none"), default="genrm")
    g.add_argument("--genrm", help="GenRM model folder (for --judge genrm; with --judge none or oracle it only "
                                   "measures: judge_fp_ratio)")
    g.add_argument("--genrm-max-new-tokens", type=int, default=256)
    g.add_argument("--genrm-temperature", type=float, default=0.0, help="0 = greedy verdicts")
    g.add_argument("--genrm-max-rows", type=int, default=256,
                   help="critiques per judge wave (its KV cache: rows x (critic prompt + genrm-max-new-tokens))")
    args = ap.parse_args()
    if args.judge == "genrm" and not args.genrm:
        raise UserError("--judge genrm needs --genrm DIR")
    rows, prompt_ids = check_run_inputs(args, ("prompt", "reward_model.ground_truth"))
    if args.judge == "oracle" and not all(r.get("data_source") == "toyworld" for r in rows):
        raise UserError(f"--judge oracle needs toy-world data (data_source 'toyworld' in every row of {args.data})")

    info = dist.setup()
    detector = None
    if args.genrm:
        try:
            detector = FlawDetector(args.genrm, info.device, args.genrm_max_new_tokens, args.genrm_temperature,
                                    trust_remote_code=args.trust_remote_code, max_rows=args.genrm_max_rows,
                                    prompts=TOY_PROMPTS)
        except UserError as e:
            raise UserError(f"--genrm: {e}") from None

    any_toy = any(r.get("data_source") == "toyworld" for r in rows)

    def reward_fn(rows, samples):
        n = len(samples)
        row_of = [rows[s.prompt_index] for s in samples]
        correct = [is_correct(r, s.text, TOY_CHECKS) for r, s in zip(row_of, samples)]
        pos = [i for i in range(n) if correct[i]]
        counts = {"accuracy": (len(pos), n)}
        oracle = None
        if any_toy:   # decided from the whole dataset: every rank must report the same keys
            toy_pos = [i for i in pos if row_of[i].get("data_source") == "toyworld"]
            flawed_toy = {i for i in toy_pos if toyworld.first_error(row_of[i]["prompt"], samples[i].text) != -1}
            oracle = [i in flawed_toy for i in pos]          # read only with --judge oracle: all rows are toy
            counts["fp_ratio"] = (len(flawed_toy), len(toy_pos))
        judged = [False] * len(pos)
        if detector is not None:                   # with --judge none / oracle: measured, not rewarded
            before = detector.critiqued
            judged, n_invalid = detector([row_of[i] for i in pos], [samples[i].text for i in pos])
            counts["judge_fp_ratio"] = (sum(judged), len(pos))
            counts["judge_invalid"] = (n_invalid, len(pos))
            counts["judge_distinct"] = (detector.critiqued - before, len(pos))   # critiques made / rollouts judged
        if args.judge == "oracle":                 # main checked that every row is a toy-world row
            judged = oracle
        flawed = torch.zeros(n, dtype=torch.bool)
        if args.judge != "none" and pos:
            flawed[pos] = torch.tensor(judged, dtype=torch.bool)
        return grpo.fapo_rewards(torch.tensor(correct), flawed, args.lam), counts

    rl.train(args, info, reward_fn, rows, prompt_ids, generators={"genrm": detector.generator} if detector else None)


if __name__ == "__main__":
    cli(main)
