"""Would importance sampling of test images beat simple random subsets in target-precision Monte Carlo? (issue 21)

Target-precision mode (nvcim.evaluate.adaptive) scores each chip on N test images drawn uniformly without
replacement, with the pilot's per-image hit rates r_i as a control variate. This study measures, on real chips,
the variance of one chip's value from N images under
  * SRS raw:     correct / N on a uniform subset,
  * SRS + CV:    the control-variate value nvcim uses (X_i - r_i over the subset, plus the mean rate),
  * HT (floor):  Poisson sampling with inclusion probability pi_i proportional to sqrt(r~_i (1 - r~_i))
                 (Neyman allocation on the residual's std; r~ the rate shrunk to (k + 0.5) / (F + 1), floored at
                 `floor` x 0.5, scaled to N expected images, capped at 1) and the Horvitz-Thompson estimator,
each in closed form from every chip's per-image correctness on the whole test set (F pilot chips give r_i,
E further chips the variances), beside the chip-to-chip variance V_chip. Variances in points^2.

    python scripts/adaptive_sampling_study.py CKPT [CKPT ...] --pilot 20 --chips 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from nvcim.cli.eval_data import load_for_eval
from nvcim.data.batching import eval_mode, materialize
from nvcim.evaluate.adaptive import image_rates, score_chips
from nvcim.evaluate.montecarlo import _controllers_for
from nvcim.evaluate.sampler import ChipSampler


class _NoBar:
    def update(self, k: int) -> None:
        pass


def study(ckpt: Path, pilot: int, chips: int, sizes=(16, 32, 64), floors=(0.05, 0.1, 0.2)) -> None:
    loaded = load_for_eval(ckpt, dataset=None, data_root=None, split="test", limit=None)
    model, cfg = loaded.model, loaded.device
    batches = materialize(loaded.split, 256, torch.device("cpu"), torch.float32)
    x = torch.cat([xb for xb, _ in batches])  # [n, ...]
    y = torch.cat([yb for _, yb in batches])  # [n]
    n = int(y.numel())
    hits = np.zeros((pilot + chips, n), dtype=bool)  # [F + E, n] per-image correctness of every chip
    with eval_mode(model), _controllers_for(model, cfg):
        sampler = ChipSampler(model, cfg, torch.device("cpu"))
        score_chips(model, sampler, (x, y), range(pilot + chips), None, 0, batch_size=256, chunk=1, loop=False,
                    calib=None, bar=_NoBar(), hits=hits)
    rates, resid = image_rates(hits[:pilot])  # [n]
    ev = hits[pilot:].astype(np.float64)  # [E, n]
    acc = ev.mean(axis=1)  # [E]
    print(f"\n{ckpt}: σ {cfg.sigma:g}, {n} test images, mean {100 * acc.mean():.2f}, chip std {100 * acc.std(ddof=1):.2f}; "
          f"pilot residual variance {resid:.4f}; images with r = 0: {np.mean(rates == 0):.2f}, r = 1: "
          f"{np.mean(rates == 1):.2f}; V_chip {1e4 * acc.var(ddof=1):.1f}")
    resid_v = ev - rates[None, :]  # [E, n]
    shrunk = (rates * pilot + 0.5) / (pilot + 1)  # [n]
    for N in sizes:
        srs_raw = 1e4 * np.mean((1 - N / n) * ev.var(axis=1, ddof=1) / N)
        srs_cv = 1e4 * np.mean((1 - N / n) * resid_v.var(axis=1, ddof=1) / N)
        line = [f"N={N:3d}: SRS raw {srs_raw:6.1f}   SRS + CV {srs_cv:6.1f}"]
        for floor in floors:
            w = np.maximum(np.sqrt(shrunk * (1 - shrunk)), 0.5 * floor)  # [n]
            pi = np.minimum(1.0, N * w / w.sum())
            for _ in range(50):  # rescale to N expected images after capping at 1
                pi = np.minimum(1.0, pi * N / pi.sum())
            ht = 1e4 * np.mean((((1 - pi) / pi)[None, :] * resid_v**2).sum(axis=1) / n**2)
            line.append(f"HT(floor {floor:g}) {ht:6.1f}")
        print("  " + "   ".join(line))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--pilot", type=int, default=20, help="chips that give the per-image rates (default 20)")
    p.add_argument("--chips", type=int, default=40, help="further chips the variances are measured on (default 40)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for ck in args.checkpoints:
        study(ck, args.pilot, args.chips)


if __name__ == "__main__":
    main()
