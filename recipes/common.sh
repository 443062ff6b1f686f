# Sourced by the three recipes: paths, the model-folder check, and the dry-run switch.
#
# DRY_RUN=1 turns a recipe into a CPU rehearsal of itself: the GPUs are hidden, each rank
# runs one thread, and `tiny MODEL_KIND DIR` writes a random tiny model of the real
# architecture (recipes/tiny_model.py) for the recipe to use in place of the real one.
# Everything else (the converter, torchrun, the trainer's flags) is the real run's code path.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
TORCHRUN=${TORCHRUN:-torchrun}
DRY_RUN=${DRY_RUN:-0}

if [[ $DRY_RUN == 1 ]]; then
    export CUDA_VISIBLE_DEVICES=""          # CPU and gloo even on a GPU machine
    export OMP_NUM_THREADS=1
fi

# need_model DIR HINT: stop with HINT unless DIR is a Hugging Face model folder
need_model() {
    if [[ ! -f $1/config.json ]]; then
        echo "error: '$1' is not a model folder (no config.json); $2" >&2
        exit 1
    fi
}

# tiny qwen2|qwen3 DIR: a random tiny model of that architecture, for DRY_RUN=1
tiny() {
    [[ -f $2/config.json ]] || "$PYTHON" -m recipes.tiny_model --like "$1" --out "$2"
}
