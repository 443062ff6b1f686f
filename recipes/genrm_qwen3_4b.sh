#!/usr/bin/env bash
# GenRM RL on one 8-GPU node: Qwen3-4B-Instruct-2507 (or Qwen3-1.7B) on FAPO-Critic with
# FAPO's step-wise reward (docs/method.md §3), GRPO under torchrun: FSDP2 for the 4B, DDP for the 1.7B.
#
#   MODEL=~/models/Qwen3-4B-Instruct-2507 bash recipes/genrm_qwen3_4b.sh        # H100 (80 GB) node, --fsdp
#   SIZE=1.7b MODEL=~/models/Qwen3-1.7B bash recipes/genrm_qwen3_4b.sh          # H100 node, DDP
#   DATA=fapo-critic.parquet ... bash recipes/genrm_qwen3_4b.sh                 # a local copy of the data
#   DRY_RUN=1 OUT=/tmp/dry_genrm bash recipes/genrm_qwen3_4b.sh                 # CPU rehearsal, 2 steps
#
# The authors' run (yyDing1/FAPO scripts/run_fapo_genrm_4b.sh) is 8 nodes x 8 GPUs:
# 512 prompts x 16 rollouts a step, mini-batches of 32 prompts (16 updates a step), lr 1e-6
# constant after 10 warm-up RL steps, AdamW wd 0.1, grad-clip 1.0, clip 0.2 / 0.28, dual-clip 10,
# token-mean, no KL, temperature 1.2, response 8192 with an overlong buffer of 4096, 500 steps.
# Scaled to one node (recipes/README.md has the memory and time arithmetic, estimates):
#   * 32 prompts x 16 rollouts a step = 4 prompts (64 rollouts) per GPU, sampled in 2 waves of
#     32 rows (--rollout-max-rows): our sampler's dense KV cache is rows x (prompt + response),
#     ~0.9 GiB a row for the 4B. 32 prompts is the paper's mini-batch: one update a step.
#   * response 4096 with an overlong buffer of 2048 (the paper's 2:1 ratio);
#   * every hyper-parameter that does not depend on the node count is the paper's;
#   * 500 steps, as the paper, of 32 prompts: 16k prompts, about 20% of one pass over FAPO-Critic.
#   * Qwen3-4B under DDP would keep fp32 weights + grads + AdamW = 60 GiB per GPU before any
#     activation or cache; FSDP2 (--fsdp) keeps 1/8 of that plus a bf16 copy for the sampler.
#     Qwen3-1.7B fits under DDP (it is a thinking model: its critiques open with <think>, so more
#     of them hit 4096).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SIZE=${SIZE:-4b}
case $SIZE in
    4b)   HUB=Qwen/Qwen3-4B-Instruct-2507; SHARD=(--fsdp) ;;
    1.7b) HUB=Qwen/Qwen3-1.7B;            SHARD=() ;;
    *)    echo "error: SIZE must be 4b or 1.7b, got '$SIZE'" >&2; exit 1 ;;
esac
MODEL=${MODEL:-$HOME/models/${HUB#Qwen/}}
DATA=${DATA:-dyyyyyyyy/FAPO-Critic}        # hub name (split train) or a local .jsonl / .parquet
OUT=${OUT:-runs/genrm_qwen3_$SIZE}
NPROC=${NPROC:-8}
PROMPTS=${PROMPTS:-32}
GROUP=16
ROLLOUT_ROWS=32
MAX_NEW=4096
OVERLONG=2048
MICRO_TOKENS=16384
STEPS=${STEPS:-500}

if [[ $DRY_RUN == 1 ]]; then
    MODEL=$OUT/tiny_genrm; tiny qwen3 "$MODEL"
    DATA=$ROOT/tests/fixtures/fapo-critic-sample.jsonl
    NPROC=2; PROMPTS=2; GROUP=2; MAX_NEW=16; OVERLONG=8; MICRO_TOKENS=4096; STEPS=2
fi
need_model "$MODEL" "fetch it with: huggingface-cli download $HUB --local-dir $MODEL"

"$TORCHRUN" --standalone --nproc_per_node="$NPROC" "$ROOT/train_genrm.py" \
    --model "$MODEL" --data "$DATA" --out "$OUT" \
    --reward step ${SHARD[@]+"${SHARD[@]}"} \
    --prompts-per-step "$PROMPTS" --group-size "$GROUP" --rollout-max-rows "$ROLLOUT_ROWS" \
    --temperature 1.2 --top-p 1.0 --max-new-tokens "$MAX_NEW" --overlong-buffer "$OVERLONG" \
    --lr 1e-6 --warmup 10 --weight-decay 0.1 --grad-clip 1.0 \
    --mini-batches 1 --micro-tokens "$MICRO_TOKENS" --grad-checkpointing \
    --clip-low 0.2 --clip-high 0.28 --dual-clip 10 --loss-agg token-mean --kl-coef 0 \
    --steps "$STEPS" --save-every 50
