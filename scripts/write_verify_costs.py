"""Write-verify cost in device operations for given verified fractions, as a committed record (REPRODUCTION §4f).

The write-verify study's raw results were not kept, so its report has no cost table; the cost follows from the
verified fraction of each model (the report's table), the model's weight count and nvcim.writeverify.CycleModel.
This script writes those inputs and the result to one CSV, so every number the section quotes is in a file:

    python scripts/write_verify_costs.py --fractions 0.05,0.02,0.05 --out docs/reproduction/write_verify/costs.csv

Defaults: VGG-8 x0.25 on 1-channel 32x32 inputs (MNIST 5k), 8-bit weights on 2-bit devices, σ_d 0.2, residual σ
0.03 (the Monte Carlo's verified devices), one pulse and one read per iteration.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from torch import nn


def main(argv=None) -> int:
    from nvcim.core.config import DeviceConfig
    from nvcim.io.files import atomic_write_bytes
    from nvcim.models import create_model
    from nvcim.writeverify import CycleModel, verify_tolerance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg8")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--residual", type=float, default=0.03)
    p.add_argument("--fractions", required=True, help="verified fraction per seed, comma-separated (seeds 0, 1, ...)")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        print(f"write_verify_costs: --fractions {args.fractions!r} is not a list of numbers: e.g. 0.05,0.02",
              file=sys.stderr)
        return 2
    with torch.device("meta"):
        model = create_model(args.model, 10, args.in_channels, width=args.width)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    device = DeviceConfig(sigma=args.sigma)
    per_weight = device.weight_bits // device.device_bits  # devices per weight (bit slices)
    cycle = CycleModel()
    iterations = cycle.iterations(args.sigma, args.residual)
    rows = []
    for seed, fraction in enumerate(fractions):
        verified = round(fraction * weights) * per_weight
        rows.append({"model": args.model, "width": args.width, "weights": weights, "devices_per_weight": per_weight,
                     "devices": weights * per_weight, "sigma_d": args.sigma, "residual_sigma": args.residual,
                     "tolerance_delta": round(verify_tolerance(args.sigma, args.residual), 4),
                     "iterations_per_device": round(iterations, 3),
                     "operations_per_device": round(cycle.operations_per_device(args.sigma, args.residual), 3),
                     "seed": seed, "fraction": fraction, "verified_devices": verified,
                     "operations": round(cycle.operations(verified, args.sigma, args.residual))})
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue().encode())
    print(buf.getvalue(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
