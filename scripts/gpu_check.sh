#!/usr/bin/env bash
# The GPU checks of #7 in one call on a lent CUDA machine (torch and Triton preinstalled there):
# the GPU parity suite on both paths, the Triton kernel tests compiled, then the GPU benchmark.
# Usage: bash scripts/gpu_check.sh [--sweep]   (writes logs to $OUT when set)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp}"
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 python3 -m pytest -q -x -m gpu -n 8 -p no:cacheprovider tests/nn/test_batchnorm_gpu.py >"$OUT/gpu_tests.log" 2>&1
echo "gpu parity: rc=$?"; tail -5 "$OUT/gpu_tests.log"
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider tests/nn/test_batchnorm_triton.py >"$OUT/triton_tests.log" 2>&1
echo "triton tests: rc=$?"; tail -5 "$OUT/triton_tests.log"
timeout 300 python3 scripts/bench_bn_gpu.py "$@" 2>&1 | tee "$OUT/bench_bn_gpu.log"
