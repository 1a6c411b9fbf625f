#!/usr/bin/env bash
# Runs the CPU reproduction of REPRODUCTION.md (issue 6) on 2 cores and writes the report.
# Resumable: rerun the same command after an interruption and finished cells are skipped.
#   bash scripts/run_repro_cpu.sh [OUT=repro_out]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-repro_out}
PY=${PY:-.venv/bin/python}
for spec in main_mnist5k convergence_mnist5k ablation_mnist5k fashion_mnist; do
  name=${spec%_mnist5k}; [ "$spec" = fashion_mnist ] && name=fashion
  echo "== $spec ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  $PY -m nvcim sweep "experiments/repro/$spec.toml" --out "$OUT/$name" --workers 2 || echo "sweep $spec: some cells failed (see $OUT/$name/cells/*/failed.json)"
  echo "== $spec done in $(( $(date +%s) - start )) s"
done
$PY -m nvcim report "$OUT" --out "$OUT/report"
