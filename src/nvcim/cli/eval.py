"""`nvcim eval`: Monte Carlo noisy-inference evaluation of a checkpoint (SPEC §4).

    nvcim eval runs/ovf-0.3                                # R=200 chips at the training σ
    nvcim eval runs/ovf-0.3 --sigmas 0,0.1,0.2,0.3 --runs 1000 --out results.json --csv results.csv
    nvcim eval runs/ovf-0.3 --curve --device cuda          # σ = 0, 0.05, ..., 2 x training σ
    nvcim eval runs/ovf-0.3 --sigmas 0,0.3 --recalibrate-bn 3600   # BatchNorm statistics of the clean weights
    nvcim eval runs/ovf-0.3 --recalibrate-bn-per-chip 1000         # each chip calibrates its own BatchNorm
    nvcim eval runs/ovf-0.3 --verify-fractions 0,0.01,0.05,0.2 --verify-target 90   # write-verify cost (SPEC §7)
    nvcim eval runs/ovf-0.3 --device-model 'aihwkit:pcm?prog_noise_scale=1.5' --time 3600   # aihwkit's PCM model
    nvcim eval runs/ovf-0.3 --target-ci 0.5               # chips until the mean is known to ± 0.5 points (95 %)
    nvcim eval runs/ovf-0.3 --device-model adc6_calibrated.toml --adc-calibration train  # ADC ranges from train images

With --target-ci H (instead of --runs; nvcim.evaluate.adaptive): --pilot-chips chips (default 20) score the
whole test set, then chips that each score --images-per-chip random test images (default auto: the number
that reaches H soonest) are drawn by Stein's two-stage rule until the 95 % CI half-width of the mean is at
most H (at most --max-chips of them). std and the percentiles then come from the full-set chips only (a
line under the table says so; the JSON has "percentiles_from": "full_set_chips", "runs" = R,
"images_per_chip" = N, "ci_half_width").

A --device-model (or each of --device-models) sets some device fields itself: each is used unless a flag asks
for it (so a file's `sigma` is the σ evaluated, and --curve's grid is around it); a flag that asks for another
value (--sigma / --sigmas vs sigma, --no-quantize vs quantize = true) is refused in one line, exit 2, before any
work (nvcim.cli.device_flags). The printed header names the device.

One run = one programmed chip (one draw per noisy weight, fixed for the whole split); run r of
every σ uses the same seeded draws, so results are reproducible from --seed. Prints a table
(accuracies in %, mean with std and 95% CI over runs, worst-case percentiles, EKL in nats) and
optionally writes everything, per-run accuracies included, to JSON. The CI's bounds are clipped to [0, 100]
(accuracy is bounded); with fewer than 10 chips a note on stderr says that the interval is rough. JSON:
    {"kind": "mc_eval", "nvcim_version", "checkpoint", "checkpoint_config", "dataset", "split",
     "device_config", "bn_recalibration": null | {"split", "images", "batch_size", "weights": "clean" | "each chip"},
     "results": [MCResult.to_dict(), ...], "adc_calibration": {"split", "images"} (a calibrated ADC clip only)}
With --verify-fractions (one σ): each fraction of the weights, ranked by --verify-by, is programmed with
write-verify (left with --verify-sigma); the JSON is then
    {"kind": "write_verify", ... as above ..., "write_verify": {"by", "residual_sigma", "score_images",
     "target", "stat", "fraction_for_target"}, "points": [{"fraction", "verified_weights",
     "verified_devices", "result": MCResult.to_dict()}, ...]}
A progress bar with an ETA (tqdm, per σ) is shown on stderr when it is a terminal (--progress: always,
--no-progress: never). --runs, --max-chips or --pilot-chips above MAX_RUNS is refused unless --force-runs. A
float16 / bfloat16 checkpoint is evaluated in float32 (a note says so). Errors the user can fix end in one line on stderr
and exit code 2, before anything is written or downloaded: among them an --out / --csv (or the matrix's
heat-map PNG) that is an input (inside a checkpoint, a device-model, plugin or npz data-set file) or another
output's file, and a --dataset that does not fit the checkpoint's model. An existing --out / --csv is replaced only
when nvcim wrote it (nvcim.cli.outputs.nvcim_wrote): a file of the user's is refused, never overwritten.
Resumable (σ by σ; the matrix cell by cell): with --out or --csv OUT, every finished σ waits in OUT.partial/
(nvcim.evaluate.partial) until the outputs are written, so the same command run again after an interruption evaluates
only the rest and writes exactly the results of an uninterrupted run (not: --verify-fractions, aihwkit models).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


RECALIBRATION_BATCH = 1024  # = nvcim.batchnorm.CALIBRATION_BATCH (here so that --help does not import torch)
MAX_RUNS = 100_000  # = nvcim.evaluate.adaptive.MAX_RUNS: chips per σ above which --runs needs --force-runs


def _one_line_error(message: str):
    print(f"nvcim eval: error: {' '.join(str(message).split())} (see nvcim eval --help)", file=sys.stderr)
    sys.exit(2)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nvcim.evaluate import DEFAULT_BATCH, DEFAULT_RUNS, DEFAULT_SEED

    p = subparsers.add_parser(
        "eval",
        help="Monte Carlo evaluation of a checkpoint under device variation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.error = _one_line_error  # bad values of known flags: one line, exit 2
    p.add_argument("checkpoints", metavar="CKPT", nargs="*",
                   help="checkpoint directory written by `nvcim train` (several: with --device-models)")

    g = p.add_argument_group("device variation (σ_d is relative to one device's maximum conductance level)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--sigma", metavar="S", help="evaluate at this one σ_d >= 0 (default: the --device-model file's sigma if it sets one, else the "
                        "checkpoint's training σ)")
    x.add_argument("--sigmas", metavar="S1,S2,..", help="evaluate at each of these comma-separated σ_d values")
    x.add_argument("--curve", action="store_true",
                   help="robustness curve: σ_d = 0, 0.05, ..., 2 x training σ inclusive (0 .. 0.4 if it is 0); "
                        "around the --device-model file's sigma instead when it sets one")
    bn = g.add_mutually_exclusive_group()
    bn.add_argument("--recalibrate-bn", metavar="N", default=None,
                   help="before evaluating, re-estimate every BatchNorm's running statistics from the first N >= 2 "
                        f"training-split images (in batches of {RECALIBRATION_BATCH}; --limit caps them too) with the "
                        "clean float weights (a model trained under noise stores statistics of noisy weights, which "
                        "understate its clean accuracy); every reported number, noisy ones included, then uses "
                        "these statistics (default: the checkpoint's statistics)")
    bn.add_argument("--recalibrate-bn-per-chip", metavar="N", default=None,
                    help="re-estimate the BatchNorm statistics on every programmed chip, with that chip's weights, "
                         "from the first N >= 2 training-split images before evaluating it, as a deployed chip could "
                         "with unlabeled images (one extra forward over N images per chip; the clean and quantized "
                         "baselines keep the checkpoint's statistics)")
    g.add_argument("--digital-layers", metavar="PATTERNS|none",
                   help="layers kept digital (exact, off the crossbars) in this evaluation: comma-separated layer-name "
                        "globs, or none; recorded in the results (default: the checkpoint's, from train --digital-layers)")
    g.add_argument("--no-quantize", action="store_true",
                   help="add the noise to the float weights without quantizing them first (authors' code); "
                        "default: the checkpoint's device setting (quantize on unless trained without); refused "
                        "with a --device-model that sets quantize = true")

    g = p.add_argument_group("device models (SPEC §8; `--list-device-models` names them)")
    g.add_argument("--device-model", metavar="NAME_OR_TOML",
                   help="evaluate under this device model instead of the checkpoint's device: a name (e.g. rram4, "
                        "fefet6-level, stuck-chen2015) or a TOML / YAML / JSON file of DeviceConfig fields; σ and bits "
                        "it leaves unset come from the checkpoint (or --sigma). A field it sets is used unless a flag "
                        "asks for it; a flag asking for another value (--sigma / --sigmas vs the file's sigma, "
                        "--no-quantize vs quantize = true) is refused (exit 2): drop one")
    g.add_argument("--device-models", metavar="A,B,C",
                   help="the device-model matrix: every CKPT under every device model, on common random numbers "
                        "(the same chip seeds), at one σ (a file's own sigma for its column; --sigma that differs "
                        "from it is refused); --out writes the matrix JSON and a heat-map PNG beside it, "
                        "named like --out with the suffix .png (an existing PNG there only if nvcim wrote it); "
                        "resumable: finished cells wait in OUT.partial/ until the outputs are written")
    g.add_argument("--list-device-models", action="store_true",
                   help="list the device models available by name and exit; with --device-model / --device-models, "
                        "check those (e.g. your own TOML file) and describe them instead")
    g.add_argument("--adc-calibration", choices=("evaluated", "train"), default=None,
                   help="a device with a calibrated ADC clip (adc_clip = 'calibrated') measures each chip's ADC ranges "
                        "on the first adc_calibration_images images of the evaluated split (default, unlabeled) or "
                        "of the train split (train); recorded in --out as \"adc_calibration\"")
    g.add_argument("--time", metavar="T",
                   help="aihwkit device models (aihwkit:pcm, aihwkit:reram[?KEY=VALUE&...], the aihwkit extra): seconds "
                        "between programming and inference, for drift and read noise (default: 1; reram: 1, 86400 "
                        "or 172800)")

    g = p.add_argument_group("write-verify (SPEC §7: verified devices are left with a small residual σ)")
    g.add_argument("--verify-fractions", metavar="F1,F2,..",
                   help="evaluate with each of these fractions in [0, 1] of the noisy weights write-verified (all "
                        "M/K devices of a weight), at one σ; one nested ranking, the same chips' draws for every "
                        "fraction (default: off)")
    g.add_argument("--verify-by", choices=("sensitivity", "magnitude", "random"),
                   help="which weights first: sensitivity (squared loss gradients x layer scale^2 on training "
                        "images), magnitude (|W|) or random (default: sensitivity)")
    g.add_argument("--verify-sigma", metavar="S",
                   help="residual σ_d of a verified device (default: 0.03)")
    g.add_argument("--verify-images", metavar="N",
                   help="training-split images for the sensitivity ranking (default: 1024)")
    g.add_argument("--verify-target", metavar="ACC",
                   help="report the smallest fraction whose --verify-stat reaches ACC %% (default: none)")
    g.add_argument("--verify-stat", choices=("mean", "p1", "p5", "p10", "min"),
                   help="the statistic --verify-target applies to (default: mean)")

    g = p.add_argument_group("Monte Carlo")
    g.add_argument("--runs", metavar="R", default=None,
                   help=f"programmed chips per σ, >= 2; above {MAX_RUNS} only with --force-runs (default: {DEFAULT_RUNS})")
    g.add_argument("--target-ci", metavar="H",
                   help="instead of --runs: draw chips until the 95 %% CI half-width of the mean accuracy is at most "
                        "H points (e.g. 0.5; see above)")
    g.add_argument("--max-chips", metavar="R",
                   help="with --target-ci: chips in the mean at most, >= 2 (default: 20000; a warning when H needs more)")
    g.add_argument("--images-per-chip", metavar="N|auto",
                   help="with --target-ci: test images each chip scores, an integer >= 1 or auto (default: auto)")
    g.add_argument("--pilot-chips", metavar="F",
                   help="with --target-ci: chips scored on the whole test set first, >= 2; std and the percentiles "
                        "come from them alone (default: 20)")
    g.add_argument("--force-runs", action="store_true",
                   help=f"allow --runs, --max-chips, --pilot-chips above {MAX_RUNS}")
    g.add_argument("--seed", metavar="S", default=str(DEFAULT_SEED),
                   help=f"seed of the chips' draws, >= 0 (default: {DEFAULT_SEED})")
    g.add_argument("--batch-size", metavar="B", default=str(DEFAULT_BATCH),
                   help=f"images per forward pass (default: {DEFAULT_BATCH})")
    g.add_argument("--chunk-runs", metavar="N", default=None,
                   help="runs drawn together; bounds memory (default: automatic, ~1 GiB of weights)")
    g.add_argument("--device", metavar="DEV", default="cpu", choices=("cpu", "cuda"),
                   help="cpu or cuda; draws are made on CPU either way, so results do not depend on it (default: cpu)")
    bar = g.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true",
                     help="show a progress bar over runs, with an ETA, on stderr even when it is not a terminal "
                          "(default: shown when stderr is a terminal)")
    bar.add_argument("--no-progress", action="store_true", help="never show the progress bar")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", metavar="NAME",
                   help="mnist5k (offline), mnist, fashion_mnist, cifar10, cifar100, tiny_imagenet "
                        "(default: the checkpoint's)")
    g.add_argument("--data-root", metavar="DIR",
                   help="data directory (default: the checkpoint's, else $NVCIM_DATA or ~/.cache/nvcim/data)")
    g.add_argument("--split", default="test", choices=("test", "val"),
                   help="test, or val (the split held out from the training data with the checkpoint's "
                        "val fraction and data seed) (default: test)")
    g.add_argument("--limit", metavar="N", default=None,
                   help="use only the first N examples of the split (default: the checkpoint's data limit, else all)")

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="FILE", help="write all results (per-run accuracies included) as JSON (default: none)")
    g.add_argument("--csv", metavar="FILE", help="write one row of statistics per σ as CSV (default: none)")
    p.set_defaults(run=run)
    return p


def _number(flag: str, text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{flag} {text!r} is not a finite number")
    return v


def _sigma(flag: str, text: str) -> float:
    v = _number(flag, text)
    if v < 0:
        raise ValueError(f"{flag} {text!r} is invalid: σ_d must be >= 0")
    return v


def _int(flag: str, text: str, minimum: int) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an integer") from None
    if v < minimum:
        raise ValueError(f"{flag} {v} is invalid: use an integer >= {minimum}")
    return v


def _target_options(args: argparse.Namespace) -> dict:
    """The target-precision keywords of --target-ci and its companions ({} without --target-ci)."""
    if args.target_ci is None:
        given = [f for f, v in (("--max-chips", args.max_chips), ("--images-per-chip", args.images_per_chip),
                                ("--pilot-chips", args.pilot_chips)) if v is not None]
        if given:
            raise ValueError(f"{given[0]} needs --target-ci: give the 95 % CI half-width to reach (e.g. --target-ci 0.5)")
        return {}
    if args.runs is not None:
        raise ValueError("--runs and --target-ci both set the number of chips: give one (--max-chips caps --target-ci)")
    target = _number("--target-ci", args.target_ci)
    if target <= 0:
        raise ValueError(f"--target-ci {args.target_ci!r} is invalid: use a half-width in accuracy points > 0 (e.g. 0.5)")
    images = args.images_per_chip
    if images is not None and images.strip() != "auto":
        images = _int("--images-per-chip", images, 1)
    opts = {"target_ci": target, "max_chips": None if args.max_chips is None else _int("--max-chips", args.max_chips, 2),
            "images_per_chip": "auto" if images is None else (images.strip() if isinstance(images, str) else images),
            "pilot_chips": None if args.pilot_chips is None else _int("--pilot-chips", args.pilot_chips, 2)}
    from nvcim.evaluate.adaptive import check_target_args  # the API's checks: the --target-ci bound, MAX_RUNS

    check_target_args(**opts, limit=None if args.force_runs else MAX_RUNS, flags=True)
    return opts


def adc_alone(model, split, cfg, results, **mc) -> None:
    """For a device with ADCs (or a DAC): one line with the σ = 0 chip through them (no variation, faults, read noise
    or drift: deterministic, 2 chips), beside the quantized model (whose column has no ADC), so that what the
    converters alone cost is measured, not guessed; with a full-scale clip that costs more than 10 points, a note
    pointing at adc_clip = "calibrated" (typical partial sums get few of the full scale's levels, SPEC §8)."""
    if not cfg.sliced_mvm:
        return
    from nvcim.evaluate import monte_carlo_evaluate

    ideal = cfg.replace(sigma=0.0, stuck_at=(0.0, 0.0), read_sigma=0.0, drift_time=None, drift_compensation=False)
    alone = monte_carlo_evaluate(model, split, ideal, runs=2, baselines=False, **mc).mean
    quantized = results[0].quantized_accuracy
    adc = f"{cfg.adc_bits}-bit ADCs, {cfg.adc_clip} clip" if cfg.adc_bits else "ideal ADCs"
    print(f"the σ = 0 chip through these converters ({adc}, {f'{cfg.input_bits}-bit' if cfg.input_bits else 'ideal'} "
          f"DAC): {alone:.2f} %; the quantized model without them: {quantized:.2f} %")
    if cfg.adc_bits is not None and cfg.adc_clip == "full_scale" and quantized - alone > 10:
        print(f"nvcim eval: note: the ADCs alone cost {quantized - alone:.1f} points here: with the full-scale clip "
              "(range tile_rows·(2^K−1)·max|x|) typical partial sums get few ADC levels; compare adc_clip = "
              "\"calibrated\" (ranges measured on images) or more adc_bits", file=sys.stderr)


def note_few_chips(results, fix: str = "use --runs 10 or more") -> None:
    """One note on stderr when some result's 95 % CI rests on fewer than FEW_CHIPS chips (wide: its t quantile is large
    and the std itself rough; the printed and recorded bounds are clipped to [0, 100], nvcim.evaluate.stats)."""
    from nvcim.evaluate.stats import FEW_CHIPS, t_quantile

    few = sorted({r.runs for r in results if r.runs < FEW_CHIPS})
    if not few:
        return
    t = f" (t = {t_quantile(0.975, few[0] - 1):.3g} for {few[0]})" if few[0] >= 2 else ""
    print(f"nvcim eval: note: the 95 % CI rests on only {'/'.join(map(str, few))} chips (fewer than {FEW_CHIPS}): a "
          f"wide, rough interval{t}; {fix}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from nvcim.cli.device_flags import adc_calibration, device_label
    from nvcim.cli.eval_data import checkpoint_device, device_defaults, digital_override, load_for_eval
    from nvcim.cli.eval_data import finish_pieces, resume_pieces
    from nvcim.cli.eval_matrix import varies_at_zero
    from nvcim.cli.eval_matrix import run_matrix
    from nvcim.evaluate import default_sigma_grid, results_table, robustness_curve, write_csv
    from nvcim.evaluate.files import EvaluationFile, write_result_file
    from nvcim.interop.aihwkit import is_aihwkit_spec
    from nvcim.io.checkpoint import read_checkpoint_config
    from nvcim.layers.noise import digital_layers
    from nvcim.io.device_models import device_model

    if args.list_device_models:
        from nvcim.cli.device_flags import list_device_models_cli

        return list_device_models_cli(args.device_model, args.device_models)
    if not args.checkpoints:
        raise ValueError("no checkpoint given: nvcim eval CKPT [...] (or --list-device-models)")
    # validate everything cheap before loading anything
    from nvcim.evaluate import DEFAULT_RUNS

    target = _target_options(args)
    runs = DEFAULT_RUNS if args.runs is None else _int("--runs", args.runs, 2)
    if runs > MAX_RUNS and not args.force_runs:
        raise ValueError(f"--runs {runs} is above {MAX_RUNS} chips per σ (hours of work for a mistyped number): "
                         "pass --force-runs to run that many")
    progress = args.progress or (not args.no_progress and sys.stderr.isatty())
    seed = _int("--seed", args.seed, 0)
    batch_size = _int("--batch-size", args.batch_size, 1)
    chunk_runs = None if args.chunk_runs is None else _int("--chunk-runs", args.chunk_runs, 1)
    limit = None if args.limit is None else _int("--limit", args.limit, 1)
    recal = None if args.recalibrate_bn is None else _int("--recalibrate-bn", args.recalibrate_bn, 2)
    per_chip = None if args.recalibrate_bn_per_chip is None else _int("--recalibrate-bn-per-chip", args.recalibrate_bn_per_chip, 2)
    verify = None
    if args.verify_fractions is not None:
        fr = [s.strip() for s in args.verify_fractions.split(",") if s.strip()]
        if not fr:
            raise ValueError(f"--verify-fractions {args.verify_fractions!r} lists no value: give e.g. 0,0.05,0.2")
        fractions = [_number("--verify-fractions", f) for f in fr]
        bad = [f for f in fractions if not 0 <= f <= 1] or [f for i, f in enumerate(fractions) if f in fractions[:i]]
        if bad:
            raise ValueError(f"--verify-fractions {bad[0]:g} is invalid: fractions are in [0, 1], each once")
        if args.curve or (args.sigmas is not None and len([s for s in args.sigmas.split(",") if s.strip()]) != 1):
            raise ValueError("--verify-fractions evaluates at one σ: use --sigma S (or the training σ), not --curve/--sigmas")
        if args.recalibrate_bn_per_chip is not None:
            raise ValueError("--verify-fractions and --recalibrate-bn-per-chip cannot be combined: drop one")
        acc = None if args.verify_target is None else _number("--verify-target", args.verify_target)
        if acc is not None and not 0 <= acc <= 100:
            raise ValueError(f"--verify-target {args.verify_target} is not an accuracy: give a percentage in [0, 100]")
        verify = {"fractions": fractions, "by": args.verify_by or "sensitivity", "target": acc,
                  "stat": args.verify_stat or "mean",
                  "residual_sigma": _sigma("--verify-sigma", args.verify_sigma or "0.03"),
                  "images": _int("--verify-images", args.verify_images or "1024", 1)}
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("verify_target", "verify_by", "verify_sigma", "verify_images",
                                                     "verify_stat") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{given[0]} needs --verify-fractions: give the fractions to try")
    sigmas = None
    if args.sigma is not None:
        sigmas = [_sigma("--sigma", args.sigma)]
    elif args.sigmas is not None:
        parts = [s for s in args.sigmas.split(",") if s.strip()]
        if not parts:
            raise ValueError(f"--sigmas {args.sigmas!r} lists no value: give e.g. 0,0.1,0.2")
        sigmas = [_sigma("--sigmas", s.strip()) for s in parts]
        if len(set(sigmas)) != len(sigmas):
            raise ValueError(f"--sigmas {args.sigmas!r} lists a σ_d twice: give each value once")
    model_fields = {}  # the DeviceConfig fields --device-model sets itself
    if args.device_model and not is_aihwkit_spec(args.device_model):
        from nvcim.cli.device_flags import refuse_conflicts
        from nvcim.io.device_models import device_model_fields

        model_fields = device_model_fields(args.device_model)  # a bad name or file: one line, before any work
        asked = {}
        if sigmas is not None:
            asked["sigma"] = (f"--sigma {args.sigma}" if args.sigma is not None else f"--sigmas {args.sigmas}", sigmas)
        if args.no_quantize:
            asked["quantize"] = ("--no-quantize", False)
        refuse_conflicts(args.device_model, model_fields, asked)
    from nvcim.cli.outputs import check_outputs, eval_inputs

    if args.time is not None:
        args.time = _number("--time", args.time)
        if args.time < 0:
            raise ValueError(f"--time {args.time:g} is invalid: give seconds >= 0")
        if not (is_aihwkit_spec(args.device_model) or any(is_aihwkit_spec(n) for n in (args.device_models or "").split(","))):
            raise ValueError("--time applies to aihwkit device models only (--device-model aihwkit:pcm): drop it, or "
                             "set drift_time in a device model file (seconds since programming + t0 = 20 s: --time T "
                             "is drift_time T + 20)")
    if target and (verify is not None or args.device_models is not None or len(args.checkpoints) > 1):
        raise ValueError("--target-ci works with one checkpoint, without --verify-fractions / --device-models: "
                         "drop one")
    if args.device_models is not None or len(args.checkpoints) > 1:
        if args.curve or (sigmas is not None and len(sigmas) != 1) or verify is not None or args.device_model \
                or recal is not None or per_chip is not None:
            raise ValueError("the device-model matrix evaluates at one σ (--sigma) without --curve / --sigmas / "
                             "--verify-fractions / --device-model / BatchNorm recalibration: drop those flags")
        if args.device != "cpu" or chunk_runs is not None:  # never a flag silently ignored
            raise ValueError("the device-model matrix runs on the CPU with automatic chunking: drop --device / "
                             "--chunk-runs (or evaluate each checkpoint alone with them)")
        return run_matrix(args, [Path(c) for c in args.checkpoints], sigma=sigmas[0] if sigmas else None, runs=runs,
                          seed=seed, batch_size=batch_size, limit=limit, progress=progress)
    ckpt = Path(args.checkpoints[0])
    # before the Monte Carlo runs whose results they hold: writable, distinct, none an input (nvcim.cli.outputs)
    check_outputs([("--out", args.out), ("--csv", args.csv)], eval_inputs(args, [ckpt]))
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist: check the path")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available: use --device cpu")

    if is_aihwkit_spec(args.device_model):
        from nvcim.cli.eval_aihwkit import run_aihwkit

        if args.curve or sigmas is not None or verify is not None or recal is not None or per_chip is not None \
                or args.no_quantize or target or args.adc_calibration:
            raise ValueError(f"--device-model {args.device_model} is aihwkit's noise model, which has no σ_d, "
                             "quantization, write-verify, target precision or bit-sliced ADC here: drop --sigma / "
                             "--sigmas / --curve / --no-quantize / --verify-fractions / BatchNorm recalibration / "
                             "--target-ci / --adc-calibration")
        return run_aihwkit(args, ckpt, runs=runs, seed=seed, batch_size=batch_size, limit=limit, progress=progress)
    chosen = None  # the device model built with the checkpoint's defaults: a bad file's values fail before loading
    if args.device_model:
        chosen = device_model(args.device_model, defaults=device_defaults(ckpt, args.no_quantize))
    if args.adc_calibration is not None:  # without a calibrated ADC clip: refused from config.json, before loading
        adc_calibration(args.adc_calibration, [chosen or checkpoint_device(ckpt, read_checkpoint_config(ckpt),
                                                                           args.no_quantize)], None, args.split)
    if verify is None and (args.out or args.csv):  # where the finished σ of an interrupted run wait: checked now
        from nvcim.evaluate.partial import PartialResults

        PartialResults.beside(args.out or args.csv)
    loaded = load_for_eval(ckpt, dataset=args.dataset, data_root=args.data_root, split=args.split, limit=limit,
                           no_quantize=args.no_quantize, digital=digital_override(args.digital_layers), own_device=not chosen)
    model, config, base, dataset, splits, split = (loaded.model, loaded.config, loaded.device, loaded.dataset,
                                                    loaded.splits, loaded.split)
    spec = config.get("model", {})
    if chosen is not None:
        base = chosen
    train_sigma = loaded.device.sigma
    center = base.sigma if "sigma" in model_fields else train_sigma  # a device model file's σ, else the training σ
    if args.curve:
        sigmas = default_sigma_grid(center)
    elif sigmas is None:
        sigmas = [center]
        if center == 0 and "sigma" not in model_fields and not varies_at_zero(base):  # every chip alike
            why = "records no device" if not config.get("device") else "was trained at σ_d 0"
            print(f"nvcim eval: note: checkpoint {ckpt} {why}, so it is evaluated at σ_d = 0: every chip is the "
                  "quantized model; pass --sigma, --sigmas or --curve for noisy chips", file=sys.stderr)
    device = device_label(args.device_model, base)
    if "sigma" in model_fields:
        device += f" at its σ_d {base.sigma:g}"

    recalibration, calibration = None, None
    adc_data, adc_record = adc_calibration(args.adc_calibration, [base], splits, args.split)
    if recal is not None or per_chip is not None:
        from nvcim.batchnorm import ChipCalibration, batchnorm_layers, recalibrate_batchnorm_, recalibration_record

        flag = "--recalibrate-bn" if recal is not None else "--recalibrate-bn-per-chip"
        if not batchnorm_layers(model):
            raise ValueError(f"checkpoint {ckpt}: the model has no BatchNorm statistics to recalibrate: drop {flag}")
        if len(splits.train) == 0:
            raise ValueError(f"the train split of {dataset} is empty: {flag} needs training images")
        recalibration = recalibration_record("clean" if recal is not None else "each chip", recal or per_chip,
                                             len(splits.train), RECALIBRATION_BATCH)
        if recal is not None:
            recalibrate_batchnorm_(model, splits.train, batch_size=RECALIBRATION_BATCH, max_images=recal)  # on CPU, where the model is
        else:
            calibration = ChipCalibration(splits.train, images=per_chip, batch_size=RECALIBRATION_BATCH)

    if verify is not None:
        from nvcim.cli.eval_verify import run_write_verify

        return run_write_verify(args, ckpt, model, config, spec, dataset, splits, split, base.replace(sigma=sigmas[0]),
                                train_sigma, verify, recalibration, device,
                                dict(runs=runs, seed=seed, batch_size=batch_size, chunk_runs=chunk_runs,
                                     device=args.device, progress=progress, adc_calibration=adc_data), adc_record)
    partial, common, prints = resume_pieces(args, [ckpt], kind="curve σ", runs=runs, seed=seed, batch_size=batch_size,
                                            chunk_runs=chunk_runs, device=args.device, target=target, limit=limit,
                                            dataset=dataset, digital_layers=args.digital_layers,
                                            bn_recalibration=recalibration, data=splits.sha256)
    results = robustness_curve(model, split, base, sigmas, runs=None if target else runs, seed=seed,
                               batch_size=batch_size, chunk_runs=chunk_runs, device=args.device, progress=progress,
                               bn_calibration=calibration, adc_calibration=adc_data, **target, partial=partial,
                               key=lambda s: {**common, "checkpoint": prints[0], "data_file": splits.fingerprint,
                                              "sigma": s, "device_config": base.replace(sigma=s).to_dict()})
    chips = f"chips until ±{target['target_ci']:g} (95 % CI)" if target else f"{runs} runs"
    digital = digital_layers(model)
    print(f"{ckpt}: {spec.get('name', '?')} on {dataset} ({args.split}, {results[0].n_samples} images), "
          f"{chips} per σ, seed {seed}, M={base.weight_bits} K={base.device_bits} quantize={base.quantize}, "
          f"device {device}, training σ {train_sigma:g}" + (f", digital {', '.join(digital)}" if digital else ""))
    if recalibration is not None:
        how = "the clean weights" if recalibration["weights"] == "clean" else "each chip's weights, per chip"
        asked = recal if recal is not None else per_chip
        fewer = f" (of {asked} asked)" if asked and asked > recalibration["images"] else ""
        print(f"BatchNorm statistics recalibrated from {recalibration['images']} training images{fewer} with {how}")
    if adc_record is not None:
        print(f"ADC ranges calibrated per chip on the first {adc_record['images']} {adc_record['split']} images")
    print(results_table(results))
    note_few_chips(results, "give a smaller --target-ci for more chips" if target else "use --runs 10 or more")
    record = EvaluationFile(results=list(results), checkpoint=str(ckpt), checkpoint_config=config, dataset=dataset,
                            split=args.split, device_config=base.to_dict(), bn_recalibration=recalibration,
                            adc_calibration=adc_record, digital_layers=digital_override(args.digital_layers),
                            device_model=args.device_model or None)
    if args.out:
        write_result_file(args.out, record)
        print(f"wrote {args.out}")
    if args.csv:
        write_csv(args.csv, results, device_model=args.device_model)
        print(f"wrote {args.csv}")
    finish_pieces(partial, len(sigmas), "σ")
    adc_alone(model, split, base, results, seed=seed, batch_size=batch_size, device=args.device,  # after the outputs:
              adc_calibration=adc_data, bn_calibration=calibration)  # an error here loses no evaluation
    return 0
