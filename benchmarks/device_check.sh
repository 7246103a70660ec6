#!/usr/bin/env bash
# The prepared accelerator check (benchmarks/device_check.py): every train
# step at the reference settings, timed on the GPU/TPU present, one table.
#
#   bash benchmarks/device_check.sh [--out=DIR] [--small] [--no_twin]
#
# Runs from the working tree without installing it. Needs on that machine:
# jax with its accelerator plugin, flax, optax, orbax-checkpoint,
# ml_collections, absl-py, numpy; optional: torch with CUDA (the PyTorch
# twin). No network. Under 8 minutes on one H100.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing="$(python - <<'PY'
import importlib.util
need = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'absl', 'numpy')
print(' '.join(m for m in need if importlib.util.find_spec(m.split('.')[0]) is None))
PY
)"
if [[ -n "$missing" ]]; then
  echo "error: device_check needs these Python packages: $missing (pip install -r requirements.txt, plus jax's plugin for the device)" >&2
  exit 2
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec python "$repo/benchmarks/device_check.py" "$@"
