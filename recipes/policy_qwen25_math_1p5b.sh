#!/usr/bin/env bash
# Policy RL on one 8-GPU node: Qwen2.5-Math-1.5B (DDP) or, with SIZE=7b, the paper's
# Qwen2.5-Math-7B (FSDP2, --fsdp; recipes/policy_qwen25_math_7b.sh) on DAPO-Math-17k, GRPO or FAPO.
#
#   ARM=grpo MODEL=~/models/Qwen2.5-Math-1.5B bash recipes/policy_qwen25_math_1p5b.sh
#   ARM=fapo SIZE=7b GENRM=... bash recipes/policy_qwen25_math_1p5b.sh        # = recipes/policy_qwen25_math_7b.sh
#   ARM=fapo MODEL=~/models/Qwen2.5-Math-1.5B GENRM=runs/genrm_qwen3_4b/ckpt/step_00000500/model \
#       bash recipes/policy_qwen25_math_1p5b.sh
#   DRY_RUN=1 ARM=fapo OUT=/tmp/dry_policy bash recipes/policy_qwen25_math_1p5b.sh   # CPU rehearsal, 2 steps
#
#   ARM=grpo  --lam 0 --judge none             plain GRPO rewards (+1 / -1); with GENRM set, the GenRM
#                                              still measures the flawed-positive ratio (judge_fp_ratio)
#   ARM=fapo  --lam 1 --judge genrm --genrm    flawed positives get 1 - lambda = 0 (docs/method.md §4)
#
# DATA is the hub set open-r1/DAPO-Math-17k-Processed (config "all") or a local copy of it;
# recipes/prepare_dapo.py turns it into verl rows with the paper's prompt
# (question + "\n\nPlease reason step by step, and put your final answer within \boxed{}.").
#
# The authors' 7B run (yyDing1/FAPO scripts/run_fapo_reasoning_7b.sh) is 8 nodes x 8
# GPUs: 512 prompts x 8 rollouts a step, mini-batches of 32 prompts (16 updates a step), lr 1e-6
# after 10 warm-up RL steps, wd 0.1, grad-clip 1.0, clip 0.2 / 0.28, dual-clip 10, token-mean, no KL,
# temperature 1.0, top-p 1.0, prompt 2048 + response 8192 with an overlong buffer of 4096, 200 steps.
# Scaled to one node (recipes/README.md has the memory and time arithmetic, estimates):
#   * 128 prompts x 8 rollouts a step = 16 prompts (128 rollouts) per GPU, in one sampler wave,
#     and 4 mini-batches of 32 prompts a step: the paper's mini-batch, a quarter of its updates.
#     1.5B: DDP (16 bytes a parameter). 7B: FSDP2, 64 prompts x 8 (2 mini-batches of 32): each GPU
#     holds 1/8 of the fp32 weights, grads and AdamW plus a whole bf16 copy for the sampler.
#   * the judge takes a GPU's correct rollouts in waves sized by a KV-cache budget (--genrm-cache-gb,
#     GENRM_CACHE_GB below), at most 24 critiques a wave: each holds a dense slot of critic prompt
#     (~3.7k tokens) + the critique cap, next to the policy (recipes/README.md, estimates);
#   * response 3072 with an overlong buffer of 1536 (the paper's 2:1 ratio): DAPO prompts are
#     short, and prompt + response stays inside Qwen2.5-Math-1.5B's 4096 positions (the authors
#     stretch the 7B's to 32768 by editing config.json; we keep the model as published);
#   * GenRM critiques get the authors' 16384 new tokens; a critique cut short has no verdict and
#     counts as not flawed (judge_truncated in metrics.jsonl shows how often). Estimated, the judge
#     then takes most of a FAPO step (recipes/README.md); GENRM_MAX_NEW=4096 trades cut critiques for time;
#   * 200 steps, as the paper: 1.5B 200 x 128 = 25.6k prompts (1.5 passes over DAPO-Math-17k),
#     7B 200 x 64 = 12.8k (the paper: 200 x 512).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ARM=${ARM:-fapo}
SIZE=${SIZE:-1.5b}
case $SIZE in      # the 7B: FSDP2, half the prompts a step (its sampler copy and activations are larger)
    1.5b) HUB=Qwen/Qwen2.5-Math-1.5B; SHARD=();       DEFAULT_PROMPTS=128; MINI=4; TINY=qwen2;        CACHE_GB=39 ;;
    7b)   HUB=Qwen/Qwen2.5-Math-7B;   SHARD=(--fsdp); DEFAULT_PROMPTS=64;  MINI=2; TINY=qwen2-untied; CACHE_GB=42 ;;
    *)    echo "error: SIZE must be 1.5b or 7b, got '$SIZE'" >&2; exit 1 ;;
esac
MODEL=${MODEL:-$HOME/models/${HUB#Qwen/}}
DATA=${DATA:-open-r1/DAPO-Math-17k-Processed}
GENRM=${GENRM:-}
OUT=${OUT:-runs/policy_qwen25_math_${SIZE/./p}_$ARM}
NPROC=${NPROC:-8}
PROMPTS=${PROMPTS:-$DEFAULT_PROMPTS}
GROUP=8
MAX_NEW=3072
OVERLONG=1536
ROLLOUT_ROWS=128          # one wave: a GPU's 128 (1.5B) or 64 (7B) rollouts
GENRM_MAX_NEW=${GENRM_MAX_NEW:-16384}   # the authors' critique cap
GENRM_ROWS=24             # at most this many critiques a judge wave
GENRM_CACHE_GB=${GENRM_CACHE_GB:-$CACHE_GB}   # a judge wave's cache and prefill (GiB, sized for an H100-80GB)
MICRO_TOKENS=16384
STEPS=${STEPS:-200}

if [[ $DRY_RUN == 1 ]]; then
    MODEL=$OUT/tiny_policy; tiny "$TINY" "$MODEL"
    GENRM=$OUT/tiny_genrm; tiny qwen3 "$GENRM"
    DATA=$ROOT/tests/fixtures/dapo-processed-sample.jsonl
    NPROC=2; PROMPTS=2; MAX_NEW=16; OVERLONG=8; GENRM_MAX_NEW=8; MICRO_TOKENS=1024; STEPS=2
fi
need_model "$MODEL" "fetch it with: huggingface-cli download $HUB --local-dir $MODEL"

case $ARM in
    grpo) ARM_FLAGS=(--lam 0 --judge none) ;;
    fapo) [[ -n $GENRM ]] || { echo "error: ARM=fapo needs GENRM=<GenRM model folder>" >&2; exit 1; }
          ARM_FLAGS=(--lam 1 --judge genrm) ;;
    *)    echo "error: ARM must be grpo or fapo, got '$ARM'" >&2; exit 1 ;;
esac
if [[ -n $GENRM ]]; then
    need_model "$GENRM" "GENRM is a GenRM model folder, e.g. runs/genrm_qwen3_4b/ckpt/step_00000500/model"
    ARM_FLAGS+=(--genrm "$GENRM" --genrm-max-new-tokens "$GENRM_MAX_NEW" --genrm-temperature 0
                --genrm-max-rows "$GENRM_ROWS" --genrm-cache-gb "$GENRM_CACHE_GB")
fi

TRAIN=$OUT/dapo_train.jsonl
[[ -f $TRAIN ]] || "$PYTHON" -m recipes.prepare_dapo --preset dapo --source "$DATA" --out "$TRAIN"

"$TORCHRUN" --standalone --nproc_per_node="$NPROC" "$ROOT/train_policy.py" \
    --model "$MODEL" --data "$TRAIN" --out "$OUT" "${ARM_FLAGS[@]}" ${SHARD[@]+"${SHARD[@]}"} \
    --prompts-per-step "$PROMPTS" --group-size "$GROUP" --rollout-max-rows "$ROLLOUT_ROWS" \
    --temperature 1.0 --top-p 1.0 --max-new-tokens "$MAX_NEW" --overlong-buffer "$OVERLONG" \
    --lr 1e-6 --warmup 10 --weight-decay 0.1 --grad-clip 1.0 \
    --mini-batches "$MINI" --micro-tokens "$MICRO_TOKENS" --grad-checkpointing \
    --clip-low 0.2 --clip-high 0.28 --dual-clip 10 --loss-agg token-mean --kl-coef 0 \
    --steps "$STEPS" --save-every 25
