#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it runs):
#
#   bench/gpu_check.sh                  writes gpu_check.json in the repository root
#   bench/gpu_check.sh /tmp/g.json      or there; further arguments go to gpu_check.py
#
# Under 8 minutes on one H100 / H200 with torch + CUDA + transformers; installs nothing, no network.
# Without CUDA it runs every part at tiny sizes on CPU (the JSON says "tiny": true).
# PYTHON picks the interpreter (default: python3; many images have no `python`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check.json}"
[ $# -gt 0 ] && shift
# the driver starts no part after 450 s and bounds each part by what is left; 470 s is the hard stop
exec timeout 470 "${PYTHON:-python3}" bench/gpu_check.py --out "$OUT" --budget-s 450 "$@"
