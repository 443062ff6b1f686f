#!/usr/bin/env bash
# Policy RL on one 8-GPU node: Qwen2.5-Math-1.5B on DAPO-Math-17k, GRPO baseline or FAPO.
#
#   ARM=grpo MODEL=~/models/Qwen2.5-Math-1.5B bash recipes/policy_qwen25_math_1p5b.sh
#   ARM=fapo MODEL=~/models/Qwen2.5-Math-1.5B GENRM=runs/genrm_qwen3_4b/ckpt/step_00000500/model \
#       bash recipes/policy_qwen25_math_1p5b.sh
#   DRY_RUN=1 ARM=fapo OUT=/tmp/dry_policy bash recipes/policy_qwen25_math_1p5b.sh   # CPU rehearsal, 2 steps
#
#   ARM=grpo  --lam 0 --judge none             plain GRPO rewards (+1 / -1); with GENRM set, the GenRM
#                                              still measures the flawed-positive ratio (judge_fp_ratio)
#   ARM=fapo  --lam 1 --judge genrm --genrm    flawed positives get 1 - lambda = 0 (FAPO_SPEC 3)
#
# DATA is the hub set open-r1/DAPO-Math-17k-Processed (config "all") or a local copy of it;
# recipes/prepare_dapo.py turns it into verl rows with the paper's prompt
# (question + "\n\nPlease reason step by step, and put your final answer within \boxed{}.").
#
# The authors' 7B run (FAPO_SPEC 3; yyDing1/FAPO scripts/run_fapo_reasoning_7b.sh) is 8 nodes x 8
# GPUs: 512 prompts x 8 rollouts a step, mini-batches of 32 prompts (16 updates a step), lr 1e-6
# after 10 warm-up steps, wd 0.1, grad-clip 1.0, clip 0.2 / 0.28, dual-clip 10, token-mean, no KL,
# temperature 1.0, top-p 1.0, prompt 2048 + response 8192 with an overlong buffer of 4096, 200 steps.
# Scaled to one node and a 1.5B model (recipes/README.md has the memory arithmetic):
#   * 16 prompts x 8 rollouts a step = 2 prompts (16 rollouts) per GPU, one optimizer update a
#     step (--mini-batches 1; the paper's mini-batch is 32 prompts), fully on-policy. The cap is
#     the FAPO arm's judge: all of a GPU's correct rollouts go to the GenRM in one dense-cache
#     wave next to the policy's weights and optimizer state (~70 GiB with the 4B GenRM).
#   * response 3072 with an overlong buffer of 1536 (the paper's 2:1 ratio): DAPO prompts are
#     short, and prompt + response stays inside Qwen2.5-Math-1.5B's 4096 positions (the authors
#     stretch the 7B's to 32768 by editing config.json; we keep the model as published);
#   * GenRM critiques get 2048 new tokens (the authors allow 16384); a critique cut short has no
#     verdict and counts as not flawed (judge_invalid in metrics.jsonl shows how often);
#   * 500 steps x 16 prompts = 8k prompts, about half a pass over DAPO-Math-17k (the paper: 200 x 512).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ARM=${ARM:-fapo}
MODEL=${MODEL:-$HOME/models/Qwen2.5-Math-1.5B}
DATA=${DATA:-open-r1/DAPO-Math-17k-Processed}
GENRM=${GENRM:-}
OUT=${OUT:-runs/policy_qwen25_math_1p5b_$ARM}
NPROC=${NPROC:-8}
PROMPTS=${PROMPTS:-16}
GROUP=8
MAX_NEW=3072
OVERLONG=1536
GENRM_MAX_NEW=2048
MICRO_TOKENS=16384
STEPS=${STEPS:-500}

if [[ $DRY_RUN == 1 ]]; then
    MODEL=$OUT/tiny_policy; tiny qwen2 "$MODEL"
    GENRM=$OUT/tiny_genrm; tiny qwen3 "$GENRM"
    DATA=$ROOT/tests/fixtures/dapo-processed-sample.jsonl
    NPROC=2; PROMPTS=2; MAX_NEW=16; OVERLONG=8; GENRM_MAX_NEW=8; MICRO_TOKENS=1024; STEPS=2
fi
need_model "$MODEL" "fetch it with: huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir $MODEL"

case $ARM in
    grpo) ARM_FLAGS=(--lam 0 --judge none) ;;
    fapo) [[ -n $GENRM ]] || { echo "error: ARM=fapo needs GENRM=<GenRM model folder>" >&2; exit 1; }
          ARM_FLAGS=(--lam 1 --judge genrm) ;;
    *)    echo "error: ARM must be grpo or fapo, got '$ARM'" >&2; exit 1 ;;
esac
if [[ -n $GENRM ]]; then
    need_model "$GENRM" "GENRM is a GenRM model folder, e.g. runs/genrm_qwen3_4b/ckpt/step_00000500/model"
    ARM_FLAGS+=(--genrm "$GENRM" --genrm-max-new-tokens "$GENRM_MAX_NEW" --genrm-temperature 0)
fi

TRAIN=$OUT/dapo_train.jsonl
[[ -f $TRAIN ]] || "$PYTHON" -m recipes.prepare_dapo --preset dapo --source "$DATA" --out "$TRAIN"

"$TORCHRUN" --standalone --nproc_per_node="$NPROC" "$ROOT/train_policy.py" \
    --model "$MODEL" --data "$TRAIN" --out "$OUT" "${ARM_FLAGS[@]}" \
    --prompts-per-step "$PROMPTS" --group-size "$GROUP" \
    --temperature 1.0 --top-p 1.0 --max-new-tokens "$MAX_NEW" --overlong-buffer "$OVERLONG" \
    --lr 1e-6 --warmup 10 --weight-decay 0.1 --grad-clip 1.0 \
    --mini-batches 1 --micro-tokens "$MICRO_TOKENS" --grad-checkpointing \
    --clip-low 0.2 --clip-high 0.28 --dual-clip 10 --loss-agg token-mean --kl-coef 0 \
    --steps "$STEPS" --save-every 50
