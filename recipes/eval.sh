#!/usr/bin/env bash
# Evaluate a policy checkpoint as the paper does: AIME24 and AIME25 avg@32, and MATH-500 avg@4,
# temperature 1.0, top-p 0.7, the paper's boxed-answer prompt, one benchmark per GPU in parallel.
#
#   CKPT=runs/policy_qwen25_math_1p5b_fapo/ckpt/step_00000500/model bash recipes/eval.sh
#   CKPT=... GENRM=runs/genrm_qwen3_4b/ckpt/step_00000500/model bash recipes/eval.sh   # + flawed-positive ratio
#   AIME24=aime24.parquet AIME25=aime25.jsonl MATH500=math500.parquet CKPT=... bash recipes/eval.sh  # local data
#   DRY_RUN=1 OUT=/tmp/dry_eval bash recipes/eval.sh                               # CPU rehearsal
#
# Data: recipes/prepare_dapo.py turns the hub sets the authors use (Maxwell-Jia/AIME_2024,
# yentinglin/aime_2025; HuggingFaceH4/MATH-500) or local copies of them into verl rows. Each
# benchmark runs `rollout.py --n N` on its own GPU and writes OUT/<bench>.jsonl (every sample,
# scored) and OUT/<bench>.summary.json (accuracy = avg@N, pass@k, and with GENRM the share of
# correct samples the GenRM calls flawed, judge_fp_ratio). The paper's GPQA-Diamond is left out.
# MAX_NEW matches the policy recipe's training length (3072; the paper's 7B run: 8192).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CKPT=${CKPT:-}
GENRM=${GENRM:-}
OUT=${OUT:-}
BENCHES=${BENCHES:-aime24 aime25 math500}
NGPU=${NGPU:-8}
MAX_NEW=${MAX_NEW:-3072}
GENRM_MAX_NEW=${GENRM_MAX_NEW:-16384}  # critique cap for the GenRM judge (the authors', as in the policy recipe)
GENRM_CACHE_GB=${GENRM_CACHE_GB:-64}   # its waves' cache and prefill (GiB), beside the bf16 policy and GenRM
declare -A SOURCE=([aime24]=${AIME24:-} [aime25]=${AIME25:-} [math500]=${MATH500:-})
declare -A N=([aime24]=32 [aime25]=32 [math500]=4)

if [[ $DRY_RUN == 1 ]]; then
    OUT=${OUT:-runs/dry_eval}
    CKPT=$OUT/tiny_policy; tiny qwen2 "$CKPT"
    GENRM=$OUT/tiny_genrm; tiny qwen3 "$GENRM"
    for b in aime24 aime25 math500; do SOURCE[$b]=$ROOT/tests/fixtures/$b-sample.jsonl; done
    NGPU=0; MAX_NEW=16; GENRM_MAX_NEW=16; GENRM_CACHE_GB=1
fi
[[ -n $CKPT ]] || { echo "error: set CKPT to the policy model folder to evaluate" >&2; exit 1; }
if [[ -z $OUT ]]; then name=${CKPT#runs/}; OUT=runs/eval/${name//\//_}; fi   # outside ckpt/: rotation deletes that
need_model "$CKPT" "CKPT is a policy model folder, e.g. runs/policy_qwen25_math_1p5b_fapo/ckpt/step_00000500/model"
[[ -z $GENRM ]] || need_model "$GENRM" "GENRM is a GenRM model folder"
mkdir -p "$OUT"

pids=()
i=0
for b in $BENCHES; do
    [[ -n ${N[$b]:-} ]] || { echo "error: unknown benchmark '$b' (aime24, aime25, math500)" >&2; exit 1; }
    data=$OUT/$b.data.jsonl
    [[ -f $data ]] || "$PYTHON" -m recipes.prepare_dapo --preset "$b" ${SOURCE[$b]:+--source "${SOURCE[$b]}"} --out "$data"
    gpu=$(( NGPU > 0 ? i % NGPU : -1 ))
    (
        if [[ $gpu -ge 0 ]]; then export CUDA_VISIBLE_DEVICES=$gpu; fi
        "$PYTHON" "$ROOT/rollout.py" --model "$CKPT" --data "$data" --out "$OUT/$b.jsonl" \
            --n "${N[$b]}" --temperature 1.0 --top-p 0.7 --max-new-tokens "$MAX_NEW" \
            ${GENRM:+--genrm "$GENRM" --genrm-max-new-tokens "$GENRM_MAX_NEW" --genrm-cache-gb "$GENRM_CACHE_GB"} > "$OUT/$b.stdout" 2> "$OUT/$b.log"
        tail -n 1 "$OUT/$b.stdout" > "$OUT/$b.summary.json"
    ) &
    pids+=($!)
    i=$((i + 1))
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[[ $failed == 0 ]] || { echo "error: a benchmark failed; see $OUT/*.log" >&2; exit 1; }

for b in $BENCHES; do
    printf '%-8s avg@%-3s %s\n' "$b" "${N[$b]}" "$(cat "$OUT/$b.summary.json")"
done
