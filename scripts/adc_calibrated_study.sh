#!/usr/bin/env bash
# REPRODUCTION.md section 4g, "A calibrated clip recovers nearly all of it" (session 17): the noise-injection
# checkpoints of experiments/repro/devices_mnist5k.toml (seed 0, σ_d 0.2 and 0.3) under 8/6/4-bit ADCs per bit
# slice with the full-scale range and with the calibrated clip (experiments/devices/adc*.toml), 20 chips from
# seed 0 on the first 500 test digits, one device-model matrix per σ, both σ at once (one thread each).
#   bash scripts/adc_calibrated_study.sh [CELLS=repro_out/devices/cells/vgg8-w0.25/mnist5k/noise_injection]
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-repro_out/devices/cells/vgg8-w0.25/mnist5k/noise_injection}
PY=${PY:-.venv/bin/python}
D=experiments/devices
OUT=docs/reproduction/adc_calibrated
DEV="gaussian,$D/adc8.toml,$D/adc8_calibrated.toml,$D/adc6.toml,$D/adc6_calibrated.toml,$D/adc4.toml,$D/adc4_calibrated.toml"
mkdir -p "$OUT"
for s in 0.20 0.30; do
  OMP_NUM_THREADS=1 $PY -m nvcim eval "$C/s$s/seed0/checkpoint" --sigma $s --device-models "$DEV" --runs 20 \
    --limit 500 --seed 0 --no-progress --out "$OUT/adc_s$s.json" --csv "$OUT/adc_s$s.csv" &
done
wait
