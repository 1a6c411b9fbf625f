"""How much of each model's accuracy rides on its BatchNorm statistics? (REPRODUCTION.md §4d)

    python scripts/bn_recalibration_study.py repro_out/beta200 --sigma 0.3 --runs 20 --out docs/reproduction/bn_recalibration.md

For every finished sweep cell tested at --sigma (vanilla, and the methods trained at that σ), it
evaluates the cell's checkpoint on the same --runs programmed chips (the first chips of the sweep's
own evaluation, same seed; checked) three ways:
  stored      the checkpoint as trained (BatchNorm statistics gathered during training: under noisy
              weights for noise injection and OVF);
  clean-recal BatchNorm statistics re-estimated from the first --calib-images training images with
              the clean float weights (`nvcim eval --recalibrate-bn`), then the same chips;
  chip-recal  per programmed chip, the statistics re-estimated from the first --chip-calib-images
              training images *with that chip's weights* (what a deployed chip could do with a few
              unlabeled images, since BatchNorm sits in the digital periphery), then the test set
              (`nvcim eval --recalibrate-bn-per-chip`).
Clean accuracy (float weights, no noise) is reported for the first two. Prints a Markdown table
(one row per cell) and writes it to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

from nvcim.batchnorm import ChipCalibration, recalibrate_batchnorm_
from nvcim.io.checkpoint import load_checkpoint
from nvcim.core.config import DeviceConfig
from nvcim.data import load_dataset
from nvcim.evaluate import monte_carlo_evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", help="sweep directories (cells/**/result.json with a checkpoint/ beside)")
    p.add_argument("--sigma", type=float, default=0.3, help="test σ_d (default 0.3)")
    p.add_argument("--runs", type=int, default=20, help="programmed chips per model (default 20)")
    p.add_argument("--calib-images", type=int, default=3600, help="training images for the clean recalibration")
    p.add_argument("--chip-calib-images", type=int, default=1000, help="training images per chip recalibration")
    p.add_argument("--out", help="write the Markdown table here too")
    args = p.parse_args(argv)

    rows = []
    for sweep in args.sweeps:
        for result in sorted(Path(sweep).glob("cells/**/result.json")):
            ckpt = result.parent / "checkpoint"
            if not ckpt.is_dir():
                continue
            model, config = load_checkpoint(ckpt)
            method = config["method"]["name"]
            train_sigma = float(config["device"]["sigma"])
            if method != "vanilla" and abs(train_sigma - args.sigma) > 1e-9:
                continue
            cfg = DeviceConfig.from_dict(config["device"]).replace(sigma=args.sigma)
            d = config["data"]
            splits = load_dataset(d["name"], d.get("root"), val_fraction=d["val_fraction"], seed=d["seed"], limit=d.get("limit"))
            swept = next((r for r in json.loads(result.read_text())["results"] if abs(r["sigma"] - args.sigma) < 1e-9), None)
            if swept is None:
                print(f"skipping {result.parent}: not tested at σ_d = {args.sigma:g} in its sweep", file=sys.stderr)
                continue
            seed = int(swept["seed"])
            stored = monte_carlo_evaluate(model, splits.test, cfg, runs=args.runs, seed=seed)
            # the sweep's own evaluation used the same chips: its first runs must agree (up to float ties)
            diff = max(abs(a - b) for a, b in zip(swept["per_run_accuracy"], stored.to_dict()["per_run_accuracy"]))
            if diff > 0.15:
                print(f"warning: {result.parent}: chips differ from the sweep's evaluation (by {diff:.2f} points)", file=sys.stderr)
            clean_model = recalibrate_batchnorm_(copy.deepcopy(model), splits.train, max_images=args.calib_images)
            recal = monte_carlo_evaluate(clean_model, splits.test, cfg, runs=args.runs, seed=seed)
            per_chip = monte_carlo_evaluate(model, splits.test, cfg, runs=args.runs, seed=seed, baselines=False,
                                            bn_calibration=ChipCalibration(splits.train, images=args.chip_calib_images))
            chip = per_chip.to_dict()["per_run_accuracy"]
            cell = result.parent.relative_to(Path(sweep) / "cells").as_posix()
            rows.append((cell, stored.clean_accuracy, stored.mean, recal.clean_accuracy, recal.mean,
                         statistics.fmean(chip), min(chip)))
            print(f"{cell}: stored clean {stored.clean_accuracy:.1f} noisy {stored.mean:.2f} | clean-recal clean "
                  f"{recal.clean_accuracy:.1f} noisy {recal.mean:.2f} | chip-recal noisy {statistics.fmean(chip):.2f}",
                  flush=True)

    lines = [
        f"BatchNorm statistics and accuracy at σ_d = {args.sigma:g}: {args.runs} chips per model (the sweep's first chips), "
        f"clean recalibration from {args.calib_images} training images, per-chip recalibration from "
        f"{args.chip_calib_images}.",
        "",
        f"`python scripts/bn_recalibration_study.py {' '.join(args.sweeps)} --sigma {args.sigma:g} --runs {args.runs} "
        f"--calib-images {args.calib_images} --chip-calib-images {args.chip_calib_images}`",
        "",
        "| cell | stored: clean % | stored: noisy mean % | clean-recal: clean % | clean-recal: noisy mean % "
        "| chip-recal: noisy mean % | chip-recal: worst % |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {c} | {a:.1f} | {b:.2f} | {e:.1f} | {f:.2f} | {g:.2f} | {h:.1f} |" for c, a, b, e, f, g, h in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
