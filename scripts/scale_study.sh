#!/usr/bin/env bash
# The scale study of issue 19 (point 3): where do the OVF - noise injection and OVF - tempered noise
# injection gaps go as the training budget grows? VGG-8 on the offline MNIST 5k subset at σ_d 0.3 and
# 0.35: widths 1/4 and 1/2 x epochs 3 / 12 / 30 (experiments/scale/*.toml, 5 seeds, β and the logit scale
# searched on validation), then full width x 12 epochs with 2 seeds, β and the scale fixed at the values
# the 1/2-width x 12-epoch searches chose most often (so its cost holds), then `nvcim report` over all.
# Sized for a GPU (DEVICE=cuda, several cells at once); on 2 CPU cores it takes days.
# Resumable: every sweep resumes its finished cells.
#   DEVICE=cuda WORKERS=8 bash scripts/scale_study.sh [OUT=scale_out]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-scale_out}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT/specs"
sweep() {  # spec file, name: the spec with [train] device set to $DEVICE, swept into $OUT/name
  sed "s/^device = \"cpu\"/device = \"$DEVICE\"/" "$1" > "$OUT/specs/$2.toml"
  $PY -m nvcim sweep "$OUT/specs/$2.toml" --out "$OUT/$2" --workers "$WORKERS" --quiet || echo "$2: some cells failed"
}
for w in 0.25 0.5; do for e in 3 12 30; do sweep "experiments/scale/vgg8_w${w}_e${e}.toml" "w${w}_e${e}"; done; done
# The full-width arm: β and the logit scale most often chosen at 1/2 width, 12 epochs (both σ, all seeds).
$PY - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
chosen = {}
for method in ("ovf", "tempered_noise_injection"):
    picks = [json.loads(p.read_text())["cell"]["beta_search"]["chosen_beta"]
             for p in sorted((out / "w0.5_e12" / "cells" / "vgg8-w0.5" / "mnist5k" / method).glob("s*/seed*/result.json"))]
    if not picks:
        sys.exit(f"no finished {method} cell under {out}/w0.5_e12: run the 1/2-width sweep first")
    chosen[method] = statistics.mode(picks)
spec = (Path("experiments/scale/vgg8_w0.5_e12.toml").read_text()
        .replace('name = "scale-vgg8-w0.5-e12"', 'name = "scale-vgg8-w1-e12"').replace("width = 0.5", "width = 1.0")
        .replace("seeds = [0, 1, 2, 3, 4]", "seeds = [0, 1]")
        .replace("betas = [1e-2, 1e-3, 1e-4]", f"betas = [{chosen['ovf']!r}]"))
spec += f"\n[method_params.tempered_noise_injection]\nlogit_scale = {chosen['tempered_noise_injection']!r}\n"
(out / "specs" / "vgg8_w1_e12.toml").write_text(spec)
print(f"full width: β = {chosen['ovf']}, logit scale = {chosen['tempered_noise_injection']} (from 1/2 width, 12 epochs)")
PY
sed -i "s/^device = \"cpu\"/device = \"$DEVICE\"/" "$OUT/specs/vgg8_w1_e12.toml"
$PY -m nvcim sweep "$OUT/specs/vgg8_w1_e12.toml" --out "$OUT/w1_e12" --workers "$WORKERS" --quiet || echo "w1_e12: some cells failed"
$PY -m nvcim report "$OUT"/w* --out "$OUT/report"
