"""`nvcim train`: train one model with a registered method (vanilla, noise injection, OVF, ...: --method) and save an
nvcim checkpoint.

    nvcim train --model vgg8 --dataset mnist5k --method ovf --sigma 0.3 --beta 1e-3 --epochs 5 --out runs/ovf-0.3
    nvcim train --preset cpu-quick --method noise_injection --out runs/gni
    nvcim train --config exp.toml --seed 3 --out runs/exp-s3        # flags override the file

Precedence: TrainConfig defaults < --preset < --config file (its own `preset` key first) < flags.
Everything is validated (the model against the data set's images too) before the data are loaded,
or downloaded where they are missing and a network is there, and the data are loaded before training;
the output directory is only written at the end, atomically, so an error never leaves a half-written
--out behind, and a failed download no data folder.
With --out DIR the training state after every epoch is kept beside it in DIR.train-state/ (nvcim.io.train_state):
the same command run again after an interruption resumes after the last finished epoch and ends with the weights an
uninterrupted run gives; the state is removed once DIR is written. A state of another configuration is refused
(exit 2, one line): run the command that made it, or delete it. A state left by a kill after DIR was written (the
run had finished) is removed by the next run of the command. While it runs the command holds DIR.train-state.lock (an
flock, released if the process dies; the file is removed at the end): a second run on the same --out is refused.
On CPU the command keeps freed activation memory for reuse (nvcim.train.tune_malloc: glibc mallopt),
which avoids re-faulting it every step (~12% faster OVF steps at full VGG-8 width).
--device-model sets some device fields itself (a file's keys, a name's variation): a flag or --config key that
contradicts one of them (--sigma vs the file's sigma, --variation vs rram4's, --[no-]quantize, --weight-bits,
--device-bits, --variation-option, --sampling) is refused in one line, exit 2; an equal value is fine
(nvcim.cli.device_flags). The summary names the device model.
Exit codes: 0 trained, 2 usage error (one line on stderr), 3 training diverged: a non-finite loss,
weights, or clean logits on the validation / test split (checkpoint and record still written,
metrics.status = "diverged", metrics.diverged_reason says which).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_DIVERGED = 3



def layer_patterns(text: str) -> list[str]:
    """--digital-layers: comma-separated layer-name glob patterns."""
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise argparse.ArgumentTypeError(f"{text!r} names no layer: give comma-separated layer names or globs")
    return patterns


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        print(f"nvcim train: error: {' '.join(str(message).split())} (see nvcim train --help)", file=sys.stderr)
        sys.exit(2)

    return error


def _key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false, lists), else as a comma-separated list of
    JSON values (1,2,2,1) when it is one, else as a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        pass
    if "," in value:  # a comma-separated list of numbers, as --sigmas takes them: multipliers=1,2,2,1
        try:
            return key.strip(), [json.loads(v) for v in value.split(",")]
        except ValueError:
            pass
    return key.strip(), value


_OPTION_TYPES = {"float": float, "int": int, "str": str, "floats": _floats}


def add_method_arguments(group) -> list[str]:
    """One flag per hyper-parameter of the registered methods (`--beta`, `--logit-scale`, ...), made from
    each method's `options`; returns the option names (the keys collected into method_params)."""
    from nvcim.methods import all_options

    names = []
    for name, (opt, methods) in all_options().items():
        owners = " / ".join(methods)
        text = opt.help if opt.help.startswith(tuple(m.upper() for m in methods) + tuple(methods)) \
            else f"{owners}: {opt.help}"
        metavar = "X1,..,XN" if opt.type == "floats" else opt.name.upper()
        try:
            group.add_argument(opt.flag, dest=name, type=_OPTION_TYPES[opt.type], metavar=metavar, help=text)
        except argparse.ArgumentError:
            raise ValueError(f"option {name!r} of method(s) {owners} clashes with nvcim train's own {opt.flag}: "
                             "rename the option") from None
        names.append(name)
    return names


def method_flags() -> tuple[str, ...]:
    """The method_params keys the command line can set (every registered method's options)."""
    from nvcim.methods import all_options

    return tuple(all_options())


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nvcim.methods import METHODS
    from nvcim.core.variation import VARIATIONS
    from nvcim.data import DATASETS
    from nvcim.models import list_models
    from nvcim.train import DEFAULTS, DEVICES, OPTIMIZERS, PRESETS, SCHEDULES, SELECTIONS

    D = DEFAULTS
    p = subparsers.add_parser(
        "train",
        help="train a model (vanilla, noise injection, OVF) and save a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags given on the command line reach the config
    )
    p.error = _one_line_error(p)  # one line, exit 2, for bad values of known flags

    g = p.add_argument_group("run")
    g.add_argument("--preset", metavar="NAME", help=f"start from a named preset: {', '.join(sorted(PRESETS))}")
    g.add_argument("--config", metavar="FILE",
                   help="TOML / YAML / JSON file of training config keys (method_params as a table); flags override it")
    g.add_argument("--out", metavar="DIR", help="checkpoint directory to write at the end (default: none, nothing saved); while training, "
                        "DIR.train-state keeps the state after every epoch, so rerunning the command resumes")
    g.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out (default: refuse)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (default: show them)")

    g = p.add_argument_group("model and data")
    g.add_argument("--model", metavar="NAME", help=f"a registered model (with --plugin, yours too): "
                                                   f"{_names(list_models())} (default: {D['model']})")
    g.add_argument("--width", type=float, metavar="X", help=f"width multiplier of every hidden layer (default: {D['width']})")
    g.add_argument("--dataset", metavar="NAME",
                   help=f"a registered data set (mnist5k is offline): {_names(DATASETS)}, or npz:PATH.npz "
                        f"(default: {D['dataset']})")
    g.add_argument("--data-root", metavar="DIR", help="data directory (default: $NVCIM_DATA or ~/.cache/nvcim/data)")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help=f"fraction of the training data held out for validation, in [0, 1) (default: {D['val_fraction']})")
    g.add_argument("--limit", type=int, metavar="N",
                   help="use only the first N train / val / test examples (default: all)")
    g.add_argument("--data-seed", type=int, metavar="S",
                   help=f"seed of the train/val split, independent of --seed (default: {D['data_seed']})")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="training augmentation (crop + flip for CIFAR / Tiny ImageNet) (default: the data set's)")

    g = p.add_argument_group("method (Eq. 1 and baselines)")
    g.add_argument("--method", metavar="NAME",
                   help=f"{_names(METHODS.names())} (default: {D['method']})")
    add_method_arguments(g)

    g = p.add_argument_group("device model")
    g.add_argument("--sigma", type=float, metavar="S",
                   help="training σ_d, relative to one device's maximum level; for vanilla the σ validation runs at "
                        f"(default: {D['sigma']})")
    g.add_argument("--weight-bits", type=int, metavar="M", help=f"bits per weight magnitude (default: {D['weight_bits']})")
    g.add_argument("--device-bits", type=int, metavar="K", help=f"bits per device, must divide M (default: {D['device_bits']})")
    g.add_argument("--device-model", metavar="NAME_OR_TOML",
                   help="the device trained for: a name (nvcim eval --list-device-models: rram4, fefet6-level, "
                        "stuck-chen2015, ...) or a TOML / YAML / JSON file of DeviceConfig fields; the fields it "
                        "leaves unset come from --sigma, the bit flags, --quantize, --variation, ... A field it sets "
                        "(e.g. a file's sigma) is used unless a flag (or --config) asks for it; one asking for another "
                        "value is refused (exit 2): drop one (default: gaussian)")
    g.add_argument("--variation", metavar="KIND",
                   help=f"variation kind of the device trained for: {', '.join(VARIATIONS.names())} (default: gaussian)")
    g.add_argument("--variation-option", dest="variation_option", action="append", type=_key_value, metavar="KEY=VALUE",
                   help="an option of the variation kind, e.g. threshold=1.0 or multipliers=1,2,2,1 (repeatable)")
    g.add_argument("--sampling", metavar="PATH", help="auto, fast (one draw per weight, where that is exact: the "
                                                     "Gaussian kinds, level-dependent and the presets included; refused "
                                                     "otherwise) or device (one draw per device) (default: auto)")
    g.add_argument("--quantize", action=argparse.BooleanOptionalAction,
                   help="quantize weights (Eq. 2) before adding noise; --no-quantize reproduces the authors' code "
                        f"(default: {D['quantize']})")
    g.add_argument("--digital-layers", type=layer_patterns, metavar="PATTERNS",
                   help="layers kept digital (exact, off the crossbars), comma-separated glob patterns of layer names "
                        "(a module's name, or a glob matching a layer, takes the layers in it: *.self_attn includes "
                        "out_proj), e.g. features.0,classifier; recorded in the "
                        "checkpoint, so nvcim eval keeps them digital too (default: none)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, metavar="E", help=f"training epochs (default: {D['epochs']})")
    g.add_argument("--batch-size", type=int, metavar="B", help=f"mini-batch size in images (default: {D['batch_size']})")
    g.add_argument("--optimizer", metavar="NAME", help=f"{' or '.join(OPTIMIZERS)} (default: {D['optimizer']})")
    g.add_argument("--lr", type=float, metavar="LR", help=f"initial learning rate (default: {D['lr']})")
    g.add_argument("--momentum", type=float, metavar="M", help=f"SGD momentum (default: {D['momentum']})")
    g.add_argument("--weight-decay", type=float, metavar="WD", help=f"L2 weight decay (default: {D['weight_decay']})")
    g.add_argument("--schedule", metavar="NAME",
                   help=f"{' or '.join(SCHEDULES)}: cosine anneals the LR to 0 over all steps (default: {D['schedule']})")
    g.add_argument("--seed", type=int, metavar="S",
                   help=f"seed of initialization, training noise, shuffling and augmentation (default: {D['seed']})")
    g.add_argument("--device", metavar="DEV", help=f"{', '.join(DEVICES)} (default: {D['device']})")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help=f"bf16 autocast mixed precision, CUDA only (default: {D['amp']})")
    g.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads for the run (default: torch's setting)")

    g = p.add_argument_group("validation")
    g.add_argument("--val-runs", type=int, metavar="R",
                   help="Monte Carlo chips per validation at the training σ, and for the quick test accuracy "
                        f"(0: none) (default: {D['val_runs']})")
    g.add_argument("--select", metavar="HOW",
                   help=f"which epoch's weights are kept: {', '.join(SELECTIONS)} (noisy = best Monte Carlo "
                        f"validation mean) (default: {D['select']})")
    g.add_argument("--eval-every", type=int, metavar="E", help=f"validate every E epochs and after the last (default: {D['eval_every']})")
    p.set_defaults(run=run)
    return p


def _names(names) -> str:
    """Registered names for a --help text (argparse formats help with %: a user's name may hold one)."""
    return ", ".join(names).replace("%", "%%")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the flags describe (defaults < preset < config file < flags)."""
    from nvcim.train import DEFAULTS, FIELDS, PRESETS, TrainConfig, read_config_file
    from nvcim.train.config import device_key_conflicts

    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    d: dict[str, Any] = {}
    if "preset" in given:
        if given["preset"] not in PRESETS:
            raise ValueError(f"unknown preset {given['preset']!r}: use one of {sorted(PRESETS)}")
        d.update(PRESETS[given["preset"]])
    from_file: dict[str, Any] = {}
    if "config" in given:
        from_file = read_config_file(given["config"])
        conflicts = device_key_conflicts(from_file)
        if conflicts:
            raise ValueError(f"config file {given['config']}: {conflicts[0]}")
        d.update(from_file)
    method_params = dict(d.get("method_params") or {})
    for name in method_flags():
        if name in given:
            method_params[name] = given[name]
    if method_params:
        d["method_params"] = method_params
    for name in FIELDS:
        if name in given:
            d[name] = given[name]
    optimizer = d.get("optimizer", DEFAULTS["optimizer"])
    if "momentum" in given and optimizer != "sgd":  # Adam has no momentum term to set
        raise ValueError(f"--momentum is SGD's and the optimizer is {optimizer}: add --optimizer sgd or drop it")
    device_flags = {k: given[k] for k in ("variation", "sampling") if k in given}
    if "variation_option" in given:
        device_flags["variation_options"] = dict(given["variation_option"])
    model_fields: dict[str, Any] = {}
    if "device_model" in given:
        from nvcim.cli.device_flags import refuse_conflicts
        from nvcim.io.device_models import device_model, device_model_fields
        from nvcim.train import DEVICE_KEYS

        spec = given["device_model"]
        bits = given.get("device_bits", d.get("device_bits"))  # a -level preset's multipliers: one per level
        model_fields = device_model_fields(spec, device_bits=bits)
        refuse_conflicts(spec, model_fields, _asked_device_fields(given, from_file))
        if "device_config" in from_file:
            raise ValueError(f"config file {given['config']} sets device_config and --device-model {spec} names "
                             "another device: drop one")
        defaults = {k: d.get(k, DEFAULTS[k]) for k in DEVICE_KEYS}
        d["device_config"] = device_model(spec, defaults=defaults).to_dict()
    if device_flags:
        from nvcim.core.config import DeviceConfig

        base = d.get("device_config") or {}
        base = base.to_dict() if isinstance(base, DeviceConfig) else dict(base)
        if "variation" in device_flags and "variation_options" not in device_flags and \
                "variation_options" not in model_fields:
            base.pop("variation_options", None)  # another kind: its own defaults
        d["device_config"] = {**base, **device_flags}
    if given.get("quiet"):
        d["progress"] = False
    return TrainConfig.from_dict(d)


_DEVICE_FLAGS = {"sigma": "--sigma", "weight_bits": "--weight-bits", "device_bits": "--device-bits",
                 "quantize": "--quantize", "variation": "--variation", "sampling": "--sampling"}


def _asked_device_fields(given: dict[str, Any], from_file: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The device fields the flags (or the --config file) ask for, as `refuse_conflicts` takes them: a device
    model's field that one of these contradicts is refused (nvcim.cli.device_flags)."""
    asked: dict[str, tuple[str, Any]] = {}
    for field, flag in _DEVICE_FLAGS.items():
        if field in given:
            value = given[field]
            text = ("--quantize" if value else "--no-quantize") if field == "quantize" else f"{flag} {value}"
            asked[field] = (text, value)
        elif field in from_file:
            asked[field] = (f"config file {given['config']} ({field} = {from_file[field]})", from_file[field])
    if "variation_option" in given:
        asked["variation_options"] = (" ".join(f"--variation-option {k}={v}" for k, v in given["variation_option"]),
                                      dict(given["variation_option"]))
    return asked


def summary_table(result, device_model: str | None = None, num_classes: int | None = None) -> str:
    """The summary printed after training. An accuracy below chance (100 / num_classes %, the classes of the data
    set and the model's output) is marked `*`, with a legend line under the table, as in `nvcim eval`'s table."""
    from tabulate import tabulate

    from nvcim.cli.device_flags import device_label
    from nvcim.evaluate.results import BELOW_CHANCE_MARK, NONFINITE_MARK, below_chance, chance

    cfg, m = result.config, result.metrics
    below = []

    def mark(v):
        if below_chance(v, num_classes):
            below.append(v)
            return f" {BELOW_CHANCE_MARK}"
        return ""

    def pct(v):
        return "-" if v is None else f"{v:.2f}{mark(v)}"

    bad_chips = m.get("test_noisy_nonfinite_runs") or 0  # chips whose logits went NaN / inf (counted as wrong)
    noisy = "-" if m["test_noisy_mean"] is None else (
        f"{m['test_noisy_mean']:.2f}" + (f" ± {m['test_noisy_std']:.2f}" if m["test_noisy_std"] is not None else "")
        + f" ({m['test_noisy_runs']} runs)" + (f" {NONFINITE_MARK}" if bad_chips else mark(m["test_noisy_mean"])))
    rows = [
        ("status", m["status"] + (f" ({m.get('diverged_reason') or 'non-finite loss'}) {diverged_where(m)}"
                                  if m["diverged_at"] else "")),
        ("model", f"{cfg.model} (width {cfg.width:g}) on {cfg.dataset}"),
        ("method", f"{cfg.method} {cfg.method_params or ''}".strip()
                   + "".join(f"; {k.replace('_', ' ')} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                             for k, v in (m.get("method_facts") or {}).items())),
        ("device model", device_label(device_model, cfg.device_config)),
        ("training σ_d", f"{cfg.sigma:g} (M={cfg.weight_bits}, K={cfg.device_bits}, quantize={cfg.quantize})"),
        ("epochs run / best", f"{len(m['history'])} / {m['best_epoch'] if m['best_epoch'] is not None else '-'}"
                              + (f" (resumed after epoch {', '.join(map(str, m['resumed_after_epochs']))})"
                                 if m.get("resumed_after_epochs") else "")),
        ("val accuracy, noisy (%)", pct(m["best_val_noisy"])),
        ("val accuracy, clean (%)", pct(m["best_val_clean"])),
        ("test accuracy, clean (%)", pct(m["test_clean"])),
        (f"test accuracy, σ={cfg.sigma:g} (%)", noisy),
        ("train time (s)", f"{m['train_time_s']:.1f}"),
        ("images / s", "-" if m["images_per_s"] is None else f"{m['images_per_s']:.0f}"),
        ("device", m["device"] + (" (bf16 autocast)" if m["amp"] else "")),
        ("checkpoint", str(result.checkpoint) if result.checkpoint is not None else "(not saved: no --out)"),
    ]
    table = tabulate(rows, tablefmt="simple", disable_numparse=True)
    if below:
        table += f"\n{BELOW_CHANCE_MARK} below chance ({chance(num_classes):g} % for {num_classes} classes)"
    if bad_chips:
        table += (f"\n{NONFINITE_MARK} non-finite logits (NaN / inf) on {bad_chips} of {m['test_noisy_runs']} chips, "
                  "counted as wrong")
    return table


def diverged_where(metrics: dict) -> str:
    """"at epoch E step S" for a non-finite loss; "after epoch E" for what was found once the epoch had ended (its
    weights, its validation or test outputs), not at a step."""
    at = metrics.get("diverged_at") or {}
    reason = metrics.get("diverged_reason")
    if reason in (None, "non-finite loss"):
        return f"at epoch {at.get('epoch')} step {at.get('step')}"
    return f"after epoch {at.get('epoch')}"


def below_chance_line(metrics: dict, num_classes: int | None) -> str | None:
    """One line naming the test accuracies below chance (None: none is)."""
    from nvcim.evaluate.results import below_chance, chance

    low = [f"{what} {metrics[key]:.2f}%" for key, what in (("test_clean", "clean"), ("test_noisy_mean", "noisy"))
           if metrics.get(key) is not None and below_chance(metrics[key], num_classes)]
    return (f"test accuracy {', '.join(low)} below chance ({chance(num_classes):g}% for {num_classes} classes): the "
            "model does worse than guessing; check the labels and the data set's classes") if low else None


def train_state_path(out):
    """Where `nvcim train --out DIR` keeps its training state while it trains: DIR.train-state beside DIR."""
    from pathlib import Path

    out = Path(out)
    if out.name in ("", ".", ".."):  # --out . (or ..): the directory's own name
        out = out.resolve()
    return out.with_name(out.name + ".train-state")


def run(args: argparse.Namespace) -> int:
    from nvcim.io.locks import output_lock

    cfg = config_from_args(args)
    out = getattr(args, "out", None)
    if out is None:
        return _run(args, cfg, None)
    from nvcim.train import check_out_dir

    check_out_dir(out, overwrite=True)  # a path the final write refuses (a file...), before the lock creates anything
    state = train_state_path(out)
    with output_lock(state.with_name(state.name + ".lock"), f"--out {out}"):  # two runs never write one DIR
        return _run(args, cfg, out)


def _run(args: argparse.Namespace, cfg, out) -> int:
    from nvcim.data import load_dataset
    from nvcim.io.train_state import TrainStateError, TrainStateSaveError
    from nvcim.train import check_model_fits_data, check_out_dir, resolve_device, train, tune_malloc
    from nvcim.train.resume import FRESH_START

    overwrite = bool(getattr(args, "overwrite", False))
    if out is not None:
        from nvcim.io.train_state import remove_train_state, state_dir_problem
        from nvcim.train.resume import left_by_finished_run

        if left_by_finished_run(train_state_path(out), out):  # killed after writing DIR, before removing the state
            remove_train_state(train_state_path(out))
            print(f"nvcim train: removed {train_state_path(out)}, left by the run that wrote {out}", file=sys.stderr)
        check_out_dir(out, overwrite, cfg)  # before the (possibly slow) data loading

        problem = state_dir_problem(train_state_path(out))
        if problem:
            raise ValueError(f"training state {train_state_path(out)}: {problem}")
        from pathlib import Path

        from nvcim.cli.outputs import resolved
        from nvcim.data.download import default_root

        root, dest = resolved(Path(cfg.data_root) if cfg.data_root else default_root()), resolved(Path(out))
        if root == dest or dest in root.parents:  # the final write would delete the data downloaded there
            where = f"--data-root {cfg.data_root}" if cfg.data_root else f"the data directory {root} ($NVCIM_DATA)"
            raise ValueError(f"{where} is inside --out {out}, which the checkpoint replaces at the end: choose a data "
                             "directory outside it")
    check_model_fits_data(cfg)  # before anything is downloaded
    if resolve_device(cfg.device).type == "cpu":
        tune_malloc()  # reuse activation memory between steps (fewer page faults; see nvcim.train.tune_malloc)
    splits = load_dataset(cfg.dataset, cfg.data_root, val_fraction=cfg.val_fraction, seed=cfg.data_seed, limit=cfg.limit)
    state = train_state_path(out) if out is not None else None  # train() refuses another run's state, before training
    try:
        result = train(cfg, out, overwrite=overwrite, splits=splits, state_dir=state)
    except TrainStateError as exc:  # one this run cannot resume: kept (it holds finished epochs); the fix names it
        text = str(exc)
        if isinstance(exc, TrainStateSaveError) or not text.endswith(FRESH_START):
            raise
        raise ValueError(f"{text.removesuffix(FRESH_START)}delete {state} to train from the start, or use another "
                         "--out") from None
    print(summary_table(result, getattr(args, "device_model", None), splits.info.num_classes))
    low = below_chance_line(result.metrics, splits.info.num_classes) if result.status == "ok" else None
    if low:  # marked `*` in the table, and said: also under --quiet (a diverged run says so instead)
        print(f"nvcim train: warning: {low}", file=sys.stderr)
    if result.status != "ok":
        reason = result.metrics.get("diverged_reason") or "non-finite loss"
        where = "the record is in the checkpoint's config.json" if result.checkpoint is not None else "nothing saved: no --out"
        print(f"nvcim train: training diverged ({reason} {diverged_where(result.metrics)}); {where}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0
