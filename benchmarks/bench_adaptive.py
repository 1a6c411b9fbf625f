"""Benchmark of target-precision Monte Carlo (issue 21): time to a ±0.5-point 95 % CI, adaptive against today's protocol.

For each checkpoint (default: ¼-width VGG-8 trained with noise injection at σ 0.2 and 0.3 on MNIST 5k,
evaluated at its training σ on its test split), side by side in one run:
  (a) today's protocol: `monte_carlo_evaluate(runs=200)`, every chip on the whole test set;
  (b) `monte_carlo_evaluate(target_ci=0.5)`: full-set pilot, N images per chip chosen from it, Stein's rule;
  (c) when 200 chips do not reach ±0.5: `monte_carlo_evaluate(target_ci=h_200)`, the adaptive run to the
      precision today's 200 chips delivered (the comparison at equal precision from the other side).
Prints the times, the ratios (goal <= 0.25), R, N, the means and half-widths, and whether the means agree
(|difference| <= the half-width of the difference, sqrt(h_a² + h_b²)). When 200 chips do not reach ±0.5, also
the time the fixed protocol would need for it (200 x (h_200 / 0.5)² chips at its measured time per chip).
The three ratios answer three readings of "time to a ±0.5-point CI, adaptive vs today's 200 chips": (b)/(a)
compares a ±0.5 answer with a wider one; (b)/(a needs) and (c)/(a) compare answers of equal precision.

    python benchmarks/bench_adaptive.py --threads 1 --clock process      # as recorded (shared machine)
    python benchmarks/bench_adaptive.py --checkpoints A,B --target 0.5 --device cuda
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from bench_eval import add_run_arguments, setup_run  # the sibling script (benchmarks/ is on sys.path when run)
from nvcim.cli.eval_data import load_for_eval
from nvcim.evaluate import monte_carlo_evaluate

CELLS = Path("/work/runs/devices/cells/vgg8-w0.25/mnist5k/noise_injection")
DEFAULT_CHECKPOINTS = ",".join(str(CELLS / f"s{s}/seed0/checkpoint") for s in ("0.20", "0.30"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default=DEFAULT_CHECKPOINTS, help="comma-separated checkpoint directories")
    p.add_argument("--target", type=float, default=0.5, help="95 %% CI half-width to reach, points (default 0.5)")
    p.add_argument("--runs", type=int, default=200, help="chips of today's protocol (default 200)")
    p.add_argument("--pilot-chips", type=int, default=None, help="full-set pilot chips (default: the library's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256, as bench_eval.py)")
    add_run_arguments(p, sigma=math.nan)  # σ: each checkpoint's training σ
    args = p.parse_args()
    clock, device = setup_run(args)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {args.clock} clock, "
          f"target ±{args.target:g}, today's protocol {args.runs} chips x the whole test set")
    for ck in args.checkpoints.split(","):
        loaded = load_for_eval(Path(ck), dataset=None, data_root=None, split="test", limit=None)
        cfg = loaded.device
        if not math.isnan(args.sigma):
            cfg = cfg.replace(sigma=args.sigma)
        kw = dict(seed=0, batch_size=args.batch_size, device=device)
        t = clock()
        fixed = monte_carlo_evaluate(loaded.model, loaded.split, cfg, runs=args.runs, **kw)
        t_fixed = clock() - t
        t = clock()
        ada = monte_carlo_evaluate(loaded.model, loaded.split, cfg, target_ci=args.target,
                                   pilot_chips=args.pilot_chips, **kw)
        t_ada = clock() - t
        h_fixed = (fixed.ci95[1] - fixed.ci95[0]) / 2
        h_diff = math.hypot(h_fixed, ada.ci_half_width)
        print(f"\n{ck}: σ {cfg.sigma:g}, {fixed.n_samples} test images, chip-to-chip std {fixed.std:.2f} points")
        print(f"  today    {args.runs:6d} chips x {fixed.n_samples:5d} images  {t_fixed:8.1f} s  "
              f"mean {fixed.mean:6.2f} ± {h_fixed:.2f}")
        print(f"  adaptive {ada.runs:6d} chips x {ada.images_per_chip:5d} images  {t_ada:8.1f} s  "
              f"mean {ada.mean:6.2f} ± {ada.ci_half_width:.2f}  (+ {ada.full_set_chips} full-set pilot chips; "
              f"p1 {ada.p1:.2f} from them, today's p1 {fixed.p1:.2f})")
        print(f"  adaptive / today time ratio  {t_ada / t_fixed:6.3f}   (goal <= 0.25)")
        if h_fixed > args.target:
            need = math.ceil(args.runs * (h_fixed / args.target) ** 2)
            print(f"  today's protocol needs ~{need} chips for ±{args.target:g}: adaptive / that "
                  f"{t_ada / (t_fixed * need / args.runs):6.3f}")
        if h_fixed > args.target:
            t = clock()
            same = monte_carlo_evaluate(loaded.model, loaded.split, cfg, target_ci=h_fixed,
                                        pilot_chips=args.pilot_chips, **kw)
            t_same = clock() - t
            print(f"  adaptive {same.runs:6d} chips x {same.images_per_chip:5d} images  {t_same:8.1f} s  "
                  f"mean {same.mean:6.2f} ± {same.ci_half_width:.2f}  (to today's ±{h_fixed:.2f}; "
                  f"+ {same.full_set_chips} full-set pilot chips)")
            print(f"  at today's precision: adaptive / today {t_same / t_fixed:6.3f}")
        agree = abs(ada.mean - fixed.mean) <= h_diff
        print(f"  means differ by {ada.mean - fixed.mean:+.2f} (half-width of the difference {h_diff:.2f}): "
              f"{'agree' if agree else 'DISAGREE'}")


if __name__ == "__main__":
    main()
