#!/usr/bin/env bash
# GRPO vs FAPO on the toy world's shortcut, end to end, on two CPU cores.
#
#   ./demo.sh                 the default run: GRPO, FAPO-GenRM and FAPO-oracle x 3 seeds, and the GenRM's RL
#                             with the step-wise and the outcome-only reward x 3 seeds (docs/results.md
#                             has its wall time)
#   ./demo.sh --seeds 5       the robustness run: 5 seeds, and what the default run leaves out for time:
#                             the strict arm (lam 2), the early phase (lam 1 against strict from a weak
#                             warm start) and a second scoring of every final policy at the paper's top-p 0.7
#   ./demo.sh --full          those three at the default 3 seeds (--full is implied by --seeds 5 or more)
#   ./demo.sh --quick         the whole chain, all four arms, at toy sizes (about two minutes; what the tests run)
#   DEMO_SFT_RANKS=1 ./demo.sh --out runs/demo-sft1
#                             the same run with both warm starts as one process of two threads instead of
#                             two ranks of one: the same batches, other float sums, so other weights, as on
#                             another CPU (the "two machines" check, docs/results.md)
#   ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ./demo.sh
#                             the same run on an AVX-512 CPU with the AVX2 kernels an older CPU would use:
#                             other rounding everywhere, and about twice the time (run 30, docs/results.md)
#
# Every command it runs is one a user could type (step 5's are the first line of each job's log in
# OUT/logs/). Results: OUT/results.json,
# OUT/curves.png, and markdown tables at the end. Set PYTHON to use an existing
# interpreter; otherwise .venv is made from requirements.txt. Both warm starts run as
# DEMO_SFT_RANKS ranks of one thread (default 2; 1 = one process of DEMO_THREADS threads, default
# torch's own, one per core). The GenRM and policy RL runs and the
# evaluations are one-thread processes, DEMO_LANES of them side by side (default: one per core);
# each has its own seed, so its numbers do not depend on DEMO_LANES.
set -euo pipefail
CALLER="$PWD"
cd "$(dirname "$0")"                                 # the repository: the default OUT is runs/demo in it

QUICK=0; SEEDS=3; FULL=0; OUT=runs/demo
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; FULL=1; OUT=runs/demo-quick; SEEDS=1 ;;
    --seeds) SEEDS="${2:-}"; shift
             [[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --seeds needs a whole number >= 1, got '$SEEDS'"; exit 2; }
             [ "$SEEDS" -ge 5 ] && FULL=1 ;;
    --full) FULL=1 ;;
    --out) OUT="${2:-}"; shift
           [ -n "$OUT" ] || { echo "error: --out needs a folder"; exit 2; }
           [[ "$OUT" = /* ]] || OUT="$CALLER/$OUT" ;;      # a relative --out is where the user stands
    *) echo "usage: $0 [--quick] [--seeds N] [--full] [--out DIR]"; exit 2 ;;
  esac
  shift
done
SFT_RANKS="${DEMO_SFT_RANKS:-2}"
[[ "$SFT_RANKS" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEMO_SFT_RANKS needs a whole number >= 1, got '$SFT_RANKS'"; exit 2; }
LANES="${DEMO_LANES:-$(nproc)}"
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEMO_LANES needs a whole number >= 1, got '$LANES'"; exit 2; }
# a new run replaces an earlier demo's folder (it has eval/), and nothing else
if [ -e "$OUT" ] && ! { [ -d "$OUT/eval" ] || { [ -d "$OUT" ] && [ -z "$(ls -A "$OUT")" ]; }; }; then
  echo "error: --out $OUT: exists and is not a demo's output folder (no eval/ in it); give a new folder"; exit 2
fi
ARMS="grpo fapo fapo_oracle"
[ "$FULL" = 1 ] && ARMS="$ARMS strict"
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
  PYTHON=.venv/bin/python
fi
[ -n "${DEMO_THREADS:-}" ] && export OMP_NUM_THREADS="$DEMO_THREADS"
PY="$PYTHON"
ONE="env OMP_NUM_THREADS=1 $PY"                                                       # 1 process x 1 thread
SFT="$PY -m fapo_mini.sft"                                                            # DEMO_SFT_RANKS=1: 1 process
[ "$SFT_RANKS" -gt 1 ] && SFT="env OMP_NUM_THREADS=1 $PY -m torch.distributed.run --nproc_per_node=$SFT_RANKS -m fapo_mini.sft"

# sizes: the default run, or toy sizes that only prove the chain works
if [ "$QUICK" = 1 ]; then
  N_SFT=2000; MODEL=d64-l2; SFT_STEPS=30; SFT_BATCH=32; GENRM_PROMPTS=200; SKIPS=40; GENRM_SFT_STEPS=20; GENRM_BATCH=32
  GENRM_RL_STEPS=2; GENRM_PPS=4; RL_STEPS=3; PPS=4; N_TEST=40; N_SHIFT=40; N_HARD=40; FILL=50; WEAK_SFT_STEPS=15; WEAK_RL_STEPS=3
else
  N_SFT=20000; MODEL=d96-l4; SFT_STEPS=700; SFT_BATCH=64; GENRM_PROMPTS=1000; SKIPS=800; GENRM_SFT_STEPS=200; GENRM_BATCH=64
  GENRM_RL_STEPS=24; GENRM_PPS=16; RL_STEPS=45; PPS=12; N_TEST=1000; N_SHIFT=250; N_HARD=100; FILL=0; WEAK_SFT_STEPS=500; WEAK_RL_STEPS=15
fi
rm -rf "$OUT"; mkdir -p "$OUT/eval"
record() {  # record FILE NAME T0: append "NAME <tab> seconds since T0" to FILE
  awk -v n="$2" -v a="$3" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >> "$1"
}
stage() {  # stage NAME command...: run it and record its wall time in OUT/times.tsv
  local name=$1 t0=$EPOCHREALTIME; shift
  echo "== $name: $*" >&2
  "$@"
  record "$OUT/times.tsv" "$name" "$t0"
}
last_ckpt() { echo "$1/ckpt/$(ls "$1/ckpt" | tail -1)/model"; }

# 1. the world: policy rows (train, held-out test / hard / shift), flawed-teacher traces, tokenizer.
#    test has 1000 problems: the arms' test accuracies differ by a few hundredths, and at 250 problems one
#    accuracy's own sampling error (about 0.019) hides that (docs/toyworld.md, "How big the held-out splits are")
stage data $PY -m fapo_mini.toyworld world --out "$OUT/data" --n-train $GENRM_PROMPTS --n-sft $N_SFT \
  --n-test $N_TEST --n-hard $N_HARD --n-shift $N_SHIFT

# 2. policy warm start on the flawed teacher: long enough to pass both drops of its loss (at 500 steps, cosine
#    over that length, this world's data missed the second), so that another CPU's rounding gives a like
#    policy (docs/toyworld.md, "The warm start is sensitive to float rounding")
stage policy_sft $SFT --data "$OUT/data/sft_policy.jsonl" --tokenizer "$OUT/data/tokenizer" \
  --new-model $MODEL --steps $SFT_STEPS --batch-size $SFT_BATCH --lr 2e-3 --out "$OUT/policy_sft"

# 3. GenRM data as the paper made it: sample the policy, keep correct rollouts, label by the oracle, balance; then
#    teacher traces with a middle step left out (with clean twins), flaws whose first error has to be placed;
#    warm-start critiques from a sloppy critic teacher that flags the line after a wrong step (the symptom) on
#    60% of them and raises a false alarm on 60% of right `*` lines (docs/toyworld.md, "The GenRM's world");
#    the labels the GenRM's RL learns from are always the oracle's
stage genrm_data $PY rollout.py --model "$OUT/policy_sft" --data "$OUT/data/train.jsonl" --limit $GENRM_PROMPTS --n 4 \
  --temperature 1.0 --max-new-tokens 64 --batch-size 256 --out "$OUT/genrm_data/rollouts.jsonl"
stage genrm_data $PY -m fapo_mini.toycritic --rollouts "$OUT/genrm_data/rollouts.jsonl" --out "$OUT/genrm_data" \
  --teacher-fill $FILL --skips $SKIPS --symptom-share 0.6 --alarm-share 0.6 --test-share 0.25

# 4. GenRM warm start (from the policy's weights: it already reads the world); its RL runs (step-wise and
#    outcome-only reward, SEEDS seeds each, from this same warm start) run in step 5, beside the policy's
stage genrm_sft $SFT --data "$OUT/genrm_data/sft_genrm.jsonl" --model "$OUT/policy_sft" \
  --steps $GENRM_SFT_STEPS --batch-size $GENRM_BATCH --lr 2e-3 --out "$OUT/genrm_sft"
# 4b. (--full) the early phase needs RL to start where groups have more wrong than right answers: a second,
#     weak warm start, the same data and recipe with WEAK_SFT_STEPS steps (cosine over that length), which
#     misses the loss's second drop: test accuracy about 0.4, 40% of its right answers shortcuts (docs/toyworld.md, "The early phase")
[ "$FULL" = 1 ] && stage weak_sft $SFT --data "$OUT/data/sft_policy.jsonl" --tokenizer "$OUT/data/tokenizer" \
  --new-model $MODEL --steps $WEAK_SFT_STEPS --batch-size $SFT_BATCH --lr 2e-3 --out "$OUT/weak_sft"

# 5. policy RL from the same warm start and seeds: GRPO, FAPO with the GenRM, FAPO with the oracle,
#    and (--full) strict, where a flawed positive scores like a wrong answer. Each (arm, seed) run is one
#    process of one thread, LANES of them side by side: on two cores, two such runs take about 2/3 of
#    the wall time of two 2-rank torchrun runs one after the other, which spend a third of theirs
#    starting up (docs/toyworld.md, "Where the time goes"). Each run's final policy is evaluated on the
#    held-out splits (temperature 1, and with --full again on test and shift at the paper's top-p 0.7; the oracle
#    judges flaws) as soon as it ends, like the warm start and the GenRMs, so a stopped demo keeps the
#    runs it finished. Every job logs to OUT/logs/; a stop (Ctrl-C) reaches each RL run, which
#    saves its step and exits.
declare -A FLAGS=([grpo]="--lam 0 --judge none" [fapo]="--lam 1 --judge genrm"   # + the step-RL GenRM of its seed
                  [fapo_oracle]="--lam 1 --judge oracle" [strict]="--lam 2 --judge oracle")
EVAL="$ONE -m fapo_mini.toyeval --data $OUT/data --out $OUT/eval --temperature 1.0 --max-new-tokens 64"
# the same policies as the paper evaluates its own (temperature 1.0, top-p 0.7), on test and shift
EVAL_TOP_P="$ONE -m fapo_mini.toyeval --data $OUT/data --out $OUT/eval_top_p --splits test,shift --temperature 1.0 --top-p 0.7 --max-new-tokens 64"
mkdir -p "$OUT/logs"
timed() {  # timed NAME LOG command...: run it, its stderr to LOG, and add its seconds to OUT/jobs.tsv
  local name=$1 log=$2 t0=$EPOCHREALTIME; shift 2
  echo "\$ $*" >> "$log"                              # the command, as a user would type it
  "$@" 2>> "$log" || { echo "error: $name failed; the end of $log:" >&2; tail -5 "$log" >&2; return 1; }
  record "$OUT/jobs.tsv" "$name" "$t0"
}
genrm_eval() {  # genrm_eval NAME MODEL: the GenRM's verdicts on held-out critic rows, greedy
  timed genrm_eval "$OUT/logs/genrm_eval_$1.log" $ONE rollout.py --model "$2" --data "$OUT/genrm_data/critic_test.jsonl" \
    --n 1 --temperature 0 --max-new-tokens 160 --batch-size 256 --out "$OUT/eval/genrm_$1.jsonl" \
    > "$OUT/logs/genrm_eval_$1.out" && tail -1 "$OUT/logs/genrm_eval_$1.out" > "$OUT/eval/genrm_$1.json"
}
train() {  # train NAME LOG RUN MODEL STEPS ARM SEED: one policy RL run, one process of one thread
  local judge=""; [ "$6" = fapo ] && judge="--genrm $(last_ckpt "$OUT/genrm_rl/step_s$7")"
  timed "$1" "$2" $ONE train_policy.py --model "$4" --data "$OUT/data/train.jsonl" --out "$3" \
    ${FLAGS[$6]} $judge --seed $7 --steps $5 --prompts-per-step $PPS --group-size 8 --max-new-tokens 64 \
    --lr 1e-4 --warmup 2 --mini-batches 1 --genrm-max-new-tokens 160 >> "$2"
}
evals() {  # evals LOG NAME=MODEL: one policy's held-out evaluations, at top-p 1.0 and (--full) at the paper's 0.7
  timed eval "$1" $EVAL "$2" && { [ "$FULL" = 0 ] || timed eval_top_p "$1" $EVAL_TOP_P "$2"; }
}
rl_run() {  # rl_run ARM SEED: train, then evaluate the final policy unless the run was stopped first
  local arm=$1 seed=$2 run="$OUT/rl/$1_s$2" log="$OUT/logs/$1_s$2.log"
  echo "== rl_$arm seed $seed: log in $log" >&2
  train rl_$arm "$log" "$run" "$OUT/policy_sft" $RL_STEPS $arm $seed
  [ -d "$run/ckpt/step_$(printf %08d $RL_STEPS)" ] || { echo "rl_$arm seed $seed stopped before step $RL_STEPS" >&2; return 0; }
  evals "$log" "${arm}_s$seed=$(last_ckpt "$run")"
}
genrm_rl() {  # genrm_rl REWARD SEED: GenRM RL from its warm start, then the evaluation of its last step
  local run="$OUT/genrm_rl/$1_s$2" log="$OUT/logs/genrm_rl_$1_s$2.log"
  echo "== genrm_rl $1 seed $2: log in $log" >&2
  timed genrm_rl_$1 "$log" $ONE train_genrm.py --model "$OUT/genrm_sft" --data "$OUT/genrm_data/critic_train.jsonl" \
    --reward $1 --seed $2 --out "$run" --steps $GENRM_RL_STEPS --prompts-per-step $GENRM_PPS --group-size 8 \
    --max-new-tokens 160 --lr 1e-4 --warmup 2 >> "$log"
  [ -d "$run/ckpt/step_$(printf %08d $GENRM_RL_STEPS)" ] || { echo "genrm_rl $1 seed $2 stopped early" >&2; return 1; }
  genrm_eval "rl_$1_s$2" "$(last_ckpt "$run")"
}
fapo_run() {  # fapo_run SEED: the step-wise GenRM of that seed, then the FAPO-GenRM policy run it judges
  genrm_rl step $1 && rl_run fapo $1
}
early_run() {  # early_run ARM SEED: RL from the weak warm start; its training accuracy per step is the measure
  echo "== early_$1 seed $2: log in $OUT/logs/early_$1_s$2.log" >&2
  train early_$1 "$OUT/logs/early_$1_s$2.log" "$OUT/early/$1_s$2" "$OUT/weak_sft" $WEAK_RL_STEPS $1 $2
}
running=0
stop_jobs() {  # stop_jobs STATUS: SIGTERM to every running job's process group, wait until each is gone, exit.
  trap '' INT TERM   # A job's shell ends at once (no evaluation follows); its RL run finishes its step and saves
  local groups=$(jobs -p) pgid
  for pgid in $groups; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  for pgid in $groups; do while kill -0 -- "-$pgid" 2>/dev/null; do sleep 0.2; done; done
  exit "$1"
}
lane() {  # lane FUNCTION ARGS...: run it in the background as soon as fewer than LANES jobs run
  if [ "$running" -ge "$LANES" ]; then wait -n || stop_jobs 1; running=$((running - 1)); fi
  "$@" &
  running=$((running + 1))
}
trap 'echo "demo: stopping; each RL run saves its step" >&2; stop_jobs 130' INT TERM
set -m                                               # each job in its own process group: a stop reaches it once
N_RUNS=$(( ($(wc -w <<< "$ARMS") + 2 * FULL + 2) * SEEDS ))
echo "== rl_and_eval: $N_RUNS RL runs (GenRM step outcome, policy $ARMS x $SEEDS seeds$([ "$FULL" = 1 ] && echo ", early phase: fapo_oracle strict")) and the evaluations, $LANES side by side; logs in $OUT/logs" >&2
t0=$EPOCHREALTIME
for seed in $(seq 1 $SEEDS); do lane fapo_run $seed; done          # the longest chains first
for seed in $(seq 1 $SEEDS); do lane genrm_rl outcome $seed; done
lane genrm_eval sft "$OUT/genrm_sft"
lane evals "$OUT/logs/eval_warm_start.log" warm_start="$OUT/policy_sft"
for seed in $(seq 1 $SEEDS); do
  for arm in $ARMS; do [ "$arm" = fapo ] || lane rl_run $arm $seed; done
done
if [ "$FULL" = 1 ]; then
  for seed in $(seq 1 $SEEDS); do for arm in fapo_oracle strict; do lane early_run $arm $seed; done; done
fi
while [ "$running" -gt 0 ]; do wait -n || stop_jobs 1; running=$((running - 1)); done
set +m; trap - INT TERM
record "$OUT/times.tsv" rl_and_eval "$t0"
$PY -m fapo_mini.toyreport --out "$OUT"
