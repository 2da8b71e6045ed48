#!/usr/bin/env bash
# The checks that need a GPU, in about 3 minutes on one (under 5): the pipeline bench on CUDA for both bundled
# models (per-stage ms per image, images/s, the MVTec-size projection on that device), then the agreement of the
# scorer running on the GPU with the CPU one (tests/test_batch_scoring.py, device route on cuda, to 1e-6), and the
# few-shot k-NN maps per image and layer on CUDA against the backbone (method=anomalydino on DINOv2 at 448 px,
# method=patchcore on EfficientNet-Lite0, 16 shots), and the dataset-level accumulators on the GPU against the CPU
# (tests/test_pooled_stream.py, to 1e-6) with their milliseconds per image on each device.
# Everything it prints is also written under $OUT (default outputs/gpu_check). Without CUDA it stops at once.
#
#   scripts/gpu_check.sh                    # from the repository root or anywhere
#   PYTHON=.venv/bin/python OUT=/tmp/gpu scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-outputs/gpu_check}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "error: $PY cannot import torch; set PYTHON to the project's interpreter (PYTHON=.venv/bin/python); nothing was run" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: scripts/gpu_check.sh needs a CUDA device, and torch ($PY) sees none; nothing was run" >&2
  exit 2
fi
mkdir -p "$OUT"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')" | tee "$OUT/device.txt"
start=$(date +%s)
timeout 210 "$PY" -m layerscope.cli.bench --pipeline --device cuda --rounds 2 \
  --models dinov2_vits14_bundled efficientnet_lite0_bundled --out "$OUT/bench_pipeline_cuda.csv" 2>&1 \
  | tee "$OUT/bench_pipeline_cuda.txt"
timeout 60 "$PY" -m pytest tests/test_batch_scoring.py -q -p no:cacheprovider -k "device_route" 2>&1 \
  | tee "$OUT/agreement.txt"
grep -q "passed" "$OUT/agreement.txt" && ! grep -q "failed\|skipped" "$OUT/agreement.txt"
# the dataset-level accumulators on the GPU: the CPU's rows to 1e-6, then their time per image on both devices
timeout 60 "$PY" -m pytest tests/test_pooled_stream.py -q -p no:cacheprovider -k "cuda_accumulators or packed" 2>&1 \
  | tee "$OUT/stream_agreement.txt"
grep -q "2 passed" "$OUT/stream_agreement.txt" && ! grep -q "failed\|skipped" "$OUT/stream_agreement.txt"
timeout 60 "$PY" -m layerscope.bench.stream --images 64 --batch 16 --devices cpu cuda 2>&1 | tee "$OUT/stream_time.txt"
timeout 120 "$PY" -m layerscope.cli.bench --knn --device cuda --rounds 3 --shots 16 --out "$OUT/bench_knn_cuda.csv" 2>&1 \
  | tee "$OUT/bench_knn_cuda.txt"
echo "gpu check done in $(( $(date +%s) - start )) s; outputs in $OUT"
