"""How much noise the NeFT presets' per-weight fold really puts on a trained model (REPRODUCTION.md §4h).

The fold (variation "weight_band", SPEC §8) makes the devices of weights with 0.25 < |W|/s < 0.75 S times
noisier and divides every weight's noise by sqrt(0.4 S² + 0.6), which keeps the mean variance at σ_d² when
40 % of the weights lie in that middle band. This prints, per checkpoint, the share of its noisy weights in
the middle band and the mean noise variance over its weights in units of σ_d² for S = 1, 2, 4, 6 (the
presets rram1, fefet2, rram4, fefet6), as a CSV.

    python scripts/weight_bands.py CKPT_DIR... > weight_bands.csv     # a checkpoint directory or a sweep's cells/
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import torch

import nvcim
from nvcim.io.checkpoint import load_checkpoint

PRESETS = {"rram1": 1.0, "fefet2": 2.0, "rram4": 4.0, "fefet6": 6.0}


def bands(ckpt: Path) -> dict:
    model, _ = load_checkpoint(ckpt)
    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.1))  # the layers nvcim makes noisy by default
    ratios = []
    for p in nvcim.noisy_parameters(model):
        w = p.weight.detach().abs().flatten().double()  # [n]
        s = float(w.max())
        ratios.append(w / s if s > 0 else w * 0)
    r = torch.cat(ratios)  # [all noisy weights]
    middle = float(((r > 0.25) & (r < 0.75)).double().mean())
    row = {"checkpoint": str(ckpt), "weights": int(r.numel()), "middle_band_share": round(middle, 4)}
    for name, s_factor in PRESETS.items():  # mean of the per-weight variance factor (S² or 1) / (0.4 S² + 0.6)
        row[f"mean_variance_{name}"] = round((middle * s_factor**2 + (1 - middle)) / (0.4 * s_factor**2 + 0.6), 4)
        row[f"mean_std_{name}"] = round(math.sqrt(row[f"mean_variance_{name}"]), 4)
    return row


def main(args: list[str]) -> None:
    ckpts = []
    for a in args:
        p = Path(a)
        ckpts += sorted(c.parent for c in p.rglob("config.json")) if not (p / "config.json").exists() else [p]
    rows = [bands(c) for c in ckpts]
    out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    out.writeheader()
    out.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
