#!/usr/bin/env bash
# Runs the CPU reproduction of REPRODUCTION.md (issue 6) on 2 cores and writes the report.
# Resumable: rerun the same command after an interruption and finished cells are skipped.
#   bash scripts/run_repro_cpu.sh [OUT=repro_out] [SPEC ...]
# With no SPEC, runs every spec below in order (≈ 27 hours on 2 cores); with SPECs (names from
# the list, e.g. beta_search_200chips), only those. Each spec's sweep goes to OUT/<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-repro_out}
shift || true
PY=${PY:-.venv/bin/python}
# spec name (experiments/repro/<name>.toml) : output folder under OUT
ALL="main_mnist5k:main convergence_mnist5k:convergence ablation_mnist5k:ablation fashion_mnist:fashion
beta_search_200chips:beta200 ablation_beta_mnist5k:ablation_beta fashion_mnist_full:fashion_full
beta_search_200chips_grid:beta200_grid beta_search_200chips_5seeds_s0.3:beta200_5seeds_s0.3 beta_search_200chips_5seeds_s0.2:beta200_5seeds_s0.2 beta_search_200chips_5seeds_s0.1_s0.4:beta200_5seeds_s0.1_s0.4 beta_search_200chips_s01:beta200_s01 convergence_200chips:convergence200
resnet18_mnist5k:resnet18 resnet18_mnist5k_s02:resnet18_s02 fashion_mnist_full_ablation:fashion_full_ablation
resnet18_mnist5k_s01:resnet18_s01 ablation_200chips:ablation200 ablation_200chips_5seeds_s0.3:ablation200_5seeds_s0.3 resnet18_ablation_s02:resnet18_ablation
fashion_mnist_full_s02_s035:fashion_full_s02_s035 resnet18_convergence_s02:resnet18_convergence
fashion_mnist_full_s01_s04:fashion_full_s01_s04 fashion_mnist_full_ablation_s035:fashion_full_ablation_s035
fashion_mnist_full_convergence_s035:fashion_full_convergence rcn_mnist5k_s02:rcn_s02 devices_mnist5k:devices
convergence_10seeds_mnist5k:convergence10 convergence_10seeds_tempered_mnist5k:convergence10_tempered
convergence_10seeds_tempered_search_mnist5k:convergence10_tempered_search
fashion_mnist_full_convergence_10seeds:fashion_convergence10 fashion_mnist_full_5seeds:fashion_full_5seeds convergence_correctnet_mnist5k:convergence_correctnet
tempered_scale_edge_mnist5k:tempered_scale_edge correctnet_sigma0.2_mnist5k:correctnet_s0.2"
WANT=" $* "
for pair in $ALL; do
  spec=${pair%%:*}; dir=${pair##*:}
  if [ $# -gt 0 ] && [[ "$WANT" != *" $spec "* ]]; then continue; fi
  echo "== $spec -> $OUT/$dir ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  $PY -m nvcim sweep "experiments/repro/$spec.toml" --out "$OUT/$dir" --workers 2 || echo "sweep $spec: some cells failed (see $OUT/$dir/cells/*/failed.json)"
  echo "== $spec done in $(( $(date +%s) - start )) s"
done
# full Fashion-MNIST's vanilla models do not depend on σ: fashion_mnist_full's are also tested at the σ_d of
# fashion_mnist_full_s02_s035 and fashion_mnist_full_s01_s04 (20 chips, seed 0, as in the sweeps)
for s in 0 1 2; do
  ck="$OUT/fashion_full/cells/vgg8-w0.25/fashion_mnist/vanilla/seed$s/checkpoint"
  for pair in "0.2,0.35:seed$s.json" "0.1,0.4:seed${s}_s01_s04.json"; do
    sigmas=${pair%%:*}; res="$OUT/fashion_full_vanilla/${pair##*:}"
    if [ -f "$ck/config.json" ] && [ ! -f "$res" ]; then
      mkdir -p "$OUT/fashion_full_vanilla"
      OMP_NUM_THREADS=1 $PY -m nvcim eval "$ck" --sigmas "$sigmas" --runs 20 --seed 0 --out "$res"
    fi
  done
done
# the write-verify study (REPRODUCTION.md §4d) on the σ_d = 0.2 models of beta_search_200chips_grid
if [ -f "$OUT/beta200_grid/cells/vgg8-w0.25/mnist5k/ovf/s0.20/seed2/checkpoint/config.json" ]; then
  PY=$PY bash scripts/write_verify_study.sh "$OUT"
fi
# the device study (REPRODUCTION.md, "Other devices") on the checkpoints of devices_mnist5k
if [ -f "$OUT/devices/cells/vgg8-w0.25/mnist5k/ni-scale-1_4____OVF_beta_0_/s0.30/seed2/checkpoint/config.json" ]; then
  PY=$PY bash scripts/device_study.sh "$OUT"
fi
$PY -m nvcim report "$OUT" --out "$OUT/report"
