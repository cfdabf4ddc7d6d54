#!/usr/bin/env bash
# The GPU suite from any directory, with the checkout's src/ on the path (no pip install needed):
#   benchmarks/gpu_suite.sh                                   # every part, on the GPU
#   benchmarks/gpu_suite.sh --parts resnet50_peers,ddp
#   benchmarks/gpu_suite.sh --device cpu --quick --out-dir /tmp/smoke
# Python: $PYTHON if set, else the checkout's .venv, else python3. See benchmarks/gpu_suite.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
