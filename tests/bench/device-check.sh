#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run, for a session lent a machine with one (the `device`
# tool): the CUDA tests against the float64 reference, then the benchmark's CUDA rows (the weights
# path against SDPA, its memory, and the blocked path at 32,768 and 131,072 positions with the host's
# waits for the device counted). Run from the repository root on that machine:
#
#     tests/bench/device-check.sh            # about 5 minutes on an H200
#
# That machine's python3 holds PyTorch, NumPy, Rich, Typer, safetensors, pytest and hypothesis, not
# orjson: carry its wheel for that Python (the device tool's README says how: `pip download --no-deps
# --only-binary=:all: --python-version 3.12 ... -d .whl orjson`), and this script installs what it
# finds in .whl/ first. attncli itself runs from the checkout (PYTHONPATH), not installed.
set -uo pipefail
out=${OUT:-/tmp/attncli-device}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
status=0
python3 -m pytest -m cuda -p no:xdist -p no:cacheprovider -q -rs $(grep -l "mark.cuda" tests/test_*.py) 2>&1 | tee "$out/cuda-tests.txt" || status=1
python3 tests/bench/bench.py --no-fail --quick --only memory --only time --only long 2>&1 | tee "$out/bench-cuda.txt" || status=1
exit $status
