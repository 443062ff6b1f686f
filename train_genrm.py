"""RL for the GenRM: GRPO on critic rows with FAPO's step-wise reward, one process or torchrun.

    python train_genrm.py --model DIR --data critic.jsonl --out runs/genrm
    torchrun --nproc_per_node=8 train_genrm.py --model Qwen3-4B-Instruct-2507 --data dyyyyyyyy/FAPO-Critic ...

Rows are verl-format critic rows (FAPO-Critic, or the toy world's critic set): `prompt`
(the critic prompt; chat messages go through the chat template), `reward_model.ground_truth`
= the first wrong step (-1 for none), `extra_info.total_steps`. Each critique is scored:
  --reward step     R_outcome + R_process (docs/method.md §3; paper §3.1, Eq. 7), default
  --reward outcome  +1 / -1 on the flawed-or-clean decision only (the ablation)
The loop (sampling, advantages, PPO update, DDP, checkpoints) is fapo_mini/rl.py, shared
with train_policy.py; only the reward differs.
"""
import argparse

import torch

from fapo_mini import dist, flags, genrm, rl
from fapo_mini.errors import cli
from fapo_mini.preflight import check_critic_labels, check_run_inputs


def main():
    ap = flags.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--reward", choices=("step", "outcome"), default="step", help="GenRM reward (docs/method.md §3)")
    args = ap.parse_args()
    fields = ("prompt", "reward_model.ground_truth", "extra_info.total_steps")
    rows, prompt_ids = check_run_inputs(args, fields)
    check_critic_labels(rows, args.data)                             # every row before step 1

    def reward_fn(rows, samples):
        rewards, preds, labels = [], [], []
        for s in samples:
            row = rows[s.prompt_index]
            label, n_steps = int(row["reward_model"]["ground_truth"]), int(row["extra_info"]["total_steps"])
            pred = genrm.parse_verdict(s.text, n_steps)
            rewards.append(genrm.step_reward(pred, label, n_steps) if args.reward == "step"
                           else genrm.outcome_reward(pred, label))
            preds.append(pred)
            labels.append(label)
        counts = {"valid": (sum(p is not None for p in preds), len(preds)),                 # counts summed over ranks
                  "decision_acc": (sum(p is not None and (p == genrm.NO_ERROR) == (y == genrm.NO_ERROR)
                                       for p, y in zip(preds, labels)), len(preds)),
                  **genrm.localisation_counts(preds, labels)}
        return torch.tensor(rewards), counts

    rl.train(args, dist.setup(args.dist_timeout), reward_fn, rows, prompt_ids)


if __name__ == "__main__":
    cli(main)
