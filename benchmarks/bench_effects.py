"""Benchmark of Monte Carlo evaluation under the device effects of SPEC §8 (issue #18) on VGG-8, CPU or GPU.

For each VGG-8 width, times `monte_carlo_evaluate` (path "auto", no baseline passes) under
  gaussian        the plain i.i.d. Gaussian device (the reference row, as in bench_eval.py)
  stuck-at        stuck_at=(0.0175, 0.0904) (Chen et al.'s rates)
  drift           drift_time=3600 s with drift_compensation
  rram4           DeviceConfig.preset("rram4"): the authors' per-weight fold, S = 4
  rram4-level     DeviceConfig.preset("rram4-level"): per-device level-dependent variation
  read noise      read_sigma=0.02 (redrawn every forward)
  ADC             adc_bits=8, tile_rows=128, M/K = 8/2 = 4 slices (Monte Carlo uses the loop path)
  ADC diff.       the same with adc_readout="differential" (one signed ADC per column pair: one product per slice)
each as a ratio of clean inference of the same images x chips (timed interleaved in the same run; its forwards
take 128 images at a time on CPU as Monte Carlo's do, `nvcim.evaluate.forward.sliced`), beside
the goals of issue #18: stuck-at, drift, level-dependent <= 1.15; read noise <= 1.3; ADC <= 6. All
effects use sigma --sigma on top of the effect. The ADC rows use their own (smaller) images x chips and
their own clean reference. A second ratio leaves out the coverage self-check that every
`monte_carlo_evaluate` call runs once (nvcim.layers.coverage), timed by wrapping it: a fixed cost per call
that long evaluations amortise, but not these short ones. A third column gives the extra cost per chip in
clean image-forwards, (ratio - 1) x images per chip (coverage check included): a chip's draws cost the same
whatever the number of images, so the ratio at n images per chip is 1 + that / n.

Both widths use 256 images per chip by default (as bench_eval.py's 1/4-width row; a real evaluation
scores a whole test split per chip, 1000 images for MNIST-5k, 10 000 for CIFAR-10). Until issue #18
point 5 the full-width row used 2 chips x 128 images, where even the plain Gaussian reference missed 1.15.

    python benchmarks/bench_effects.py --threads 1 --clock process     # 1/4 and full width, a few minutes on 2 cores
    python benchmarks/bench_effects.py --models 0.25 --runs 16 --images 1024 --device cuda
"""

from __future__ import annotations

import argparse
import math

import torch

import nvcim
import nvcim.evaluate.montecarlo as mc_module
from bench_eval import add_run_arguments, make_vgg8, setup_run, timed  # the sibling script (benchmarks/ is on sys.path when run)
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.evaluate.forward import sliced


def clean(model: torch.nn.Module, x: torch.Tensor, runs: int, batch_size: int) -> None:
    """Clean inference of `runs` passes over x, batch by batch, each forward as Monte Carlo makes it on CPU
    (`nvcim.evaluate.forward.sliced`: 128 images at a time, which page-faults less than 256)."""
    with torch.no_grad():
        for _ in range(runs):
            for i in range(0, x.shape[0], batch_size):
                sliced(model, x[i : i + batch_size])  # [B, classes]


class CheckTimer:
    """Wraps the coverage check that monte_carlo_evaluate runs once per call, adding up its time."""

    def __init__(self, clock) -> None:
        self.clock, self.total, self.check = clock, 0.0, mc_module.check_coverage
        mc_module.check_coverage = self

    def __call__(self, *args, **kwargs):
        t = self.clock()
        try:
            return self.check(*args, **kwargs)
        finally:
            self.total += self.clock() - t


def effect_configs(sigma: float) -> dict[str, tuple[nvcim.DeviceConfig, float]]:
    """Name -> (device config, goal ratio of issue #18; nan for the reference row)."""
    cfg = nvcim.DeviceConfig
    return {
        "gaussian (reference)": (cfg(sigma=sigma), math.nan),
        "stuck-at (0.0175, 0.0904)": (cfg(sigma=sigma, stuck_at=(0.0175, 0.0904)), 1.15),
        "drift 1 h, compensated": (cfg(sigma=sigma, drift_time=3600.0, drift_compensation=True), 1.15),
        "rram4 preset": (cfg.preset("rram4", sigma=sigma), 1.15),
        "rram4-level": (cfg.preset("rram4-level", sigma=sigma), 1.15),
        "read noise 0.02": (cfg(sigma=sigma, read_sigma=0.02), 1.3),
        "ADC 8 b, 128 rows, 4 slices": (cfg(sigma=sigma, adc_bits=8, tile_rows=128), 6.0),
        "ADC 8 b differential": (cfg(sigma=sigma, adc_bits=8, tile_rows=128, adc_readout="differential"), 6.0),
    }


def per_model(values: str, n: int, cast=int) -> list:
    out = [cast(v) for v in values.split(",")]
    return out + [out[-1]] * (n - len(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="0.25,1.0", help="comma-separated VGG-8 width multipliers (default 0.25,1.0)")
    p.add_argument("--runs", default=None, help="Monte Carlo chips per model, comma-separated (default by width: 8 "
                   "at widths <= 0.5, else 2)")
    p.add_argument("--images", default=None, help="test images per model, comma-separated (default 256)")
    p.add_argument("--adc-runs", default=None, help="chips per model for the ADC row (default by width: 2, else 1)")
    p.add_argument("--adc-images", default=None, help="images per model for the ADC row (default by width: 128, "
                   "else 64)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256)")
    p.add_argument("--effects", default=None,
                   help="comma-separated row names to time, matched as prefixes (e.g. 'gaussian,ADC'; default all)")
    add_run_arguments(p, sigma=0.1)  # σ under every effect
    args = p.parse_args()
    clock, device = setup_run(args)
    widths = [float(w) for w in args.models.split(",")]

    def sizes(given: str | None, narrow: int, wide: int) -> list[int]:  # a width's own default, not a position's
        return per_model(given, len(widths)) if given else [narrow if w <= 0.5 else wide for w in widths]

    runs_l, images_l = sizes(args.runs, 8, 2), sizes(args.images, 256, 256)
    adc_runs_l, adc_images_l = sizes(args.adc_runs, 2, 1), sizes(args.adc_images, 128, 64)
    configs = effect_configs(args.sigma)
    if args.effects:
        wanted = [w.strip() for w in args.effects.split(",")]
        configs = {k: v for k, v in configs.items() if any(k.startswith(w) for w in wanted)}
    check = CheckTimer(clock)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, sigma {args.sigma}, "
          f"batch {args.batch_size}, {args.clock} clock, min of {args.repeat} interleaved repetitions")
    for width, runs, images, adc_runs, adc_images in zip(widths, runs_l, images_l, adc_runs_l, adc_images_l):
        torch.manual_seed(0)
        model = make_vgg8(width).to(device).eval()
        xa = torch.randn(max(images, adc_images), 3, 32, 32, device=device)  # [N, C, H, W] enough for both rows
        ya = torch.randint(0, 10, (xa.shape[0],), device=device)  # [N]
        x, y = xa[:images], ya[:images]
        xa, ya = xa[:adc_images], ya[:adc_images]
        clean(model, x[: args.batch_size], 1, args.batch_size)  # warm-up
        kw = dict(seed=0, batch_size=args.batch_size, device=device, path="auto", baselines=False)

        def mc(cfg, data, n):
            return lambda: monte_carlo_evaluate(model, data, cfg, runs=n, **kw)

        methods = {"clean": lambda: clean(model, x, runs, args.batch_size)}
        if any(cfg.sliced_mvm for cfg, _ in configs.values()):  # its reference only when an ADC row is timed
            methods["clean (ADC size)"] = lambda: clean(model, xa, adc_runs, args.batch_size)
        for name, (cfg, _) in configs.items():
            methods[name] = mc(cfg, (xa, ya), adc_runs) if cfg.sliced_mvm else mc(cfg, (x, y), runs)
        times = {k: math.inf for k in methods}
        checks = {k: 0.0 for k in methods}  # the coverage check's time in the fastest repetition
        for _ in range(args.repeat):
            for k, fn in methods.items():
                before = check.total
                t = timed(fn, device, clock)
                if t < times[k]:
                    times[k], checks[k] = t, check.total - before
        print(f"\nVGG-8 width {width:g}: {runs} chips x {images} images (ADC: {adc_runs} chips x {adc_images} images)")
        print(f"  {'':30s} {'time':>8s}  {'÷ clean':>8s}  {'w/o check':>9s}  {'extra/chip':>10s}  goal")
        for name, t in times.items():
            if name.startswith("clean"):
                print(f"  {name:30s} {t:7.2f}s")
                continue
            cfg, goal = configs[name]
            ref = times["clean (ADC size)"] if cfg.sliced_mvm else times["clean"]
            per_chip = adc_images if cfg.sliced_mvm else images
            verdict = "" if math.isnan(goal) else f"<= {goal:g}  {'met' if t / ref <= goal else 'MISSED'}"
            print(f"  {name:30s} {t:7.2f}s  {t / ref:8.3f}  {(t - checks[name]) / ref:9.3f}  "
                  f"{(t / ref - 1) * per_chip:8.1f} im  {verdict}")


if __name__ == "__main__":
    main()
