"""Monte Carlo noisy inference (SPEC §4): `monte_carlo_evaluate` and `robustness_curve` over R programmed chips.

    res = monte_carlo_evaluate(model, (x, y), cfg, runs=200, seed=0)      # or a data Split
    curve = robustness_curve(model, split, cfg, default_sigma_grid(0.3))

Before any chip: the labels are checked against the model's logits, the model's noisy tensors must
all change its output (`nvcim.layers.coverage`). Then the chips are drawn (`ChipSampler`) and scored on one
of three paths that compute the same thing. The fast ones draw a chunk of runs at once: the
programmed weights of every layer go into one preallocated buffer [R_chunk, *W.shape] that is
refilled in place (W_d precomputed once; per run only randn, then one addcmul per layer for the chunk), then
  * "stacked": all runs of the chunk in one forward per batch (`nvcim.evaluate.batching`): a chain of
    per-image layers (an nn.Sequential of Linear, activations, Flatten, ...) directly, the first noisy
    layer one GEMM for every chip; other models under `torch.func.vmap(functional_call)` (batched /
    grouped convolutions); the default on CUDA, and on CPU for models whose noisy layers are all
    nn.Linear (MLP 64-128-64-10, 360 images, 1 thread: ~1.5x clean inference against ~2x for "chunked");
  * "chunked": one plain forward per run with that run's buffers set in place as the noisy parameters
    (`ParameterSlots`; on CPU 128 images per forward), the logits of several runs scored together; the
    default on CPU for the other models, where it is the fastest: as fast as "loop" for VGG-8
    (~1.0-1.1x clean inference; a convolution under vmap is a grouped one: 1.4-2.3x;
    benchmarks/results/eval_cpu.txt);
  * "loop": `nvcim.program_chip_` per run and plain forwards; the reference.
"auto" chooses by the model's structure, never by a timing (`nvcim.evaluate.paths`), and takes "stacked" only after
a probe: two different chips stacked on a few images must give what their own forwards give
(`forward.stacked_problem`); a model vmap cannot run, or (on CPU) runs only by looping over the chips for
some op, stays "chunked", and path="stacked" asked for on such a model raises a ValueError. "chunked" and
"loop" give bitwise the same logits, counts and EKL; "stacked" computes each chip's logits as its own
forward does but in larger matrix products, whose BLAS summation order may differ in the last bits: the
same counts, and the EKL within float rounding (tests against float64 per-chip references), whatever the
chunking. The fast paths put a chip's tensors in place of the parameters themselves, so a model with a parametrized
noisy weight, or one that also reads a noisy weight outside its layer (a transposed reuse: on a chip that use is
exact), runs on the loop path, with a warning for the second (`nvcim.evaluate.paths.path_for_reads`).
Chips with NaN / inf logits score those images as wrong and raise one warning with the likely cause.
Device effects (SPEC §8, `DeviceConfig`) run on every path: stuck-at faults and drift are drawn with
each chip; read noise is read afresh for every batch from per-tensor read generators derived from the
chip's, so all three paths still give the same per-chip results (a tensor one forward reads several times, e.g. a
cell stepped by the model's own loop, draws read noise at every read, on the loop path: `path_for_reads`). The ADC simulation (`adc_bits` / `input_bits`:
Linear, Conv1d/2d and attention outputs by the bit-sliced product of each chip's device levels) runs on the "loop"
path only: a cfg with it forces path="loop" (whatever path was asked for; the result's `path` says so),
and `quantized_accuracy` stays that of ideal converters.

`bn_calibration=ChipCalibration(train_split, images=1000)` (nvcim.batchnorm) re-estimates BatchNorm
statistics on each programmed chip before evaluating it, as a deployed chip could with unlabeled
images (loop path; the stored statistics are restored after every chip).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from nvcim.data.batching import eval_mode, materialize
from nvcim.batchnorm import ChipCalibration
from nvcim.core.config import DeviceConfig
from nvcim.layers.coverage import check_coverage, check_images
from nvcim.evaluate.forward import (
    Accumulator,
    adc_calibration_inputs,
    adc_calibration_source,
    chunked_forwards,
    count_correct,
    count_correct_on_chip,
    forward_with,
    programmed_chip,
    stacked_forwards,
)
from nvcim.evaluate.adaptive import check_target_args, target_precision
from nvcim.evaluate.paths import (DEFAULT_MEMORY_BUDGET, auto_path, check_stacked, path_for_reads,  # noqa: F401
                                  stacked_chips)
from nvcim.evaluate.results import MCResult
from nvcim.evaluate.plausibility import record_inputs, warn_implausible
from nvcim.evaluate.sampler import ChipSampler, run_generator
from nvcim.evaluate.stats import summarize
from nvcim.layers.noise import (
    apply_variation_,
    check_sliced_layers,
    noisy_modules,
    noisy_parameters,
    overridden,
    quantization_cached,
    remove_variation_,
    variation_disabled,
)
from nvcim.layers.verify import VerifyPlan, write_verify_scope

# the defaults of every Monte Carlo evaluation (API, `nvcim eval`, sweep [eval]): one place
DEFAULT_RUNS = 200  # programmed chips per σ (the paper's count)
DEFAULT_SEED = 0  # seed of the chips' draws
DEFAULT_BATCH = 1024  # images per forward

PATHS = ("auto", "stacked", "chunked", "loop")
# "chunked": chips drawn together only share the per-call costs (scoring, Python), which a few
# chips amortize; cache-sized buffers measured as fast as larger ones (MLP: 16-64 chips alike).
CHUNKED_BUFFER_BYTES = 4 << 20  # bytes of chips drawn together (at least one chip)
# ... and at most this many chips: the progress bar moves once per chunk, so a small model (hundreds of chips in
# 4 MiB) would otherwise show 0 % and no ETA for most of the run; 64 chips share the per-call costs as well
CHUNKED_MAX_CHIPS = 64


# ---- checks and model state --------------------------------------------------------------------
def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (None: it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _output_classes(model: nn.Module, batches) -> int:
    """The width of the model's logits, from one clean forward of one image; every label must be below it.

    Call with the model in eval mode (its BatchNorm statistics are not touched).
    """
    with torch.no_grad(), variation_disabled(model):
        out = model(batches[0][0][:1])  # [1, classes]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model's output {shape} is not logits [batch, classes]: Monte Carlo evaluation "
                         "needs a classifier")
    classes = int(out.shape[1])
    bad = next((yb for _, yb in batches if yb.dim() != 1), None)
    if bad is not None:
        shape = [sum(int(yb.shape[0]) for _, yb in batches), *bad.shape[1:]]
        raise ValueError(f"data: labels have shape {shape}: they must be 1-D class indices [N]; pass y.squeeze(1) "
                         "for [N, 1] labels (y.argmax(1) for one-hot ones)")
    highest = max(int(yb.max()) for _, yb in batches if yb.numel())
    if highest >= classes:
        raise ValueError(f"data: label {highest} is out of range: the model outputs {classes} classes, so labels "
                         f"must be in 0 .. {classes - 1}; check that the data set matches the model")
    return classes


@contextlib.contextmanager
def _controllers_for(model: nn.Module, cfg: DeviceConfig):
    """Noise controllers with `cfg` on the model's noisy layers for the duration; state restored after.

    A plain model gets the device model on every Conv/Linear weight (removed on exit); a model that
    already has variation applied keeps its layer selection but runs with `cfg` (σ included).
    """
    if not noisy_parameters(model):
        apply_variation_(model, cfg)  # raises SelectionError when the model has no layer to vary
        try:
            yield
        finally:
            remove_variation_(model)
        return
    held = {p.control.cfg.replace(sigma=0.0) for p in noisy_parameters(model)}  # σ aside: evaluated at cfg's
    if len(held) > 1:  # per-layer configs (apply_variation_ on some layers again): not what is evaluated
        warnings.warn(f"the model's noisy layers hold {len(held)} different device configs (apply_variation_ per "
                      "layer); Monte Carlo runs every layer under the one cfg given: evaluate layer-specific devices "
                      "by programming chips yourself (nvcim.program_chip_)", RuntimeWarning, stacklevel=4)
    check_sliced_layers(noisy_modules(model), cfg, model)
    with overridden(model, cfg=cfg, sigma=cfg.sigma, enabled=True, programmed=None):
        yield


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device):
    """Temporarily move the model to `device` (values round-trip exactly)."""
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else torch.device("cpu")
    if home == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _check_args(runs, seed, batch_size, chunk_runs, path: str) -> tuple[int, int, int, int | None]:
    """The counts as Python ints (a numpy integer is one too), each checked; the path checked."""
    def count(name: str, v, low: int, hint: str) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name}={v!r} is invalid: use an integer >= {low}{hint}")
        return int(v)

    runs = count("runs", runs, 1, " (>= 2 for a std and CI)")
    seed = count("seed", seed, 0, "")
    batch_size = count("batch_size", batch_size, 1, "")
    chunk_runs = None if chunk_runs is None else count("chunk_runs", chunk_runs, 1, " or None")
    if path not in PATHS:
        raise ValueError(f"path={path!r} is unknown: use one of {list(PATHS)}")
    return runs, seed, batch_size, chunk_runs


# ---- Monte Carlo at one σ, and the entry points ------------------------------------------------
def _mc_core(model, batches, cfg, runs, seed, chunk_runs, path, device, progress, baseline, calib=None,
             adc_source=None) -> MCResult:
    """Monte Carlo at cfg.sigma; the model is in eval mode with controllers carrying `cfg`.

    calib: None, or input batches to recalibrate BatchNorm on for each chip (loop path only).
    adc_source: None (the evaluated images), or input batches to calibrate each chip's ADCs on (a calibrated clip).
    """
    t0 = time.perf_counter()
    n = sum(int(y.numel()) for _, y in batches)
    sampler = ChipSampler(model, cfg, device)
    if baseline is None:
        baseline = _baselines(model, batches, sampler)
    elif baseline is False:
        baseline = (math.nan, math.nan)
    clean_correct, quant_correct = baseline
    sigma = cfg.sigma
    acc = Accumulator(runs)
    if cfg.sliced_mvm:  # the layers compute from each chip's device levels: only program_chip_ keeps those
        path = "loop"
    fit = None  # chips per block on the stacked path, when known
    if path == "auto":
        path, fit = auto_path(model, sampler, batches, device)
    elif path == "stacked" and not (sigma == 0 and not cfg.chip_effects and not cfg.read_sigma):
        check_stacked(model, sampler, batches)

    from tqdm.auto import tqdm

    bar = tqdm(total=runs, desc=f"MC sigma={sigma:g}", disable=not progress, leave=False)
    try:
        if path == "loop":
            adc_inputs = adc_calibration_inputs(cfg, adc_source or [x for x, _ in batches])  # None unless calibrated
            with quantization_cached():  # the weights stay put: quantize each layer once for all runs
                for r in range(runs):
                    with programmed_chip(model, run_generator(seed, r, device), sigma, calib, adc_inputs):
                        with torch.no_grad():
                            for x, y in batches:
                                acc.add([r], model(x).unsqueeze(0), y)  # [1, B, classes]
                    bar.update(1)
        elif sigma == 0 and not cfg.chip_effects and not cfg.read_sigma:
            # no noise: every run is the deterministic chip W_d; one pass serves all runs
            once = Accumulator(1)
            with torch.no_grad(), variation_disabled(model):
                for x, y in batches:
                    out = forward_with(model, dict(zip(sampler.names, sampler.w_d)), x)  # [B, classes]
                    once.add([0], out.unsqueeze(0), y)
            acc.correct[:] = once.correct[0]
            acc.ekl_sum[:] = once.ekl_sum[0]
            acc.ekl_n[:] = once.ekl_n[0]
            acc.nonfinite[:] = once.nonfinite[0]
            bar.update(runs)
        else:
            stacked = path == "stacked"
            if chunk_runs is None:
                chunk_runs = min(runs, (fit or stacked_chips(model, sampler, batches, device)) if stacked
                                 else max(1, min(CHUNKED_MAX_CHIPS,
                                                 CHUNKED_BUFFER_BYTES // max(sampler.weight_bytes(), 1))))
            chunk_runs = min(chunk_runs, runs)
            bufs = sampler.alloc(chunk_runs)  # [chunk, *W.shape] per layer, reused for every chunk
            with torch.no_grad(), variation_disabled(model):
                for start in range(0, runs, chunk_runs):
                    chunk = list(range(start, min(start + chunk_runs, runs)))
                    sampler.fill(bufs, chunk, seed, sigma)
                    if stacked:
                        stacked_forwards(model, sampler.names, [b[: len(chunk)] for b in bufs], chunk, batches, acc,
                                         sampler.read_stacked if cfg.read_sigma else None)
                    else:
                        chunked_forwards(model, sampler.names, bufs, chunk, batches, acc,
                                         (lambda i: sampler.read(bufs, i, reuse=True)) if cfg.read_sigma else None)
                    bar.update(len(chunk))
    finally:
        bar.close()
    stats = summarize(acc.correct, n, float(acc.ekl_sum.sum()), int(acc.ekl_n.sum()))
    return MCResult(
        sigma=sigma,
        runs=runs,
        seed=seed,
        n_samples=n,
        clean_accuracy=100.0 * clean_correct / n,
        quantized_accuracy=100.0 * quant_correct / n,
        per_run_correct=[int(c) for c in acc.correct],
        wall_time_s=time.perf_counter() - t0,
        path=path,
        device_config=cfg.to_dict(),
        nonfinite_runs=int((acc.nonfinite > 0).sum()),
        **stats,
    )


def _baselines(model, batches, sampler: ChipSampler, on_chip: bool = False) -> tuple[int, int]:
    """(clean, quantized) correct counts; on_chip: the quantized model programmed as a chip (`path_for_reads`)."""
    clean = count_correct(model, batches)
    w_d = dict(zip(sampler.names, sampler.w_d))
    quant = count_correct_on_chip(model, batches, w_d) if on_chip else count_correct(model, batches, w_d)
    return clean, quant


def _resolve_device(model: nn.Module, device) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available: use --device cpu")
    return device


def monte_carlo_evaluate(
    model: nn.Module,
    data: Any,
    cfg: DeviceConfig,
    *,
    runs: int | None = None,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH,
    chunk_runs: int | None = None,
    path: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
    baselines: bool = True,
    bn_calibration: ChipCalibration | None = None,
    write_verify: VerifyPlan | None = None,
    adc_calibration: Any = None,
    target_ci: float | None = None,
    max_chips: int | None = None,
    images_per_chip: int | str | None = None,
    pilot_chips: int | None = None,
) -> MCResult:
    """Monte Carlo accuracy of `model` on `data` under device variation `cfg` (σ = cfg.sigma).

    data: (x [N,C,H,W] float normalized, y [N] int64), a Split with .batches(batch_size), or an iterable of (x, y)
    batches (a DataLoader: read once, re-batched to batch_size).
    model: plain (the device model goes on every Conv/Linear weight for the call and is removed
    afterwards) or with variation already applied (its layer selection is kept, `cfg` is used).
    The model is evaluated in eval mode (BN running statistics) and left exactly as it was.
    batch_size: images per forward (per run). chunk_runs: runs drawn together, the steps of the progress bar
    (default: at most CHUNKED_MAX_CHIPS whose weights fit in 4 MiB for "chunked"; weights plus activations in
    ~1 GiB for "stacked").
    path: "stacked" (vmap over the runs of a chunk), "chunked" (one forward per run over pre-drawn
    weights), "loop" (reference: program_chip_ per run), "auto" ("stacked" on CUDA when vmap
    supports the model, else "chunked"); a cfg with the ADC simulation (adc_bits / input_bits) always
    runs "loop". device: where to compute (default: the model's device); the
    draws are always made on CPU, so results do not depend on it.
    baselines: also measure clean_accuracy and quantized_accuracy (two deterministic passes);
    False leaves them NaN.
    bn_calibration: a `nvcim.batchnorm.ChipCalibration`: recalibrate BatchNorm on each chip before
    evaluating it (forces the "loop" path; the baselines keep the stored statistics).
    write_verify: a `nvcim.writeverify.VerifyPlan`: its weights are programmed with write-verify on
    every chip (left with its residual σ); same draws on every path.
    adc_calibration: under a calibrated ADC clip (cfg.adc_clip = "calibrated"), the data whose first
    cfg.adc_calibration_images images calibrate every chip's ADCs (a Split, (x, y), x, or batches; e.g. the
    train split); default None: the first images of `data` (unlabeled, but evaluated images). Refused otherwise.
    Checks before any chip: labels are integer class indices within the model's logits (one clean
    forward of one image gives their width, kept as `num_classes`); images are cast to the model's
    floating dtype (a float16 model evaluates in float16). `runs` has no upper limit here (the CLI caps
    it). Chips with NaN / inf logits score those images as wrong, are counted in `nonfinite_runs`, and
    raise one RuntimeWarning naming the count and the likely cause.
    runs: chips (default DEFAULT_RUNS), or, target-precision mode (nvcim.evaluate.adaptive), instead of runs:
    target_ci: the 95 % CI half-width of the mean to reach, in accuracy points; max_chips: chips in the mean at
    most (default 20,000; a warning when the target needs more); images_per_chip: "auto" (default: chosen
    from the pilot to minimise the time), an integer N, or the test-set size for full-set chips;
    pilot_chips: chips scored on the full test set first (default 20), the only ones std and the percentiles
    come from. Its chips are scored on the "chunked" path ("loop" when the cfg or bn_calibration needs it).
    """
    if not isinstance(cfg, DeviceConfig):
        raise TypeError(f"cfg must be a nvcim.DeviceConfig, got {type(cfg).__name__}")
    target_ci, max_chips, images_per_chip, pilot_chips = map(_plain, (target_ci, max_chips, images_per_chip,
                                                                      pilot_chips))
    runs = _runs_for(runs, target_ci, max_chips, images_per_chip, pilot_chips)
    runs, seed, batch_size, chunk_runs = _check_args(runs, seed, batch_size, chunk_runs, path)
    path = _calibration_path(bn_calibration, path)
    dev = _resolve_device(model, device)
    batches = materialize(data, batch_size, dev, _float_dtype(model))
    calib = bn_calibration.inputs(dev) if bn_calibration is not None else None
    adc_source = adc_calibration_source(adc_calibration, cfg, dev, _float_dtype(model))
    with (_on_device(model, dev), eval_mode(model), _controllers_for(model, cfg),
          write_verify_scope(model, write_verify, cfg)):
        classes = _output_classes(model, batches)  # labels checked before any chip
        images = _check_coverage_once(model, batches)
        path, on_chip = path_for_reads(model, images, path, bool(cfg.sliced_mvm), bool(cfg.read_sigma))
        baseline = None if baselines else False  # None: _mc_core measures it (on the chip when on_chip: here)
        if baselines and on_chip:
            baseline = _baselines(model, batches, ChipSampler(model, cfg, dev), on_chip=True)
        opts = dict(runs=runs, seed=seed, batch_size=batch_size, chunk_runs=chunk_runs, progress=progress,
                    target_ci=target_ci, max_chips=max_chips, images_per_chip=images_per_chip, pilot_chips=pilot_chips,
                    adc_source=adc_source)
        res = _one_sigma(model, batches, cfg, opts, path, dev, baseline, calib)
        res.num_classes = classes
        record_inputs([res], batches, cfg, batch_size)
        warn_implausible(model, batches, [res])  # in eval mode, on `dev`: its clean forward changes no statistic
    return res


def _plain(v):
    """A numpy number as the Python int / float it stands for (checked as such); anything else as it is."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, int)):
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, int, float)):
        return float(v)
    return v


def _runs_for(runs, target_ci, max_chips, images_per_chip, pilot_chips) -> int:
    """The fixed chip count (DEFAULT_RUNS when not given); checks the target-precision arguments."""
    check_target_args(target_ci, max_chips, images_per_chip, pilot_chips)
    if target_ci is not None and runs is not None:
        raise ValueError(f"runs={runs!r} and target_ci={target_ci!r} both set the number of chips: give one "
                         "(max_chips caps the chips of target_ci)")
    return DEFAULT_RUNS if runs is None else runs


def _one_sigma(model, batches, cfg, o: dict, path: str, dev, baseline, calib) -> MCResult:
    """Monte Carlo at cfg.sigma: `o["runs"]` chips, or as many as `o["target_ci"]` needs (nvcim.evaluate.adaptive)."""
    if o["target_ci"] is None:
        return _mc_core(model, batches, cfg, o["runs"], o["seed"], o["chunk_runs"], path, dev, o["progress"], baseline,
                        calib, o["adc_source"])
    if baseline is None:
        baseline = _baselines(model, batches, ChipSampler(model, cfg, dev))
    elif baseline is False:
        baseline = (math.nan, math.nan)
    return target_precision(model, batches, cfg, o["seed"], o["target_ci"], max_chips=o["max_chips"],
                            images_per_chip=o["images_per_chip"], pilot_chips=o["pilot_chips"], baseline=baseline,
                            device=dev, batch_size=o["batch_size"], chunk_bytes=CHUNKED_BUFFER_BYTES,
                            loop=path == "loop" or bool(cfg.sliced_mvm), calib=calib, progress=o["progress"],
                            adc_source=o["adc_source"])


def _check_coverage_once(model: nn.Module, batches) -> torch.Tensor:
    """Every noisy tensor must change the output (`nvcim.layers.coverage`): checked on the first images, in the
    mode Monte Carlo runs in (eval, no_grad); a fused path that reads clean weights raises CoverageError. A tensor
    those images do not read (a branch or expert a model routes some images to) is checked on the whole first
    batch (`check_images`), so that only a tensor no image of it reads is refused. Returns the images checked."""
    with torch.no_grad():
        images = check_images(model, batches[0][0])
        check_coverage(model, images)
    return images


def _calibration_path(bn_calibration, path: str) -> str:
    if bn_calibration is None:
        return path
    if not isinstance(bn_calibration, ChipCalibration):
        raise TypeError(f"bn_calibration must be a nvcim.batchnorm.ChipCalibration, got {type(bn_calibration).__name__}")
    if path not in ("auto", "loop"):
        raise ValueError(f"path={path!r} cannot recalibrate BatchNorm per chip: use path='loop' (or 'auto')")
    return "loop"


def robustness_curve(model: nn.Module, data: Any, cfg: DeviceConfig, sigmas: Iterable[float], *, partial=None,
                     key: Callable[[float], dict] | None = None, **mc_kwargs) -> list[MCResult]:
    """`monte_carlo_evaluate` at every σ in `sigmas` (same seed: common random numbers across σ); the same
    keywords, target-precision mode included (each σ reaches the target on its own). partial: the finished σ of an
    interrupted run (nvcim.evaluate.partial.PartialResults), each under key(σ): a σ found there is taken, every σ
    evaluated here is put there."""
    sigmas = [DeviceConfig(sigma=s).sigma for s in sigmas]  # validates each σ
    if not sigmas:
        raise ValueError("sigmas is empty: give at least one σ")
    opts = {"runs": None, "seed": DEFAULT_SEED, "batch_size": DEFAULT_BATCH, "chunk_runs": None, "path": "auto",
            "device": None, "progress": False, "baselines": True, "bn_calibration": None, "write_verify": None,
            "adc_calibration": None, "target_ci": None, "max_chips": None, "images_per_chip": None, "pilot_chips": None}
    unknown = sorted(set(mc_kwargs) - set(opts))
    if unknown:
        raise TypeError(f"robustness_curve got unexpected keyword(s) {unknown}")
    opts.update(mc_kwargs)
    for k in ("target_ci", "max_chips", "images_per_chip", "pilot_chips"):
        opts[k] = _plain(opts[k])
    opts["runs"] = _runs_for(opts["runs"], opts["target_ci"], opts["max_chips"], opts["images_per_chip"],
                             opts["pilot_chips"])
    opts["runs"], opts["seed"], opts["batch_size"], opts["chunk_runs"] = _check_args(
        opts["runs"], opts["seed"], opts["batch_size"], opts["chunk_runs"], opts["path"])
    path = _calibration_path(opts["bn_calibration"], opts["path"])
    dev = _resolve_device(model, opts["device"])
    batches = materialize(data, opts["batch_size"], dev, _float_dtype(model))
    calib = opts["bn_calibration"].inputs(dev) if opts["bn_calibration"] is not None else None
    opts["adc_source"] = adc_calibration_source(opts.pop("adc_calibration"), cfg, dev, _float_dtype(model))
    results = []
    with (_on_device(model, dev), eval_mode(model), _controllers_for(model, cfg),
          write_verify_scope(model, opts["write_verify"], cfg)):
        classes = _output_classes(model, batches)  # labels checked before any chip
        images = _check_coverage_once(model, batches)
        path, on_chip = path_for_reads(model, images, path, bool(cfg.sliced_mvm), bool(cfg.read_sigma))
        baseline = _baselines(model, batches, ChipSampler(model, cfg, dev), on_chip) if opts["baselines"] else False
        for s in sigmas:
            res = partial.get(key(s)) if partial is not None else None
            if res is not None and (not math.isclose(res.sigma, s, rel_tol=0, abs_tol=1e-12) or res.seed != opts["seed"]
                                    or res.target_ci != opts["target_ci"]):  # another σ's (seed's, target's) result
                warnings.warn(f"a kept piece of an interrupted run for σ={s:g} holds σ={res.sigma!r}, seed "
                              f"{res.seed!r} (damaged or replaced): that evaluation runs again")
                res = None
            if res is None:
                cfg_s = cfg.replace(sigma=s)
                with overridden(model, cfg=cfg_s, sigma=s):
                    res = _one_sigma(model, batches, cfg_s, opts, path, dev, baseline, calib)
                res.num_classes = classes
                if partial is not None:
                    partial.put(key(s), res)
            results.append(res)
        record_inputs(results, batches, cfg, opts["batch_size"])
        warn_implausible(model, batches, results)
    return results
