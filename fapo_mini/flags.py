"""The trainers' command-line flags: what train_policy.py and train_genrm.py share.

Why this file exists: both trainers run the same loop (rl.py) and take the same flags for it;
each adds its own reward flags. Their ranges are checked before any work by preflight.py
(TRAINER_RANGES, EVAL_RANGES), and RESUMABLE says which of them a resumed run may change.
"""
from fapo_mini import grpo, tracking


def add_common_args(ap):
    """Flags both trainers share; each script adds its own reward flags."""
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="HF model folder to start from")
    g.add_argument("--data", required=True, help="verl-format rows: .jsonl / .parquet / hub name")
    g.add_argument("--out", required=True, help="run folder: metrics.jsonl, config.json, ckpt/")
    g.add_argument("--trust-remote-code", action="store_true", help="allow custom tokenizer code")
    g = ap.add_argument_group("rollout")
    g.add_argument("--prompts-per-step", type=int, default=16, help="global, over all ranks")
    g.add_argument("--group-size", type=int, default=8, help="rollouts per prompt, n (named so torchrun does not take --n for its own)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--overlong-buffer", type=int, default=0, help="DAPO overlong shaping buffer (0 = off)")
    g.add_argument("--rollout-max-rows", type=int, default=256,
                   help="sampler cache slots (rows decoded at once); the KV cache is slots x (longest prompt + max-new-tokens)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay the decode step of the sampler (and of train_policy.py's in-process GenRM) as "
                        "CUDA graphs, one per batch bucket (GPU only)")
    g.add_argument("--filter-groups", action="store_true",
                   help="DAPO dynamic sampling: train only on groups whose rewards differ, sampling more prompts to fill the batch")
    g.add_argument("--filter-max-rounds", type=int, default=10,
                   help="with --filter-groups: sampling rounds per step at most; then the batch is topped up with equal-reward groups")
    g = ap.add_argument_group("update")
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--warmup", type=int, default=10, help="LR warm-up, in RL steps (as verl): step s runs at lr * min(1, (s + 1) / warmup)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--mini-batches", type=int, default=1, help="optimizer steps per RL step")
    g.add_argument("--micro-tokens", type=int, default=4096, help="max packed tokens per forward")
    g.add_argument("--clip-low", type=float, default=0.2)
    g.add_argument("--clip-high", type=float, default=0.28)
    g.add_argument("--dual-clip", type=float, default=10.0)
    g.add_argument("--loss-agg", default="token-mean", choices=grpo.AGG_MODES)
    g.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL to the initial model (0 = no reference model)")
    g.add_argument("--tis-cap", type=float, default=0.0,
                   help="truncated importance sampling: weight each token's loss by min(pi_old / pi_sampler, cap) "
                        "(0 = off; verl's rollout correction uses 2). pi_old is the trainer's own wherever the "
                        "sampler's copy differs from it (bf16 on GPU, FSDP2), else the sampler's, and the weight is 1")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--fsdp", action="store_true",
                   help="shard the trained model with FSDP2 (bf16 compute on GPU, fp32 grads and AdamW); default DDP")
    g = ap.add_argument_group("run")
    g.add_argument("--steps", type=int, default=100)
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every K steps (0 = only at the end)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    g.add_argument("--fresh", action="store_true", help="ignore checkpoints in --out and start over")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--report-to", default="none", choices=tracking.REPORT_TO, type=tracking.report_to_arg,
                   help="also log to (metrics.jsonl always)")
    g.add_argument("--dist-timeout", type=float, default=60.0,
                   help="minutes a rank waits for the others at a collective before the run is ended (the judge "
                        "and the sampler run apart on each rank, so the slowest sets the wait)")
    return ap


def add_eval_args(ap):
    """Evaluation during training, for a trainer that passes `evaluation` to train()."""
    g = ap.add_argument_group("evaluation on held-out rows")
    g.add_argument("--eval-data", help="rows scored every --eval-every steps and after the last (metrics: eval/...)")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every K steps (0 = off)")
    g.add_argument("--eval-n", type=int, default=4, help="samples per prompt: eval/accuracy is avg@n")
    g.add_argument("--eval-temperature", type=float, default=1.0, help="the paper's: 1.0 (0 = greedy)")
    g.add_argument("--eval-top-p", type=float, default=0.7, help="the paper's: 0.7")
    return ap


# flags that may change when a run is resumed; every other flag must match the checkpoint
RESUMABLE = ("steps", "save_every", "keep", "fresh", "out", "micro_tokens", "grad_checkpointing", "report_to",
             "cuda_graphs", "eval_data", "eval_every", "eval_n", "eval_temperature", "eval_top_p",
             "genrm_cache_gb",      # a judge that ran out of memory (a smaller budget can also shorten
                                    # the critique cap and regroup the waves: other verdicts from then on)
             "genrm_url", "genrm_concurrency", "genrm_timeout", "genrm_retries",   # a served judge may move
             "dist_timeout")
# flags since removed: a checkpoint that saved one still resumes (its value is not compared)
RETIRED = ("genrm_cache_tokens",)
