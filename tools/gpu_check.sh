#!/usr/bin/env bash
# GPU acceptance check: the whole lifecycle on CUDA, one table of pass/fail and figures (see tools/gpu_check.py).
# --rehearse runs every row on the CPU at tiny sizes. Exits 2 at once (one line) without torch or CUDA.
# The interpreter: $PYTHON if set (a virtual environment's python works without activating it), else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$py' here; set PYTHON to the one with the project's requirements"
    exit 2
fi
exec "$py" tools/gpu_check.py "$@"
