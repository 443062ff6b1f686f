#!/usr/bin/env bash
# GRPO vs FAPO on the toy world, end to end, on two CPU cores.
#
#   ./demo.sh                 the full run (see README for its wall time and results)
#   ./demo.sh --quick         the same chain at toy sizes (about two minutes; what the tests run)
#   ./demo.sh --seeds 2 --out runs/mine
#
# Every line below is a command a user could type. Results: OUT/results.json,
# OUT/curves.png, and a markdown table at the end. Set PYTHON to use an existing
# interpreter; otherwise .venv is made from requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"

QUICK=0; SEEDS=3; OUT=runs/demo
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; OUT=runs/demo-quick; SEEDS=1 ;;
    --seeds) SEEDS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--seeds N] [--out DIR]"; exit 2 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
  PYTHON=.venv/bin/python
fi
PY="$PYTHON"
TORCHRUN="env OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node=2"   # 2 ranks x 1 thread

# sizes: the full run, or toy sizes that only prove the chain works
if [ "$QUICK" = 1 ]; then
  N_SFT=2000; MODEL=d64-l2; SFT_STEPS=30; SFT_BATCH=32; GENRM_PROMPTS=200; GENRM_SFT_STEPS=20; GENRM_BATCH=32; GENRM_RL_STEPS=2; RL_STEPS=3; PPS=4; N_EVAL=40; FILL=50
else
  N_SFT=20000; MODEL=d128-l4; SFT_STEPS=500; SFT_BATCH=128; GENRM_PROMPTS=2000; GENRM_SFT_STEPS=200; GENRM_BATCH=96; GENRM_RL_STEPS=15; RL_STEPS=30; PPS=16; N_EVAL=500; FILL=0
fi
rm -rf "$OUT"; mkdir -p "$OUT/eval"
stage() {  # stage NAME command...: run it and record its wall time in OUT/times.tsv
  local name=$1 t0=$EPOCHREALTIME; shift
  echo "== $name: $*" >&2
  "$@"
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >> "$OUT/times.tsv"
}

# 1. the world: policy rows (train / held-out test / longer-chain hard), flawed-teacher traces, tokenizer
stage data $PY -m fapo_mini.toyworld world --out "$OUT/data" --n-train $GENRM_PROMPTS --n-sft $N_SFT --n-test $N_EVAL --n-hard $N_EVAL

# 2. policy warm start on the flawed teacher (flawed positives arise on their own from here)
stage policy_sft $PY -m fapo_mini.sft --data "$OUT/data/sft_policy.jsonl" --tokenizer "$OUT/data/tokenizer" \
  --new-model $MODEL --steps $SFT_STEPS --batch-size $SFT_BATCH --lr 2e-3 --out "$OUT/policy_sft"

# 3. GenRM data as the paper made it: sample the policy, keep correct rollouts, label by the oracle, balance
stage genrm_data $PY rollout.py --model "$OUT/policy_sft" --data "$OUT/data/train.jsonl" --limit $GENRM_PROMPTS --n 4 \
  --temperature 1.0 --max-new-tokens 64 --out "$OUT/genrm_data/rollouts.jsonl"
stage genrm_data $PY -m fapo_mini.toycritic --rollouts "$OUT/genrm_data/rollouts.jsonl" --out "$OUT/genrm_data" \
  --teacher-fill $FILL

# 4. GenRM warm start (from the policy's weights: it already reads the world), then RL with the step-wise
#    reward and, as the ablation, the outcome-only reward; same steps and seed
stage genrm_sft $PY -m fapo_mini.sft --data "$OUT/genrm_data/sft_genrm.jsonl" --model "$OUT/policy_sft" \
  --steps $GENRM_SFT_STEPS --batch-size $GENRM_BATCH --lr 1e-3 --out "$OUT/genrm_sft"
for reward in step outcome; do
  stage genrm_rl $TORCHRUN train_genrm.py --model "$OUT/genrm_sft" \
    --data "$OUT/genrm_data/critic_train.jsonl" --reward $reward --out "$OUT/genrm_rl_$reward" \
    --steps $GENRM_RL_STEPS --prompts-per-step $PPS --group-size 8 --max-new-tokens 200 --lr 1e-4 --warmup 2
done
GENRM="$OUT/genrm_rl_step/ckpt/$(ls "$OUT/genrm_rl_step/ckpt" | tail -1)/model"
for name in sft:"$OUT/genrm_sft" rl_outcome:"$OUT/genrm_rl_outcome/ckpt/$(ls "$OUT/genrm_rl_outcome/ckpt" | tail -1)/model" \
            rl_step:"$GENRM"; do
  stage genrm_eval $PY rollout.py --model "${name#*:}" --data "$OUT/genrm_data/critic_test.jsonl" --n 1 \
    --temperature 0 --max-new-tokens 200 --out "$OUT/eval/genrm_${name%%:*}.jsonl" | tail -1 > "$OUT/eval/genrm_${name%%:*}.json"
done

# 5. policy RL from the same warm start and seeds: GRPO, FAPO with the GenRM, FAPO with the oracle (upper bound)
for seed in $(seq 1 $SEEDS); do
  for arm in grpo:"--lam 0 --judge none" fapo:"--lam 1 --judge genrm --genrm $GENRM" fapo_oracle:"--lam 1 --judge oracle"; do
    stage rl_${arm%%:*} $TORCHRUN train_policy.py --model "$OUT/policy_sft" \
      --data "$OUT/data/train.jsonl" --out "$OUT/rl/${arm%%:*}_s$seed" ${arm#*:} --seed $seed \
      --steps $RL_STEPS --prompts-per-step $PPS --group-size 8 --max-new-tokens 64 --lr 2e-4 --warmup 2 \
      --mini-batches 2 --genrm-max-new-tokens 200
  done
done

# 6. held-out evaluation of every final policy (temperature 1, the oracle judges flaws), then the report
for run in "$OUT"/rl/*; do
  ckpt="$run/ckpt/$(ls "$run/ckpt" | tail -1)/model"
  for split in test hard; do
    stage eval $PY rollout.py --model "$ckpt" --data "$OUT/data/$split.jsonl" --n 1 --temperature 1.0 \
      --max-new-tokens 96 --seed 0 --out "$OUT/eval/$(basename "$run")_$split.jsonl" | tail -1 \
      > "$OUT/eval/$(basename "$run")_$split.json"
  done
done
$PY -m fapo_mini.report --out "$OUT"
