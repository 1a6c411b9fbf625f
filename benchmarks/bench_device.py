"""Benchmark: cost of one noise draw for a whole VGG-8, as a ratio of one batch-128 forward pass.

Measures side by side, interleaved in one run (machines here are noisy; only ratios are meaningful):
  forward   one eval-mode forward of VGG-8 on a [128, 3, 32, 32] batch (clean weights)
  fast      one programmed draw of every conv/linear weight, Gaussian fast path (1 randn per weight)
  device    the same via the per-device path (M/K = 4 randn per weight, recombined)
  quantize  re-quantizing every weight (paid once per optimizer step in training, cached otherwise)
Goals (issues #2, #21 point 3): fast <= 0.10 forward, device <= 0.35 forward, at torch's default thread
count (the forward and the draws both use all threads: nvcim.core.rng draws large tensors block by block
on a thread pool).

    python benchmarks/bench_device.py [--width 1.0] [--repeats 7]      # default threads: the recorded ratios
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/bench_device.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import nvcim
from nvcim.core import device as dm
from nvcim.models import create_model


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0, help="VGG-8 width multiplier")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7, help="timed repetitions of each item (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("vgg8", num_classes=10, in_channels=3, width=args.width).to(dev).eval()
    n_weights = sum(m.weight.numel() for _, m in nvcim.layers.noise.supported_layers(model))
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    fast, device_path = nvcim.DeviceConfig(sigma=0.3), nvcim.DeviceConfig(sigma=0.3, sampling="device")
    weights = [m.weight.detach() for _, m in nvcim.layers.noise.supported_layers(model)]
    prepared = {cfg: [dm.prepare(w, cfg) for w in weights] for cfg in (fast, device_path)}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            model(x)
        sync()

    def draw(cfg):
        def run():
            for p in prepared[cfg]:
                dm.draw(p, cfg)
            sync()

        return run

    def quantize():
        for w in weights:
            dm.prepare(w, fast)
        sync()

    items = {"forward": forward, "fast": draw(fast), "device": draw(device_path), "quantize": quantize}
    for fn in items.values():  # warm-up
        fn()
    times = {k: [] for k in items}
    for _ in range(args.repeats):  # interleave so that drifts hit every item alike
        for k, fn in items.items():
            times[k] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"VGG-8 width {args.width}: {n_weights / 1e6:.2f} M noisy weights, batch {args.batch}, device {dev}, "
          f"threads {torch.get_num_threads()}, LD_PRELOAD={os.environ.get('LD_PRELOAD', '-')}")
    print(f"{'item':<10}{'median ms':>12}{'ratio to forward':>20}{'goal':>8}")
    goals = {"fast": 0.10, "device": 0.35}
    for k, t in med.items():
        goal = f"{goals[k]:.2f}" if k in goals else ""
        print(f"{k:<10}{t * 1e3:>12.2f}{t / med['forward']:>20.3f}{goal:>8}")


if __name__ == "__main__":
    main()
