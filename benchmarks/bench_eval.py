"""Benchmark of Monte Carlo evaluation (nvcim.evaluate) on a small MLP and VGG-8-like networks, CPU or GPU.

Prints image·runs per second for
  (a) the fast path (`monte_carlo_evaluate`, path="auto": on CPU "stacked" for models of linear layers, e.g.
      the MLP: a block of chips drawn into reused buffers and run through one forward, the first layer one
      GEMM for all chips; "chunked" for the others, e.g. VGG-8: one forward per chip over pre-drawn weights,
      the logits of several chips scored together), with and without the two extra deterministic passes for
      clean / quantized accuracy,
  (a') the paths side by side: "stacked" (chips batched through one forward: chains of per-image layers
      directly, other models under vmap), "chunked", and the reference "loop" (nvcim.program_chip_ per run),
  (b) a naive per-run loop (deepcopy the model, perturb every weight with nvcim.program, evaluate),
  (c) clean inference of the same number of image forwards (runs x images),
  (d) the fast path with 5 % of the weights write-verified (nvcim.writeverify: one more draw per layer),
and the ratios fast/clean time (goal <= 1.15 for VGG-8; <= 1.5 for the MLP, whose cost is per chip
rather than per image: 17 k weights drawn and 360 x 10 logits scored per chip, 6 M multiply-adds),
naive/fast (speedup) and write-verify/fast.

    python benchmarks/bench_eval.py                       # MLP, 1/4 and full width, sized for ~2 min on 2 cores
    python benchmarks/bench_eval.py --threads 1 --clock process --models mlp --repeat 5
    python benchmarks/bench_eval.py --models 0.25 --runs 16 --images 1024 --device cuda
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/bench_eval.py   # other allocator
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn

import nvcim
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.evaluate.forward import sliced
from nvcim.writeverify import plan_write_verify


def make_vgg8(width: float, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    try:
        from nvcim.models import create_model

        return create_model("vgg8", num_classes, in_channels, width=width, image_size=32)
    except ImportError:  # models.py not available: a local copy of the SPEC §5 architecture
        layers, c = [], in_channels
        for v in (64, 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, round(v * width))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        hidden = max(1, round(1024 * width))
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 16, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


def make_mlp(num_classes: int = 10) -> nn.Module:
    """MLP 64-128-64-10 on 8x8 one-channel images (a digits-sized model)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(inplace=True), nn.Linear(128, 64),
                         nn.ReLU(inplace=True), nn.Linear(64, num_classes))


def naive_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg, runs: int, batch_size: int) -> list[int]:
    out = []
    for r in range(runs):
        m = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(r)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    mod.weight.copy_(nvcim.program(mod.weight, cfg, generator=gen))
            correct = 0
            for i in range(0, x.shape[0], batch_size):
                correct += int((m(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())  # [B]
        out.append(correct)
    return out


def clean(model: nn.Module, x: torch.Tensor, runs: int, batch_size: int, slices: bool = False) -> None:
    """Clean inference of `runs` passes over x in batches; slices: each forward as Monte Carlo makes it on CPU
    (`nvcim.evaluate.forward.sliced`: 128 images at a time). The reference is the faster of the two ways,
    timed side by side: slices page-fault less on VGG-8, whole batches suit a small MLP."""
    with torch.no_grad():
        for _ in range(runs):
            for i in range(0, x.shape[0], batch_size):
                (sliced if slices else lambda m, v: m(v))(model, x[i : i + batch_size])  # [B, classes]


def timed(fn, device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t


def add_run_arguments(p: argparse.ArgumentParser, sigma: float) -> None:
    """The options every Monte Carlo benchmark shares (repetitions, device, σ, threads, clock)."""
    p.add_argument("--repeat", type=int, default=2, help="interleaved repetitions; the minimum time is reported (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--sigma", type=float, default=sigma, help=f"device variation sigma_d (default {sigma})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or this process's CPU time (with --threads 1: robust to other jobs on a shared "
                        "machine) (default wall)")


def setup_run(args: argparse.Namespace):
    """(clock, device) of the parsed options; sets torch's thread count."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return (time.perf_counter if args.clock == "wall" else time.process_time), torch.device(args.device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,0.25,1.0",
                   help="comma-separated: mlp (MLP 64-128-64-10) or VGG-8 width multipliers (default mlp,0.25,1.0)")
    p.add_argument("--runs", default="200,8,2", help="Monte Carlo runs per model, comma-separated (default 200,8,2)")
    p.add_argument("--images", default="360,256,128", help="test images per model, comma-separated (default 360,256,128)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256)")
    p.add_argument("--chunk-runs", type=int, default=None, help="runs drawn together (default: automatic)")
    add_run_arguments(p, sigma=0.3)
    args = p.parse_args()
    clock, device = setup_run(args)
    models = [w if w == "mlp" else float(w) for w in args.models.split(",")]
    runs_l = [int(v) for v in args.runs.split(",")]
    images_l = [int(v) for v in args.images.split(",")]
    runs_l += [runs_l[-1]] * (len(models) - len(runs_l))
    images_l += [images_l[-1]] * (len(models) - len(images_l))
    cfg = nvcim.DeviceConfig(sigma=args.sigma)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, sigma {args.sigma}, "
          f"batch {args.batch_size}, {args.clock} clock, min of {args.repeat} interleaved repetitions")
    for which, runs, images in zip(models, runs_l, images_l):
        torch.manual_seed(0)
        if which == "mlp":
            model, shape, title, goal = make_mlp(), (1, 8, 8), "MLP 64-128-64-10", 1.5
        else:
            model, shape, title, goal = make_vgg8(which), (3, 32, 32), f"VGG-8 width {which:g}", 1.15
        model = model.to(device).eval()
        x = torch.randn(images, *shape, device=device)  # [N, C, H, W]
        y = torch.randint(0, 10, (images,), device=device)  # [N]
        work = runs * images
        clean(model, x[: args.batch_size], 1, args.batch_size)  # warm-up
        kw = dict(runs=runs, seed=0, batch_size=args.batch_size, chunk_runs=args.chunk_runs, device=device)
        plan = plan_write_verify(model, 0.05, "magnitude")
        methods = {
            "fast (auto path, MC only)": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="auto", baselines=False, **kw),
            "fast + clean/quant passes": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="auto", **kw),
            "stacked (chips batched)": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="stacked", baselines=False, **kw),
            "chunked (forward per chip)": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="chunked", baselines=False, **kw),
            "loop (program_chip_)": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="loop", baselines=False, **kw),
            "naive (deepcopy+program)": lambda: naive_loop(model, x, y, cfg, runs, args.batch_size),
            "clean inference (batches)": lambda: clean(model, x, runs, args.batch_size),
            "clean inference (slices)": lambda: clean(model, x, runs, args.batch_size, slices=True),
            "fast, 5 % write-verified": lambda: monte_carlo_evaluate(model, (x, y), cfg, path="auto", baselines=False,
                                                                     write_verify=plan, **kw),
        }
        times = {k: math.inf for k in methods}
        for _ in range(args.repeat):
            for k, fn in methods.items():
                times[k] = min(times[k], timed(fn, device, clock))
        n_w = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        print(f"\n{title} ({n_w / 1e6:.2f} M noisy weights), {runs} runs x {images} images = {work} image-runs")
        for name, t in times.items():
            print(f"  {name:28s} {t:8.2f} s  {work / t:10.1f} image-runs/s")
        t_clean = min(times["clean inference (batches)"], times["clean inference (slices)"])  # the faster clean way
        t_fast = times["fast (auto path, MC only)"]
        print(f"  fast/clean time ratio        {t_fast / t_clean:8.3f}   (goal <= {goal:g})")
        auto = monte_carlo_evaluate(model, (x, y), cfg, path="auto", baselines=False, **{**kw, "runs": 1}).path
        print(f"  (auto path: {auto})")
        print(f"  stacked/clean time ratio     {times['stacked (chips batched)'] / t_clean:8.3f}")
        print(f"  chunked/clean time ratio     {times['chunked (forward per chip)'] / t_clean:8.3f}")
        print(f"  loop/clean time ratio        {times['loop (program_chip_)'] / t_clean:8.3f}")
        print(f"  naive/fast speedup           {times['naive (deepcopy+program)'] / t_fast:8.2f}x")
        print(f"  write-verified/fast ratio    {times['fast, 5 % write-verified'] / t_fast:8.3f}")


if __name__ == "__main__":
    main()
