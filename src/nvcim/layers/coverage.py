"""Coverage self-check: every tensor reported as noisy must reach the model's output.

A layer listed as noisy whose programmed chip does not change what the model computes is a silent
wrong answer (PyTorch's fused Transformer path, for example, reads `linear1.weight` directly and
would evaluate the clean weights). `check_coverage` proves the opposite for every noisy tensor:

    base  = model(x) with every noisy tensor's chip set to its clean weights W
    out_t = model(x) with tensor t's chip alone replaced by W ± s  (s = max|W_t|: every weight moves, by random signs
                                                                    from a fixed seed, so a LayerNorm cannot undo it),
            and if that leaves the output as it was, by W + s   (every partial sum one way: a coarse ADC may round
                                                                    random-sign changes away)
    out_t == base (bit for bit)  ->  CoverageError naming t if its chip was never read
                                     (a warning if it was read: the activations after it are saturated)

It runs in the model's current mode (train / eval, grad / no_grad), restores every buffer (BatchNorm
statistics) and draws dropout masks from one seed for every forward, so only the chip differs. Read noise
(DeviceConfig.read_sigma) is off during the check: it moves no tensor's reach, and would cost one draw of
every noisy tensor per forward.
`monte_carlo_evaluate` runs it once, in eval mode under no_grad, on the first few images (on its whole first batch
when those do not read every noisy tensor: `check_images`, a model routing images to branches or experts), and
`read_outside_layer` (noisy tensors the model also reads around their layer's forward, which only the loop path
evaluates as a chip computes them; nvcim.evaluate.paths).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from nvcim.layers.noise import noisy_parameters, overridden

CHECK_IMAGES = 2  # images of the first batch that `monte_carlo_evaluate` checks coverage on (moving every
# weight of a layer by s changes the logits of any image that reaches it; two keep the check cheap)


SIGN_PERIOD = 4093  # the bump's ±1 signs repeat with this (prime) period: no row length of a weight aligns with it


class CoverageError(RuntimeError):
    """A tensor reported as noisy does not affect the model's output. `tensors`: the names of those never read
    through their layer (their chip is never read), `layers`: the layers holding them (what --digital-layers takes);
    both empty for a tensor read without moving the output (strict=True)."""

    def __init__(self, message: str, tensors=(), layers=()):
        super().__init__(message)
        self.tensors, self.layers = list(tensors), list(layers)


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a forward's output (a tensor, or nested tuples / lists / dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _seed_all(seed: int) -> None:
    """torch.manual_seed(seed) without its cost when CUDA is not initialized (torch.manual_seed then queues a
    CUDA seeding with a captured stack, ~0.3 ms, and would reseed CUDA's generator at its first use): no
    tensor is on a CUDA device then, so only the CPU generator can draw dropout masks."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _bumped(w: torch.Tensor, signs: torch.Generator) -> tuple[torch.Tensor, float]:
    """(W ± s, s): every weight moved by s = max|W| (1 for an all-zero W), signs at random from `signs`."""
    s = float(w.abs().amax()) if w.numel() else 0.0
    pattern = torch.randint(0, 2, (SIGN_PERIOD,), generator=signs).to(device=w.device, dtype=w.dtype) * 2 - 1
    r = pattern.repeat(-(-w.numel() // SIGN_PERIOD))[:w.numel()].view(w.shape)  # ±1, cheap for any size
    step = s if s > 0 else 1.0
    return w + r * step, step


def _seeded_forward(model: nn.Module, inputs: tuple, seed: int, buffers: dict, weights: dict | None = None) -> list:
    """The output tensors of model(*inputs) (with `weights` in place of those parameters, if given) under dropout
    masks drawn from `seed`; the buffers (BatchNorm statistics) put back after."""
    with torch.random.fork_rng(devices=[]):
        _seed_all(seed)  # identical dropout masks in every forward
        out = model(*inputs) if weights is None else torch.func.functional_call(model, weights, inputs,
                                                                                tie_weights=False)
        out = [t.detach().clone() for t in _tensors(out)]
    with torch.no_grad():  # a forward in train mode moved BatchNorm statistics: put them back
        for k, b in model.named_buffers():
            if k in buffers:
                b.copy_(buffers[k])
    return out


def read_outside_layer(model: nn.Module, *inputs: Any, seed: int = 0) -> list[str]:
    """The noisy tensors (parameters, not weights computed from one) that `model(*inputs)` also reads outside their
    layer's own forward: a direct use of `layer.weight` elsewhere (e.g. a transposed reuse,
    `F.linear(h, self.fc.weight.t())`).

    Found with the layers' chips set to the clean weights and each such tensor's attribute alone replaced by W ± s:
    an output that moves was read around the chip. On a chip only the layer's own product runs on the crossbar (the
    loop path: the other use sees the exact weight); a path that swaps the parameter itself (nvcim.evaluate's chunked
    and stacked paths) would give that use the chip's weight too, so Monte Carlo scores such models on the loop path.
    Two forwards when none is found, one more per tensor otherwise; state restored as `check_coverage` does."""
    params = [p for p in noisy_parameters(model) if isinstance(getattr(p.module, p.attr), nn.Parameter)]
    if not params:
        return []
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    signs = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        targets = {p.name: p.weight.detach() for p in params}
        bumps = {p.name: _bumped(targets[p.name], signs)[0] for p in params}
    per_tensor = {p.name: {"programmed": targets[p.name], "cfg": p.control.cfg.replace(read_sigma=0.0)}
                  for p in params}
    with overridden(model, per_tensor, enabled=True):  # the chips read the clean weights whatever the attribute holds
        base = _seeded_forward(model, inputs, seed, buffers)
        if not all(bool(torch.isfinite(t).all()) for t in base if t.is_floating_point()):
            return []  # NaN / inf out (a diverged model): no output "moves"; Monte Carlo reports the non-finite logits
        if _same(_seeded_forward(model, inputs, seed, buffers, bumps), base):
            return []
        return [name for name, bump in bumps.items()
                if not _same(_seeded_forward(model, inputs, seed, buffers, {name: bump}), base)]


def read_counts(model: nn.Module, *inputs: Any, seed: int = 0) -> dict[str, int]:
    """{noisy tensor: how many times one forward `model(*inputs)` reads it through its layer}: 0 for a layer this
    input does not reach (a routed branch, an expert no token chose), more than 1 for one called at every step of the
    model's own loop (an RNN cell stepped by hand, a block applied twice). One forward with the chips set to the
    clean weights and read noise off; buffers and RNG state left as they were."""
    params = noisy_parameters(model)
    if not params:
        return {}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    per_tensor = {p.name: {"programmed": p.weight.detach(), "cfg": p.control.cfg.replace(read_sigma=0.0)}
                  for p in params}
    with overridden(model, per_tensor, enabled=True):
        before = {p.name: p.control.reads for p in params}
        _seeded_forward(model, inputs, seed, buffers)
        return {p.name: p.control.reads - before[p.name] for p in params}


def check_images(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The images the checks of a model's noisy tensors run on: the first CHECK_IMAGES of x, or all of x when those
    do not read every noisy tensor (a model routing images to branches or experts), so that a tensor some image of
    x reads is checked on images that read it."""
    first = x[:CHECK_IMAGES]
    if len(x) > CHECK_IMAGES and 0 in read_counts(model, first).values():
        return x
    return first


def read_repeatedly(model: nn.Module, *inputs: Any, seed: int = 0) -> list[str]:
    """The noisy tensors one forward reads more than once (`read_counts`). Each read of a device draws its own read
    noise (SPEC §8) on the loop path; the chunked and stacked paths draw one per chip and forward
    (nvcim.evaluate.paths)."""
    return [name for name, reads in read_counts(model, *inputs, seed=seed).items() if reads > 1]


def check_coverage(model: nn.Module, *inputs: Any, seed: int = 0, strict: bool = False) -> list[str]:
    """Raise `CoverageError` naming every noisy tensor of `model` whose chip does not reach `model(*inputs)`.

    A tensor whose chip is never read (the layer is bypassed or unused) is an error. One whose chip is
    read but leaves these outputs unchanged (e.g. every ReLU after it is off) is a warning, or an error
    with `strict`. Returns the names of the tensors checked. One forward per noisy tensor plus one; the
    model's buffers, controllers and RNG state are left as they were.
    """
    params = noisy_parameters(model)
    if not params:
        return []
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    with torch.no_grad():
        targets = {p.name: p.weight.detach() for p in params}  # the chip of the base forward: the weights themselves
        bumps = {}
        signs = torch.Generator().manual_seed(seed)  # fixed: the check is deterministic and leaves torch's RNG alone
        for p in params:
            # every weight moved by ±s, signs at random: any input that reaches it changes the layer's output, and
            # not by the same amount in every feature (a uniform shift, W + s, a LayerNorm after the layer removes)
            bumps[p.name] = _bumped(targets[p.name], signs)  # ±s first; +s (every sum one way) only when ±s changes nothing

    def forward() -> list[torch.Tensor]:
        return _seeded_forward(model, inputs, seed, buffers)

    missing: list[tuple[str, bool]] = []  # (name, whether its controller was read)
    # read noise off (cfg.read_sigma = 0): it changes no tensor's reach and would draw every tensor afresh per forward
    per_tensor = {p.name: {"programmed": targets[p.name]} if not p.control.cfg.read_sigma
                  else {"programmed": targets[p.name], "cfg": p.control.cfg.replace(read_sigma=0.0)} for p in params}
    with overridden(model, per_tensor, enabled=True):  # (no forward hooks: they would switch fused paths off)
        base = forward()
        for p in params:
            reads = p.control.reads
            try:
                signed, step = bumps[p.name]
                unchanged = True
                for make in (lambda: signed, lambda: targets[p.name] + step):  # the second only if the first did nothing
                    p.control.programmed = make()
                    if not _same(forward(), base):
                        unchanged = False
                        break
                if unchanged:
                    missing.append((p.name, p.control.reads > reads))
            finally:
                p.control.programmed = targets[p.name]
    bypassed = [name for name, read in missing if not read]
    insensitive = [name for name, read in missing if read]
    if insensitive:  # the chip is used, the output just does not move (e.g. every ReLU after it is off)
        adc = any(p.control.cfg.sliced_mvm for p in params if p.name in insensitive)
        message = (f"{len(insensitive)} noisy tensor(s) are read but do not change the output on these inputs: "
                   f"{', '.join(insensitive)} (saturated or dead activations after it, or a path that cannot "
                   "reach the output from these inputs, e.g. a reverse direction read at the last step only?"
                   + ("; or ADCs too coarse for its partial sums, which round to the same codes: more adc_bits, or "
                      "adc_clip = \"calibrated\"" if adc else "") + ")")
        if strict:
            raise CoverageError(message)
        warnings.warn(f"nvcim: {message}", stacklevel=2)
    if bypassed:
        layers = list(dict.fromkeys(p.name[: -len(p.attr) - 1] or p.name for p in params if p.name in bypassed))
        raise CoverageError(f"{len(bypassed)} tensor(s) reported as noisy never have their chip read, so they would "
                            f"stay exact: {', '.join(bypassed)} (the layer is unused, or another path reads its "
                            f"weights directly). Keep them digital (--digital-layers {','.join(layers)} in nvcim train "
                            "/ eval; keep_digital_ or apply_variation_(..., exclude=[...]) in Python) or make the "
                            "model call the layer", bypassed, layers)
    return [p.name for p in params]
