"""Benchmark (script, not a test): time of one training step per method, measured side by side.

VGG-8 at full and 1/4 width, batch 128, random 32x32 1-channel input, Adam; vanilla,
noise_injection (σ = 0.3), OVF (N = 3, β = 1e-3) and IRS (3 heads, β = 1e-2). Each method has its own identically
initialized model and optimizer. After warm-up, the timed steps are interleaved (one step of each
method per round, the order rotated every round), so a load change on the machine hits all methods
alike. Reports the median (and mean) seconds per step and the ratios
noise_injection / vanilla (goal <= 1.10), ovf / noise_injection (goal <= 4.2) and irs / noise_injection.

    python benchmarks/bench_train.py                     # CPU (and CUDA when available), ~2-3 min on 2 cores
    python benchmarks/bench_train.py --widths 0.25 --steps 20 --profile
    python benchmarks/bench_train.py --devices cuda --steps 50 --amp

--profile additionally runs torch.profiler over a few noise_injection steps and prints where the
time goes (top operators by self CPU time), to attribute the noise overhead.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time

import torch

from nvcim import DeviceConfig
from nvcim.methods import create_task
from nvcim.models import create_model

METHODS = (("vanilla", {}), ("noise_injection", {}), ("ovf", {"beta": 1e-3, "n_variational": 3}), ("irs", {"beta": 1e-2}))


def make_steps(width: float, device: torch.device, sigma: float, amp: bool, batch: int, seed: int = 0):
    """One closure per method that runs a full training step (forward(s), backward, Adam)."""
    torch.manual_seed(seed)
    base = create_model("vgg8", num_classes=10, in_channels=1, width=width, image_size=32).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 32, 32, generator=gen).to(device)  # [B, 1, 32, 32]
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)  # [B]
    steps = {}
    for name, params in METHODS:
        model = copy.deepcopy(base).train()
        task = create_task(name, model, DeviceConfig(sigma=sigma), **params)
        opt = torch.optim.Adam(task.parameters(), lr=1e-3)  # IRS: its heads too

        def step(task=task, opt=opt):
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
            with ctx:
                loss, _ = task(x, y)  # loss [], logits [B, 10]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    n_params = sum(p.numel() for p in base.parameters())
    return steps, n_params


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(width: float, device: torch.device, steps: int, warmup: int, sigma: float, amp: bool, batch: int,
          clock=time.perf_counter) -> dict:
    fns, n_params = make_steps(width, device, sigma, amp, batch)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times = {n: [] for n in names}
    for r in range(steps):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            sync(device)
            t0 = clock()
            fns[name]()
            sync(device)
            times[name].append(clock() - t0)
    return {"width": width, "device": str(device), "params": n_params, "times": times}


def profile_noise_injection(width: float, device: torch.device, sigma: float, batch: int, steps: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile

    fns, _ = make_steps(width, device, sigma, False, batch)
    fns["noise_injection"]()  # warm-up
    fns["vanilla"]()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = []
    for name in ("vanilla", "noise_injection"):
        with profile(activities=acts) as prof:
            for _ in range(steps):
                fns[name]()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        out.append(f"--- {name}, width {width:g}, {steps} steps, top operators by {key} ---")
        out.append(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=38))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25], help="VGG-8 width multipliers")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed rounds per width (default: 3 at full width, 12 at smaller widths on CPU; 30 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default: 1 at full width on CPU, 2 at smaller widths, 3 on CUDA)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (images)")
    ap.add_argument("--sigma", type=float, default=0.3, help="training σ_d of noise_injection and OVF")
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="wall: perf_counter; process: CPU time of this process (less sensitive to other load on CPU)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="apply nvcim.train.tune_malloc() first (glibc keeps freed memory: no page faults per step)")
    ap.add_argument("--profile", action="store_true", help="also profile noise_injection vs vanilla (smallest width)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False
    if args.tune_malloc:
        from nvcim.train import tune_malloc

        tuned = tune_malloc()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    print(f"nvcim training-step benchmark: VGG-8, batch {args.batch}, 1x32x32 random input, Adam, σ={args.sigma}, "
          f"clock {args.clock}, malloc tuned {tuned}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"torch threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    from tabulate import tabulate

    rows, ratio_rows = [], []
    for dev_name in devices:
        device = torch.device(dev_name)
        for width in args.widths:
            cpu_full = device.type == "cpu" and width >= 1.0
            steps = args.steps or (3 if cpu_full else 12 if device.type == "cpu" else 30)
            warmup = args.warmup if args.warmup is not None else (1 if cpu_full else 2 if device.type == "cpu" else 3)
            t0 = time.perf_counter()
            clock = time.process_time if args.clock == "process" and device.type == "cpu" else time.perf_counter
            res = bench(width, device, steps, warmup, args.sigma, args.amp and device.type == "cuda", args.batch, clock)
            med = {n: statistics.median(t) for n, t in res["times"].items()}
            for n, t in res["times"].items():
                rows.append([dev_name, f"{width:g}", f"{res['params'] / 1e6:.2f}M", n, len(t),
                             f"{med[n] * 1e3:.1f}", f"{statistics.fmean(t) * 1e3:.1f}", f"{min(t) * 1e3:.1f}",
                             f"{args.batch / med[n]:.0f}"])
            ni_v = med["noise_injection"] / med["vanilla"]
            ovf_ni = med["ovf"] / med["noise_injection"]
            irs_ni = med["irs"] / med["noise_injection"]
            ratio_rows.append([dev_name, f"{width:g}", f"{ni_v:.3f}", "yes" if ni_v <= 1.10 else "NO",
                               f"{ovf_ni:.3f}", "yes" if ovf_ni <= 4.2 else "NO", f"{irs_ni:.3f}",
                               f"{time.perf_counter() - t0:.0f}"])
            print(f"  done: {dev_name} width {width:g} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print()
    print(tabulate(rows, headers=["device", "width", "params", "method", "steps", "median ms", "mean ms", "min ms",
                                  "img/s"], tablefmt="simple", disable_numparse=True))
    print()
    print(tabulate(ratio_rows, headers=["device", "width", "NI/vanilla", "<=1.10", "OVF/NI", "<=4.2", "IRS/NI", "bench s"],
                   tablefmt="simple", disable_numparse=True))
    if args.profile:
        print()
        print(profile_noise_injection(min(args.widths), torch.device(devices[0]), args.sigma, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
