"""Speed side by side: nvcim's Monte Carlo evaluation vs aihwkit's noisy inference, same model, images and chips.

In one process, interleaved, minimum over repetitions:
  nvcim     `monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma), runs=R)` (default path, no baselines; its
            once-per-call coverage check included)
  aihwkit   the model converted once with `convert_to_analog` (not timed: in aihwkit's favour), then per chip
            `program_analog_weights` (programming noise redrawn), `drift_analog_weights(t)` and a forward over the
            same images, with aihwkit's default PCM noise model and forward (IO) settings, for
            InferenceRPUConfig (its C++ simulator) and TorchInferenceRPUConfig (pure torch)
and prints the ratio aihwkit time / nvcim time (goal >= 10). Needs the aihwkit extra (scripts/install_aihwkit.sh).

    python benchmarks/bench_aihwkit.py                                 # 1/4-width VGG-8, 8 chips x 256 images
    python benchmarks/bench_aihwkit.py --width 1.0 --runs 2 --images 128 --threads 2 --clock wall
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import nvcim
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.models import create_model


def aihwkit_loop(analog, x: torch.Tensor, y: torch.Tensor, runs: int, batch_size: int, t_inference: float) -> list[int]:
    from aihwkit.inference.utils import drift_analog_weights, program_analog_weights

    correct = []
    with torch.no_grad():
        for r in range(runs):
            torch.manual_seed(r)
            program_analog_weights(analog, None)
            drift_analog_weights(analog, t_inference)
            hits = 0
            for i in range(0, x.shape[0], batch_size):
                hits += int((analog(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())  # [B]
            correct.append(hits)
    return correct


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.25, help="VGG-8 width multiplier (default 0.25)")
    p.add_argument("--runs", type=int, default=8, help="chips (default 8)")
    p.add_argument("--images", type=int, default=256, help="images per chip (default 256)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256)")
    p.add_argument("--sigma", type=float, default=0.1, help="nvcim's σ_d (default 0.1)")
    p.add_argument("--time", type=float, default=1.0, help="aihwkit's t_inference in seconds (default 1)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repetitions; the minimum is reported (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--clock", choices=("wall", "process"), default="process",
                   help="this process's CPU time (default: robust to other jobs with 1 thread) or wall time")
    args = p.parse_args()
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
    import aihwkit

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    model = create_model("vgg8", 10, 1, width=args.width).eval()
    x = torch.randn(args.images, 1, 32, 32)
    y = torch.randint(0, 10, (args.images,))
    cfg = nvcim.DeviceConfig(sigma=args.sigma)
    analogs = {}
    for cls in (InferenceRPUConfig, TorchInferenceRPUConfig):
        rpu = cls(noise_model=PCMLikeNoiseModel(), drift_compensation=GlobalDriftCompensation())
        analogs[cls.__name__] = convert_to_analog(model, rpu).eval()
    print(f"torch {torch.__version__}, aihwkit {aihwkit.__version__}, threads {torch.get_num_threads()}, "
          f"{args.clock} clock, min of {args.repeat} interleaved repetitions; VGG-8 width {args.width:g}, "
          f"{args.runs} chips x {args.images} images, batch {args.batch_size}; load average before "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    best = {k: float("inf") for k in ["nvcim", *analogs]}
    for _ in range(args.repeat):
        t = clock()
        monte_carlo_evaluate(model, (x, y), cfg, runs=args.runs, seed=0, batch_size=args.batch_size, baselines=False)
        best["nvcim"] = min(best["nvcim"], clock() - t)
        for name, analog in analogs.items():
            t = clock()
            aihwkit_loop(analog, x, y, args.runs, args.batch_size, args.time)
            best[name] = min(best[name], clock() - t)
    print(f"{'nvcim Monte Carlo':<32} {best['nvcim']:8.2f} s")
    for name in analogs:
        print(f"{'aihwkit ' + name:<32} {best[name]:8.2f} s   aihwkit / nvcim = {best[name] / best['nvcim']:.1f}x")
    print(f"load average after {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
