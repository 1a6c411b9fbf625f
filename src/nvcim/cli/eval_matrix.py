"""`nvcim eval CKPT... --device-models A,B,C`: every checkpoint under every device model (aihwkit:pcm and
aihwkit:reram too, at --time), at one σ (a device-model file's own sigma for its column; --sigma or --no-quantize
contradicting a file is refused: nvcim.cli.device_flags), on common random numbers (a checkpoint given twice, by any path, is refused); prints the matrix and writes it as JSON
(--out), a heat-map PNG beside the JSON (--out with the suffix .png; an existing file there is replaced only if
nvcim wrote it), and CSV (--csv, one row per cell); every path is checked before any work (nvcim.cli.outputs). `nvcim report` shows matrix files in a section of their own.
Columns with a calibrated ADC clip calibrate each chip on the evaluated split's first images, or with
--adc-calibration train on the train split's (the file's "adc_calibration" says which).
Resumable: with --out (or --csv) M, every finished cell (but aihwkit's) is kept in M.partial/ (nvcim.evaluate.partial) until the
outputs are written, so the same command run again after an interruption evaluates only the cells it had not finished
and writes exactly the results of an uninterrupted run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from nvcim.cli.eval import note_few_chips
from nvcim.cli.eval_data import device_defaults, finish_pieces, load_for_eval, resume_pieces
from nvcim.evaluate.results import same_everywhere, same_note
from nvcim.cli.outputs import check_outputs, eval_inputs, resolved, same_file
from nvcim.evaluate.files import write_result_file
from nvcim.evaluate.matrix import device_matrix
from nvcim.core.config import DeviceConfig
from nvcim.layers.noise import check_sliced_layers, digital_layers, noisy_modules, selected_layers
from nvcim.interop.aihwkit import aihwkit_device, check_convertible, is_aihwkit_spec
from nvcim.interop.aihwkit import require as require_aihwkit
from nvcim.cli.device_flags import adc_calibration, refuse_conflicts
from nvcim.io.device_models import device_model, device_model_fields
from nvcim.io.files import atomic_write_bytes
from nvcim.report.labels import device_description
from nvcim.report.matrix import is_matrix_png, matrix_csv, matrix_png, matrix_table
from nvcim.report.records import training_recipe


def run_matrix(args: argparse.Namespace, ckpts: list[Path], *, sigma: float | None, runs: int, seed: int,
               batch_size: int, limit: int | None, progress: bool) -> int:
    if args.digital_layers is not None:  # the matrix keeps each checkpoint's own: never a flag silently ignored
        raise ValueError("--digital-layers applies to one checkpoint's evaluation, not to --device-models (each "
                         "checkpoint keeps its own digital layers): drop one")
    first: dict[Path, Path] = {}  # resolved path -> the checkpoint as given
    for ck in ckpts:  # one row per checkpoint: the same one twice would only duplicate a row
        other = first.setdefault(resolved(ck), ck)
        if other is not ck:
            also = "" if str(other) == str(ck) else f" (as {other} and {ck})"
            raise ValueError(f"checkpoint {ck} is given twice{also}: list each checkpoint once")
    given = args.device_models if args.device_models is not None else "gaussian"  # "": refused below, not gaussian
    names = [n.strip() for n in given.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--device-models {args.device_models!r} lists no device model: give e.g. gaussian,rram4")
    if len(set(names)) != len(names):
        raise ValueError(f"--device-models {args.device_models!r} names a device model twice: list each once")
    def resolve(name: str, defaults=None):
        if is_aihwkit_spec(name):  # aihwkit's noise models (nvcim.interop.aihwkit; σ and bits do not apply)
            return aihwkit_device(name, t_inference=time)
        return device_model(name, defaults=defaults)

    time = None if args.time is None else float(args.time)
    for name in names:  # an unknown name or a missing file: one line, before anything is read
        if is_aihwkit_spec(name):
            resolve(name)
        else:
            device_model_fields(name)  # its values: below, with each checkpoint's bits, before any loading
    asked = {}  # flags against the fields a device model sets: one rule (nvcim.cli.device_flags)
    if sigma is not None:
        asked["sigma"] = (f"--sigma {args.sigma}" if args.sigma is not None else f"--sigmas {args.sigmas}", sigma)
    if args.no_quantize:
        asked["quantize"] = ("--no-quantize", False)
    own_sigma = {}  # device model -> the σ its file sets (used for its column when no --sigma is given)
    for name in names:
        if not is_aihwkit_spec(name):
            fields = device_model_fields(name)
            refuse_conflicts(name, fields, asked)
            if "sigma" in fields and sigma is None:
                own_sigma[name] = None  # its σ: filled below, once it is built with a checkpoint's bits
    if any(is_aihwkit_spec(n) for n in names):
        require_aihwkit()
    png = Path(args.out).with_suffix(".png") if args.out else None
    if png is not None and same_file(png, Path(args.out)):
        raise ValueError(f"--out {args.out}: the heat map is written beside the JSON as {png}, the same file: "
                         "give --out a .json name")
    check_outputs([("--out", args.out), ("--csv", args.csv), ("the heat-map PNG (--out with .png)", png)],
                  eval_inputs(args, ckpts))  # every path, before anything is loaded
    if args.out or args.csv:  # where an interrupted run keeps its finished cells: a file there is refused now
        from nvcim.evaluate.partial import PartialResults

        PartialResults.beside(args.out or args.csv)
    if png is not None and png.exists() and not is_matrix_png(png, beside=args.out):
        raise ValueError(f"--out {args.out}: its heat map would replace {png}, which nvcim did not write: "
                         "move that file or choose another --out")
    for ck in ckpts:
        if not ck.exists():
            raise FileNotFoundError(f"checkpoint {ck} does not exist: check the path")
    devices = []  # every cell's device, built (and so validated) with its checkpoint's bits before anything is loaded
    for ck in ckpts:
        defaults = device_defaults(ck, args.no_quantize)  # config.json only
        if sigma is not None:
            defaults["sigma"] = sigma
        devices.append({name: resolve(name, defaults) for name in names})
    own_sigma = {name: devices[0][name].sigma for name in own_sigma}  # a file's own σ: the same in every row
    if sigma is None:  # each checkpoint's training σ: a row at σ 0 (a sweep's vanilla) beside rows at 0.2 would
        trained = {ck: d.sigma for ck, row in zip(ckpts, devices)  # compare chips of different variation silently
                   for name, d in row.items() if isinstance(d, DeviceConfig) and name not in own_sigma}
        still = sorted({name for row in devices for name, d in row.items()
                        if name not in own_sigma and isinstance(d, DeviceConfig) and not varies_at_zero(d)})
        if trained and set(trained.values()) == {0.0} and still:  # vanilla checkpoints: those columns vary nothing
            raise ValueError(f"the checkpoints were trained at σ_d 0 ({next(iter(trained))}, ...), so a matrix at "
                             f"their training σ_d gives column(s) {', '.join(still)} identical chips (no variation "
                             "at σ_d 0): give --sigma S")
        if len(set(trained.values())) > 1:
            shown = ", ".join(f"{ck}: {s:g}" for ck, s in list(trained.items())[:4]) + (", ..." if len(trained) > 4
                                                                                         else "")
            raise ValueError(f"the checkpoints were trained at different σ_d ({shown}) and a matrix compares its rows "
                             "at one σ_d: give --sigma S")
    adc_calibration(args.adc_calibration, [d for row in devices for d in row.values()], None, args.split)
    rows, info, adc_data, data_files = [], [], [], []
    for i, ck in enumerate(ckpts):
        loaded = load_for_eval(ck, dataset=args.dataset, data_root=args.data_root, split=args.split, limit=limit,
                               no_quantize=args.no_quantize, own_device=False)  # the columns' devices replace it
        for name, device in devices[i].items():  # a layer a column cannot run: said now, not after other cells
            if is_aihwkit_spec(name):
                try:
                    check_convertible(loaded.model, device)
                except ValueError as exc:
                    raise ValueError(f"checkpoint {ck} under {name}: {exc}") from None
            elif isinstance(device, DeviceConfig):
                try:
                    check_sliced_layers(noisy_modules(loaded.model) or selected_layers(loaded.model), device,
                                        loaded.model)
                except ValueError as exc:  # the matrix keeps each checkpoint's digital layers (no --digital-layers)
                    raise ValueError(f"checkpoint {ck} under {name}: {exc} (here: evaluate it alone with nvcim eval "
                                     "--device-model ... --digital-layers, or retrain it with them)") from None
        rows.append((str(ck), loaded.dataset, loaded.model, loaded.split))
        data_files.append(loaded.splits.fingerprint)
        adc_data.append(adc_calibration(args.adc_calibration, list(devices[i].values()), loaded.splits,
                                        args.split)[0])  # None: the evaluated images
        model = loaded.config.get("model") or {}
        info.append({"method": dict(loaded.config.get("method") or {}), "seed": loaded.config.get("seed"),
                     "model": {"name": model.get("name"), "width": model.get("width")},
                     "digital_layers": digital_layers(loaded.model),
                     "train_sigma": (loaded.config.get("device") or {}).get("sigma"),
                     "epochs": (loaded.config.get("train") or {}).get("epochs"),
                     # what else made the weights: models trained otherwise are arms of their own in the report
                     "train_device": device_description(loaded.config.get("device") or {}),
                     "recipe": training_recipe(loaded.config.get("train"))})
    same_images(rows, args.split)
    partial, common, prints = resume_pieces(args, ckpts, kind="device_matrix cell", sigma=sigma, runs=runs, seed=seed,
                                            batch_size=batch_size, limit=limit, time=args.time)

    digests = [split.sha256() for (_, _, _, split) in rows] if partial is not None else None

    def key(i: int, name: str) -> dict:  # all a cell's result depends on
        return {**common, "checkpoint": prints[i], "dataset": rows[i][1], "data_file": data_files[i],
                "data": digests[i],
                "device_model": name, "device": devices[i][name].to_dict()}

    rec = device_matrix(rows, names, lambda i, name: devices[i][name], runs=runs, seed=seed, batch_size=batch_size,
                        sigma=sigma, progress=progress, row_info=info, adc_data=adc_data,
                        adc_split="train" if args.adc_calibration == "train" else args.split,
                        say=lambda line: print(line, file=sys.stderr), partial=partial, key=key)
    t = matrix_table(rec)
    print(tabulate(t.rows, headers=t.headers, disable_numparse=True))
    if t.legend:  # its marks: below chance, non-finite, a percentile from too few chips
        print(t.legend)
    print(t.note)
    note_few_chips([c["result"] for row in rec.cells for c in row])
    same = [(ck, dm, c["result"]) for ck, row in zip(rec.checkpoints, rec.cells)
            for dm, c in zip(rec.device_models, row) if same_everywhere(c["result"])]
    if same:  # zero-width CIs: what they rest on (as under nvcim eval's table)
        ck, dm, first = same[0]
        print(f"{len(same)} cell(s) with a zero-width CI, e.g. {ck} under {dm}, {same_note(first)}")
    for name, s in own_sigma.items():
        print(f"{name}: σ_d = {s:g}, set by the file")
    picture = matrix_png(rec) if args.out else None  # rendered before any file is written
    if args.out:
        write_result_file(args.out, rec)
        atomic_write_bytes(png, picture)
        print(f"wrote {args.out} and {png}")
    if args.csv:
        atomic_write_bytes(args.csv, matrix_csv(rec))
        print(f"wrote {args.csv}")
    finish_pieces(partial, len(ckpts) * len(names), "cells")
    return 0


def same_images(rows: list[tuple], split: str) -> None:
    """Refuse rows that would be scored on different images of one data set: a matrix compares its rows on the same
    chips and images. Each checkpoint's own training --limit gives another number of images; another data seed
    (its val split) or another copy of the data file gives other images of the same number."""
    seen: dict[str, dict[str, tuple[int, str]]] = {}  # data set -> {content digest: (images, first checkpoint)}
    for ck, dataset, _, images in rows:
        seen.setdefault(dataset, {}).setdefault(images.sha256(), (len(images), ck))
    for dataset, by_digest in seen.items():
        if len(by_digest) == 1:
            continue
        sizes = sorted({n for n, _ in by_digest.values()})
        shown = ", ".join(f"{n} images ({c})" for n, c in list(by_digest.values())[:4])
        if len(sizes) > 1:
            fix = f"each its training --limit: pass --limit {sizes[0]}"
        elif split != "test":
            fix = f"each its own data seed's {split} split: use --split test, or a matrix per data seed"
        else:
            fix = "the data files differ: evaluate each checkpoint with nvcim eval, or point them at one file"
        raise ValueError(f"the checkpoints would be scored on different {dataset} {split} images ({shown}; {fix}), "
                         "and a matrix compares its rows on the same chips and images")


def varies_at_zero(d) -> bool:
    """Whether chips of this device differ at σ_d 0: stuck-at faults, read noise or drift (ADCs are deterministic);
    a device that is no DeviceConfig (aihwkit's) is taken to vary."""
    if not isinstance(d, DeviceConfig):
        return True
    return any(d.stuck_at) or d.read_sigma > 0 or d.drift_time is not None
