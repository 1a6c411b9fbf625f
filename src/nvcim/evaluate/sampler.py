"""Programmed chips for Monte Carlo evaluation: per-run seeds and generators, and the chip sampler.

    gen = run_generator(seed, r)                              # all of run r's draws
    sampler = ChipSampler(model, cfg, device)                 # reads the noisy tensors (nvcim.layers.noise)
    bufs = sampler.alloc(k); sampler.fill(bufs, runs, seed, σ)  # bufs[l][i] = layer l of chip runs[i]

One run = one programmed chip: every noisy weight gets one draw, kept for the whole test set. Run r's
draws come from a CPU `torch.Generator` seeded by `run_seed(seed, r)` and are taken layer by layer in
module order exactly as `nvcim.draw_chip` takes them, so the same seed gives the same chips whatever
the batch size, chunking, path, device or thread count (a tensor above 65 536 values is drawn block by
block on every thread, `nvcim.core.rng`). The Gaussian draws are the same standard normals scaled by
σ, so a robustness curve uses common random numbers across σ. Nothing here depends on the model but the
shapes of its noisy tensors: two models of one architecture evaluated with the same seed get the same
standard normals on chip r (common random numbers for paired comparisons), and, in target-precision mode,
the same test images (`subset_indices`).

Read noise (cfg.read_sigma > 0) is redrawn at every forward: after run r's chip draws, its generator
seeds one read generator per noisy tensor (`nvcim.core.device.read_generators`, as `nvcim.program_chip_`
does), and `sampler.read(bufs, i)` gives one read of chip i, so that every path reads the same values
as the loop path, batch after batch.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nvcim.core import device as dm
from nvcim.core import rng
from nvcim.core.config import DeviceConfig
from nvcim.layers.noise import noisy_parameters


def run_seed(seed: int, run: int) -> int:
    """Seed of run `run`'s generator: SeedSequence([seed, run]) mixed to 63 bits (no collisions in practice)."""
    return _seed_sequence(seed, run)


# numpy's SeedSequence (O'Neill's seed_seq_fe, pool of 4 words), vectorised over runs by `run_seeds`
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL_WORDS, _WORD = 0xCA01F9DD, 0x4973F715, 4, 1 << 32


def run_seeds(seed: int, runs: Sequence[int]) -> list[int]:
    """`run_seed(seed, r)` for every r in runs, in one vectorised pass (numpy's SeedSequence costs ~30 µs
    per call, which a small model's chip notices); seeds or runs of 2^32 and above go through SeedSequence.
    Cached by (seed, runs): Monte Carlo asks for the same blocks of chips at every σ and for every model
    (MLP 64-128-64-10, 200 chips: ~0.7 ms of a ~50 ms call)."""
    return list(_run_seeds(int(seed), tuple(int(r) for r in runs)))


@functools.lru_cache(maxsize=1024)
def _run_seeds(seed: int, runs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_mixed_seeds(seed, runs))


def _mixed_seeds(seed: int, runs: Sequence[int]) -> list[int]:
    runs = list(runs)
    if len(runs) < 2 or not 0 <= int(seed) < _WORD or any(not 0 <= r < _WORD for r in runs):
        return [_seed_sequence(seed, r) for r in runs]
    with np.errstate(over="ignore"):
        u32 = np.uint32
        entropy = [np.full(len(runs), seed, dtype=u32), np.array(runs, dtype=u32)]
        hash_const = [u32(_INIT_A)]

        def hashmix(value):
            value = value ^ hash_const[0]
            hash_const[0] = hash_const[0] * u32(_MULT_A)
            value = value * hash_const[0]
            return value ^ (value >> u32(16))

        def mix(x, y):
            result = u32(_MIX_L) * x - u32(_MIX_R) * y
            return result ^ (result >> u32(16))

        zero = np.zeros(len(runs), dtype=u32)
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL_WORDS)]
        for src in range(_POOL_WORDS):
            for dst in range(_POOL_WORDS):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        state, hash_const_b = [], u32(_INIT_B)
        for i in range(2):  # generate_state(2, uint32)
            value = pool[i] ^ hash_const_b
            hash_const_b = hash_const_b * u32(_MULT_B)
            value = value * hash_const_b
            state.append(value ^ (value >> u32(16)))
    mask = (1 << 63) - 1
    return [((int(a) << 31) ^ int(b)) & mask for a, b in zip(state[0].tolist(), state[1].tolist())]


def _seed_sequence(seed: int, run: int) -> int:
    state = np.random.SeedSequence([int(seed), int(run)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


SUBSET_STREAM = 1  # third SeedSequence word of a chip's image-subset stream (its weights use [seed, run])


def subset_indices(seed: int, run: int, n: int, images: int) -> np.ndarray:
    """The test images chip `run` scores when each chip scores `images` of the n (target-precision mode).

    The first `images` entries of a uniformly random permutation of range(n) drawn from
    SeedSequence([seed, run, SUBSET_STREAM]): a function of the chip seed alone (never of the model), so
    two models evaluated with the same seed score chip r on the same images (common random numbers),
    and the subsets are nested (chip r's 100 images are the first 100 of its 200).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(run), SUBSET_STREAM])))
    return rng.permutation(int(n))[: min(int(images), int(n))]


# Where the Monte Carlo draws are made. "cpu" (default): on a CPU generator, so the chips are the same
# on any device. "device": on the compute device's own generator (e.g. CUDA), which avoids drawing
# ~13 M weights per run on one CPU thread; chips are then reproducible per device type only.
RNG_DEVICES = ("cpu", "device")
RNG_DEVICE = os.environ.get("NVCIM_MC_RNG", "cpu")
if RNG_DEVICE not in RNG_DEVICES:
    raise ValueError(f"NVCIM_MC_RNG={RNG_DEVICE!r} is invalid: use one of {list(RNG_DEVICES)}")


def _draw_device(device: torch.device) -> torch.device:
    return torch.device(device) if RNG_DEVICE == "device" else torch.device("cpu")


def run_generator(seed: int, run: int, device: str | torch.device = "cpu", run_seed_value: int | None = None
                  ) -> torch.Generator:
    """The generator all of run `run`'s draws come from (on CPU unless NVCIM_MC_RNG=device); run_seed_value:
    `run_seed(seed, run)` when the caller has it already (e.g. from `run_seeds`)."""
    value = run_seed(seed, run) if run_seed_value is None else run_seed_value
    return torch.Generator(device=_draw_device(device)).manual_seed(value)


class ChipSampler:
    """Draws programmed chips for a model whose noisy layers carry `cfg`, into stacked buffers.

    Reproduces `nvcim.draw_chip(model, generator=gen, sigma=σ)` value for value: same layer order,
    same generator calls on CPU, same arithmetic as `nvcim.core.device.draw` (W_d + z · c σ s in one
    addcmul), but written in place into preallocated buffers instead of fresh tensors.
    """

    def __init__(self, model: nn.Module, cfg: DeviceConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.names: list[str] = []
        self.prepared: list[dm.PreparedWeight] = []  # on CPU, where the draws happen
        self.w_d: list[torch.Tensor] = []  # [*W.shape] on `device`
        self.verified: list[tuple[torch.Tensor, float] | None] = []  # write-verify mask (draw device), σ_res
        self.draw_device = _draw_device(device)
        for p in noisy_parameters(model):
            prep = dm.prepare(p.weight.detach().to(self.draw_device), cfg, p.control.transposed_groups)
            self.names.append(p.name)
            self.prepared.append(prep)
            self.w_d.append(prep.w_d.to(device))
            ctrl = p.control
            self.verified.append(None if ctrl.verified is None
                                 else (ctrl.verified.to(self.draw_device), ctrl.residual_sigma))
        self.fast = cfg.use_fast_path
        # a per-weight std factor (e.g. "weight_band", "level_dependent"), as in `dm.draw`
        self.weight_std = [dm.fast_weight_std(prep, cfg) if self.fast else None for prep in self.prepared]
        self.read_gens: dict[int, list[torch.Generator]] = {}  # chunk index -> read generator per tensor
        self.read_gains: dict[int, list] = {}  # chunk index -> drift compensation gain per tensor (None: none)
        self._scratch: list[torch.Tensor] | None = None  # CPU staging buffers when device is not CPU
        self._reads: list[torch.Tensor] | None = None  # `read(reuse=True)`'s buffers
        self._generator = torch.Generator(device=self.draw_device)  # `fill` reseeds it for every chip

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.w_d)

    def alloc(self, runs: int) -> list[torch.Tensor]:
        return [torch.empty((runs, *w.shape), dtype=w.dtype, device=self.device) for w in self.w_d]  # [R, *W.shape]

    def fill(self, bufs: list[torch.Tensor], runs: Sequence[int], seed: int, sigma: float) -> None:
        """bufs[l][i] := W_p of layer l in run runs[i].

        Gaussian draws on CPU without write-verify land in the buffers, and W_d + z · c σ s is then taken for the
        whole block in one pass per layer (element by element the arithmetic of `nvcim.core.device.draw`, which
        a small model's chips notice: ~10 µs of per-call cost per chip and layer saved).
        """
        on_cpu = self.draw_device == self.device  # draws land directly in the buffers
        if not on_cpu and self._scratch is None:
            self._scratch = [torch.empty_like(p.w_d) for p in self.prepared]  # [*W.shape] CPU
        verify = any(v is not None for v in self.verified)
        steps = [prep.scale * (self.cfg.c * sigma) for prep in self.prepared]  # [] c σ s per layer, for every chip
        fast = sigma != 0 and self.fast
        block = fast and on_cpu and not verify  # z for every chip first, then one addcmul per layer
        for i, (r, value) in enumerate(zip(runs, run_seeds(seed, runs))):
            gen = self._generator.manual_seed(value)  # = run_generator(seed, r): reseeded, not rebuilt (~1 µs a chip)
            firsts, gains = [], []  # [*W.shape] per layer, on the draw device; the gain each includes (or None)
            for l, (buf, prep) in enumerate(zip(bufs, self.prepared)):
                if not fast:
                    w_p, gain = dm.draw_with_gain(prep, self.cfg, sigma, gen)  # [*W.shape], [] or None
                    firsts.append(w_p)
                    gains.append(gain)
                    continue
                out = buf[i] if on_cpu else self._scratch[l]  # [*W.shape]
                rng.normal_(out, generator=gen)  # z
                if block:
                    continue
                if self.weight_std[l] is not None:
                    out.mul_(self.weight_std[l])
                torch.addcmul(prep.w_d, out, steps[l], out=out)  # W_d + z · c σ s
                firsts.append(out)
            if verify:  # write-verify: every layer's second draw after all first ones, as draw_chip makes them
                firsts = [w_p if ver is None else dm.write_verified(prep, self.cfg, w_p, ver[0], sigma, ver[1], gen)
                          for w_p, prep, ver in zip(firsts, self.prepared, self.verified)]
            for buf, w_p in zip(bufs, firsts):  # (none in a block: the draws are in the buffers already)
                if w_p.data_ptr() != buf[i].data_ptr():
                    buf[i].copy_(w_p)
            if self.cfg.read_sigma:  # seeded after all of the chip's draws, as program_chip_ seeds them
                self.read_gens[i] = dm.read_generators(gen, len(self.prepared))
                self.read_gains[i] = gains or [None] * len(self.prepared)
        if block:
            for l, (buf, prep) in enumerate(zip(bufs, self.prepared)):
                z = buf[: len(runs)]  # [k, *W.shape]
                if self.weight_std[l] is not None:
                    z.mul_(self.weight_std[l])
                torch.addcmul(prep.w_d, z, steps[l], out=z)  # W_d + z · c σ s, every chip of the block

    def read(self, bufs: list[torch.Tensor], i: int, reuse: bool = False) -> list[torch.Tensor]:
        """One read (one forward's worth of read noise) of chip i of the chunk: [*W.shape] per tensor. reuse: into
        buffers of this sampler, overwritten by the next such read (for one forward at a time; same values)."""
        if reuse and self._reads is None:
            self._reads = [torch.empty_like(buf[0]) for buf in bufs]  # [*W.shape]
        outs = self._reads if reuse else [None] * len(bufs)
        return [dm.read(buf[i], prep.scale, self.cfg, gen, out=out, gain=gain)
                for buf, prep, gen, out, gain in zip(bufs, self.prepared, self.read_gens[i], outs, self.read_gains[i])]

    def read_stacked(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """One read of each chip of views[l] [k, *W.shape] (chips 0..k-1 of the chunk): [k, *W.shape] per tensor."""
        reads = [self.read(views, i) for i in range(views[0].shape[0])]
        return [torch.stack([chip[l] for chip in reads]) for l in range(len(views))]
