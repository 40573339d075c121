#!/usr/bin/env bash
# GPU acceptance check: the whole lifecycle on CUDA, one table of pass/fail and figures (see tools/gpu_check.py).
# Exits 2 at once where there is no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
exec python tools/gpu_check.py "$@"
