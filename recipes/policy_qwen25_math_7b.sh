#!/usr/bin/env bash
# The paper's policy, Qwen2.5-Math-7B, on one 8-GPU node under FSDP2 (--fsdp): 64 prompts x 8 a step.
# Everything else is recipes/policy_qwen25_math_1p5b.sh with SIZE=7b (its header has the knobs).
#
#   ARM=fapo MODEL=~/models/Qwen2.5-Math-7B GENRM=runs/genrm_qwen3_4b/ckpt/step_00000500/model \
#       bash recipes/policy_qwen25_math_7b.sh
#   DRY_RUN=1 ARM=fapo OUT=/tmp/dry_policy_7b bash recipes/policy_qwen25_math_7b.sh   # CPU rehearsal, --fsdp
#
# Qwen2.5-Math-7B is published with 4096 positions (the authors edit its config.json to 32768 for
# their 8192-token responses); prompt 512 + response 3072 stays inside the published 4096.
SIZE=7b exec bash "$(dirname "${BASH_SOURCE[0]}")/policy_qwen25_math_1p5b.sh" "$@"
