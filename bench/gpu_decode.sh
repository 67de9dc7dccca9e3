#!/usr/bin/env bash
# GPU decoding's figures, on a machine with an NVIDIA GPU (run from the repository's root):
#
#   bench/gpu_decode.sh [OUTPUT]          # default OUTPUT: gpu_decode.txt
#
# Needs the project installed with the gpu and dev extras in the Python it runs
# (pip install -e '.[gpu,dev]'; PYTHON=... to choose another interpreter than .venv/bin/python).
# It writes everything it prints to OUTPUT:
#   1. the GPU, the driver and whether nvImageCodec has a device (it stops if not);
#   2. the decoding tests, with the parity of GPU against CPU decoding
#      (tests/integration/test_decoding_parity.py::test_gpu_decoding_agrees_with_cpu_decoding);
#   3. bench.decode --device cuda: time per image, GPU decoding against full CPU decoding;
#   4. bench.engine from DICOM at batch 32 against the bare engine (target >= 0.5x), decoding
#      on the GPU, then on the CPU at reduced size, then on the CPU in full, in the same session.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_decode.txt}
py=${PYTHON:-.venv/bin/python}
workers=${WORKERS:-$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))}
{
    echo "# bench/gpu_decode.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$py" - <<'PY'
import importlib.metadata as m
import torch
from node.inference.decoders import gpu_decoder
for name in ("torch", "nvidia-nvimgcodec-cu12", "pillow", "pylibjpeg-openjpeg", "pydicom"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} not installed")
print("CUDA available:", torch.cuda.is_available())
decoder = gpu_decoder()
print("nvImageCodec decoder:", decoder)
if decoder is None:
    raise SystemExit("no GPU decoding here: install the gpu extra on a machine with a CUDA device")
PY
    echo "## decoding tests (GPU parity included)"
    "$py" -m pytest tests/unit/test_decoders.py tests/integration/test_decoding_parity.py -q -rs -s -p no:cacheprovider || true
    echo "## bench.decode --device cuda"
    "$py" -m bench.decode --device cuda --rounds 5
    for decoding in "--decode-device cuda" "--decode-device cpu" "--decode-device cpu --full-decoding"; do
        echo "## bench.engine --device cuda --batches 32 --precisions bf16 --workers $workers $decoding"
        # shellcheck disable=SC2086
        "$py" -m bench.engine --device cuda --batches 32 --precisions bf16 --repeats 5 \
            --workers "$workers" $decoding
    done
} 2>&1 | tee "$out"
