#!/usr/bin/env bash
# The write-verify study of REPRODUCTION.md (SPEC §7, the paper's sustainability claim): how many devices
# must be write-verified before a chip reaches a target accuracy, for vanilla, noise injection and OVF.
# Uses the σ_d = 0.2 models of the β-search sweep (run `bash scripts/run_repro_cpu.sh OUT
# beta_search_200chips_grid` first): seeds 0-2 ranked by sensitivity, seed 0 also by magnitude and at
# random (noise injection: all seeds by magnitude too); 30 chips per fraction on all 1,000 test digits,
# verified devices left at σ 0.03.
# Resumable: finished files are skipped. Two evaluations at a time, one thread each.
#   bash scripts/write_verify_study.sh [OUT=repro_out]
# then `nvcim report OUT/write_verify_s02` states the write-verify operations (pulses + reads, nvcim.writeverify.CycleModel;
# --verify-pulses / --verify-reads / --verify-max-iterations) each model needs to reach the target.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-repro_out}
PY=${PY:-.venv/bin/python}
CELLS="$OUT/beta200_grid/cells/vgg8-w0.25/mnist5k"
DEST="$OUT/write_verify_s02"
FRACTIONS=0,0.01,0.02,0.05,0.1,0.2,0.5,1
mkdir -p "$DEST"
jobs=()
for by in sensitivity magnitude random; do
  for s in 0 1 2; do
    for m in vanilla noise_injection ovf; do
      [ "$by" != sensitivity ] && [ "$s" != 0 ] && ! { [ "$by" = magnitude ] && [ "$m" = noise_injection ]; } && continue
      ck="$CELLS/$m/seed$s/checkpoint"
      [ "$m" != vanilla ] && ck="$CELLS/$m/s0.20/seed$s/checkpoint"
      res="$DEST/${m}_seed${s}_${by}.json"
      [ -f "$res" ] && continue
      [ -f "$ck/config.json" ] || { echo "missing $ck: run the beta_search_200chips_grid sweep first" >&2; exit 2; }
      jobs+=("$ck $res $by")
    done
  done
done
if [ ${#jobs[@]} -eq 0 ]; then echo "all evaluations done: $DEST"; exit 0; fi
printf '%s\n' "${jobs[@]}" |
  xargs -P 2 -L 1 bash -c 'OMP_NUM_THREADS=1 '"$PY"' -m nvcim eval "$0" --sigma 0.2 --runs 30 --seed 0 \
    --verify-fractions '"$FRACTIONS"' --verify-by "$2" --verify-target 80 --out "$1" > "$1.log" 2>&1 \
    && echo "done $1" || echo "FAILED $1 (see $1.log)"'
