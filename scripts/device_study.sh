#!/usr/bin/env bash
# The device study of REPRODUCTION.md ("Other devices", issue 18): the vanilla / noise injection / OVF /
# noise injection x 1/4 checkpoints of experiments/repro/devices_mnist5k.toml (σ_d 0.2 and 0.3, seeds 0-2,
# all trained under the paper's Gaussian device) evaluated under every device model: the four NeFT
# presets (rram1 is the Gaussian device itself: S = 1), stuck-at faults (Chen et al. 2015), read noise, drift
# at 1 h / 1 day / 1 year with and without compensation (experiments/devices/*.toml), on common random numbers
# (30 chips from seed 0 on the first 500 test digits per cell: chips differ by ~10 points at these σ, so
# chips buy more precision than images), then the 4/6/8-bit ADCs and, with the aihwkit extra installed,
# aihwkit's PCM inference model one hour after programming (an independent noise model; 10 chips on the
# first 200 test digits per cell: both are slow on CPU), and the same 4/6/8-bit ADCs with the calibrated clip
# (experiments/devices/adc*_calibrated.toml: each chip's ranges measured on the first 128 of those digits), and
# what is left at 16 bits and with a differential readout (adc16_calibrated.toml, adc6_calibrated_differential.toml),
# and the 6-bit calibrated clip calibrated on training digits instead (--adc-calibration train).
# One matrix per σ (rows: checkpoints, columns: device models), evaluated at that σ.
# Resumable: finished matrices are skipped. Two evaluations at a time, one thread each.
#   nvcim sweep experiments/repro/devices_mnist5k.toml --out repro_out/devices --workers 2
#   bash scripts/device_study.sh [OUT=repro_out]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-repro_out}
PY=${PY:-.venv/bin/python}
CELLS="$OUT/devices/cells/vgg8-w0.25/mnist5k"
DEST="$OUT/devices_matrix"
D=experiments/devices
DEVICES="gaussian,fefet2,rram4,fefet6,stuck-chen2015,$D/read_noise.toml"
for t in 1h 1d 1y; do DEVICES="$DEVICES,$D/drift_$t.toml,$D/drift_${t}_comp.toml"; done
ADCS="gaussian,$D/adc8.toml,$D/adc6.toml,$D/adc4.toml"
CALIBRATED="gaussian,$D/adc8_calibrated.toml,$D/adc6_calibrated.toml,$D/adc4_calibrated.toml"
READOUTS="gaussian,$D/adc16_calibrated.toml,$D/adc6_calibrated_differential.toml"
$PY -c "import aihwkit" 2>/dev/null && ADCS="$ADCS,aihwkit:pcm?t_inference=3600"
mkdir -p "$DEST"
ckpts() {  # the checkpoints of one σ, in a fixed order: method-major, seed-minor
  local s=$1 out=()
  for m in vanilla noise_injection ovf "ni-scale-1_4____OVF_beta_0_"; do
    for seed in 0 1 2; do
      local ck="$CELLS/$m/s$s/seed$seed/checkpoint"
      [ "$m" = vanilla ] && ck="$CELLS/$m/seed$seed/checkpoint"
      [ -f "$ck/config.json" ] || { echo "missing $ck: run the devices_mnist5k sweep first" >&2; exit 2; }
      out+=("$ck")
    done
  done
  echo "${out[@]}"
}
run() {  # σ, device list, chips, test images, output name[, more nvcim eval flags]
  local res="$DEST/$5.json"
  [ -f "$res" ] && return 0
  OMP_NUM_THREADS=1 $PY -m nvcim eval $(ckpts "$1") --sigma "$1" --device-models "$2" --runs "$3" --limit "$4" \
    --seed 0 --no-progress --out "$res" --csv "$DEST/$5.csv" "${@:6}" > "$DEST/$5.log" 2>&1
}
run 0.20 "$DEVICES" 30 500 devices_s0.20 & run 0.30 "$DEVICES" 30 500 devices_s0.30 & wait
run 0.20 "$ADCS" 10 200 adc_s0.20 & run 0.30 "$ADCS" 10 200 adc_s0.30 & wait
run 0.20 "$CALIBRATED" 10 200 adc_calibrated_s0.20 & run 0.30 "$CALIBRATED" 10 200 adc_calibrated_s0.30 & wait
run 0.20 "$READOUTS" 10 200 adc_readouts_s0.20 & run 0.30 "$READOUTS" 10 200 adc_readouts_s0.30 & wait
# the 6-bit calibrated clip again, each chip calibrated on the first 128 training digits instead of test ones
run 0.20 "gaussian,$D/adc6_calibrated.toml" 10 200 adc_train_calibrated_s0.20 --adc-calibration train &
run 0.30 "gaussian,$D/adc6_calibrated.toml" 10 200 adc_train_calibrated_s0.30 --adc-calibration train & wait
echo "done: $DEST"
