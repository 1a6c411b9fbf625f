"""Loading what `nvcim eval` evaluates: a checkpoint, its device, and the split of its data set (shared by the
single-checkpoint command and the device-model matrix), and the device defaults a device model takes from a
checkpoint, read from its config.json alone (`device_defaults`: a device model is validated with them before any
checkpoint is loaded). Every check runs before the data are loaded or downloaded: a wrong-typed device entry, an unknown data set (naming missing plugins), an npz file
changed since training, a data set that does not fit the model."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from nvcim.core.config import DeviceConfig
from nvcim.data import DATASETS, dataset_fingerprint, dataset_info, is_npz_name, load_dataset
from nvcim.data.npz import npz_path
from nvcim.io import checkpoint
from nvcim.layers.noise import SelectionError, keep_digital_
from nvcim.plugins import missing_hint

# device fields a device model leaves to the checkpoint unless it sets them
DEVICE_DEFAULT_KEYS = ("sigma", "weight_bits", "device_bits", "quantize")


class Loaded(NamedTuple):
    model: nn.Module
    config: dict
    device: DeviceConfig  # the checkpoint's device (training σ), quantization as asked
    dataset: str
    splits: Any
    split: Any


def checkpoint_device(ckpt: Path, config: dict, no_quantize: bool = False, own: bool = True) -> DeviceConfig:
    """The device checkpoint `ckpt` was trained with (its config.json `config`; training σ), quantization as asked.
    own: the evaluation runs under it (no --device-model replaces it), so --no-quantize cannot drop its ADCs."""
    dev_dict = config.get("device") or {}
    if not isinstance(dev_dict, dict):
        raise ValueError(f"checkpoint {ckpt}: 'device' in config.json is not a device config: fix config.json")
    base = DeviceConfig.from_dict(dev_dict) if dev_dict else DeviceConfig(sigma=0.0)
    if no_quantize and base.sliced_mvm and own:
        raise ValueError(f"--no-quantize: checkpoint {ckpt} was trained behind ADCs / DACs (adc_bits={base.adc_bits}, "
                         f"input_bits={base.input_bits}), which read quantized device levels: drop --no-quantize, or "
                         "evaluate under a --device-model without ADCs")
    if no_quantize and base.chip_effects and own:
        raise ValueError(f"--no-quantize: checkpoint {ckpt} was trained under stuck-at faults or drift, which act on "
                         "quantized device levels: drop --no-quantize, or evaluate under a --device-model without them")
    if not no_quantize:
        return base
    gone = {} if own else {"stuck_at": (0.0, 0.0), "drift_time": None, "drift_compensation": False,
                           "drift_nu": DeviceConfig().drift_nu}  # (a device model replaces them)
    return base.replace(quantize=False, adc_bits=None, input_bits=None, **gone)


def device_defaults(ckpt: Path, no_quantize: bool = False) -> dict[str, Any]:
    """The fields (DEVICE_DEFAULT_KEYS) a device model leaves to checkpoint `ckpt`, from its config.json alone (no
    weights, no data): so a device model is built, and validated, with them before anything is loaded."""
    config = checkpoint.read_checkpoint_config(ckpt)
    base = checkpoint_device(ckpt, config, no_quantize, own=False)  # a device model replaces its ADCs too
    return {k: getattr(base, k) for k in DEVICE_DEFAULT_KEYS}


def digital_override(text: str | None) -> list[str] | None:
    """--digital-layers as patterns ([] for "none"; None when not given)."""
    if text is None:
        return None
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise ValueError(f"--digital-layers {text!r} names no layer: give comma-separated layer names or none")
    return [] if patterns == ["none"] else patterns


def load_for_eval(ckpt: Path, *, dataset: str | None, data_root: str | None, split: str, limit: int | None,
                  no_quantize: bool = False, digital: list[str] | None = None, own_device: bool = True) -> Loaded:
    """The checkpoint's model (float32), config and device, and the `split` of its (or `dataset`'s) data.
    digital: the layers kept digital instead of the checkpoint's (`digital_override`; None: the checkpoint's);
    own_device: evaluated under the checkpoint's device (False: device models replace it; `checkpoint_device`)."""
    dataset_flag, split_name = dataset, split
    model, config = checkpoint.load_checkpoint(ckpt)  # looked up at call time (tests replace it)
    if digital is not None:
        try:
            keep_digital_(model, digital)
        except SelectionError as exc:
            raise ValueError(f"--digital-layers: {exc}") from None
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        print(f"nvcim eval: note: checkpoint {ckpt} stores {'/'.join(dtypes)} weights: evaluating them in float32",
              file=sys.stderr)
        model = model.float()
    base = checkpoint_device(ckpt, config, no_quantize, own_device)
    metrics = config.get("metrics") if isinstance(config.get("metrics"), dict) else {}
    if metrics.get("status") == "diverged":  # nvcim train kept the last finite weights: say which
        kept = (f"the best validated epoch's ({metrics['best_epoch']})" if metrics.get("best_epoch") is not None
                else "the initial weights (no epoch was validated)")
        print(f"nvcim eval: warning: checkpoint {ckpt} diverged in training ({metrics.get('diverged_reason') or '?'}): "
              f"its weights are {kept}", file=sys.stderr)

    data_cfg = config.get("data") or {}
    if not isinstance(data_cfg, dict):
        data_cfg = {}
    dataset = dataset_flag or data_cfg.get("name")
    if not dataset:
        raise ValueError(f"checkpoint {ckpt} names no dataset: pass --dataset NAME")
    if dataset not in DATASETS and not is_npz_name(dataset):
        raise ValueError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)} or npz:PATH.npz"
                         f"{missing_hint(config.get('plugins'))}")
    same = _same_data(dataset, data_cfg)  # the checkpoint's own data: its split settings apply
    recorded = data_cfg.get("file") if same else None
    if (dataset_flag is None and is_npz_name(dataset) and isinstance(recorded, dict) and recorded.get("path")
            and not npz_path(dataset).exists() and Path(recorded["path"]).is_file()):
        source = f"npz:{recorded['path']}"  # a relative npz: name seen from another directory: the file trained on
    else:
        source = dataset  # what is read; `dataset` stays the name results record
    info = dataset_info(source)
    if isinstance(recorded, dict) and recorded.get("sha256"):
        now = dataset_fingerprint(source)
        if now is not None and now["sha256"] != recorded["sha256"]:
            read = npz_path(source).resolve() if is_npz_name(source) else None
            trained = Path(recorded["path"]) if recorded.get("path") else None
            if read is not None and trained is not None and read != trained.resolve():
                # a relative name seen from another directory, which holds another file of that name
                raise ValueError(f"dataset {dataset} is {read} here, not the file checkpoint {ckpt} was trained on "
                                 f"({trained}; sha256 {now['sha256'][:12]}… against {recorded['sha256'][:12]}…): run "
                                 f"from that file's directory or pass --dataset npz:{trained}")
            raise ValueError(f"dataset {dataset}: the file changed since checkpoint {ckpt} was trained on it (sha256 "
                             f"{now['sha256'][:12]}… now, {recorded['sha256'][:12]}… then): evaluate on the same file")
    spec = config.get("model", {})
    # before the data are loaded: a mismatch must not download anything
    if spec.get("in_channels", info.in_channels) != info.in_channels or spec.get("num_classes", info.num_classes) < info.num_classes:
        raise ValueError(
            f"dataset {dataset} ({info.in_channels} channels, {info.num_classes} classes) does not fit the checkpoint's "
            f"model ({spec.get('in_channels')} channels, {spec.get('num_classes')} classes): pass a matching --dataset"
        )
    if spec.get("image_size", info.image_size) != info.image_size:  # a fixed flatten would crash, pooling mislead
        raise ValueError(f"dataset {dataset} has {info.image_size}x{info.image_size} images but the checkpoint's model "
                         f"was built for {spec.get('image_size')}x{spec.get('image_size')}: pass a --dataset of that size")
    root = data_root or (data_cfg.get("root") if same else None)
    if limit is None and same:
        limit = data_cfg.get("limit")
    splits = load_dataset(
        source,
        root,
        val_fraction=float(data_cfg.get("val_fraction", 0.1) if same else 0.1),
        seed=int(data_cfg.get("seed", 0) if same else 0),
        limit=limit,
    )
    held_out = data_cfg.get("val_sha256")
    moved = (same and isinstance(held_out, str) and limit == data_cfg.get("limit")
             and splits.val.sha256() != held_out)  # (another torch's permutation, other data under the same name)
    if moved and split_name == "val":
        raise ValueError(f"the val split of {dataset} drawn now is not the one checkpoint {ckpt} held out in training "
                         "(another torch or data under that name): its images may have been trained on; evaluate "
                         "with --split test")
    if moved:  # a plugin's data set reads the user's files, which no sha256 of nvcim's protects
        warnings.warn(f"the val split of {dataset} drawn now is not the one checkpoint {ckpt} held out in training: "
                      "the data under that name changed since (or another torch draws other splits); the test split "
                      "evaluated may not be the data it was trained beside", stacklevel=2)
    splits = _trained_normalization(splits, data_cfg.get("normalization"), dataset, ckpt)
    split = getattr(splits, split_name)
    if len(split) == 0:
        raise ValueError(f"the {split_name} split of {dataset} is empty: use --split test or another dataset")
    return Loaded(model, config, base, dataset, splits, split)


def _same_data(dataset: str, data_cfg: dict) -> bool:
    """Whether `dataset` is the data the checkpoint was trained on: its recorded name, or for an npz: file the same
    file by another spelling (npz:./d.npz for npz:d.npz) or a copy of it (the recorded sha256); its val split is then
    the one held out in training, never a default split that holds training images."""
    if dataset == data_cfg.get("name"):
        return True
    recorded = data_cfg.get("file")
    if not (is_npz_name(dataset) and is_npz_name(data_cfg.get("name")) and isinstance(recorded, dict)):
        return False
    path = npz_path(dataset)
    if isinstance(recorded.get("path"), str) and Path(recorded["path"]).expanduser().resolve() == path:
        return True
    return path.is_file() and recorded.get("sha256") == dataset_fingerprint(dataset)["sha256"]


def _trained_normalization(splits, recorded, dataset: str, ckpt: Path):
    """The splits normalized with the per-channel mean / std the checkpoint was trained with (its config.json
    data.normalization), when the data set's own differ (an npz file's come from its x_train): the model expects its
    inputs scaled as in training. Said on stderr; the splits themselves when nothing is recorded or they agree."""
    if not isinstance(recorded, dict):
        return splits
    try:
        mean, std = tuple(float(v) for v in recorded["mean"]), tuple(float(v) for v in recorded["std"])
    except (KeyError, TypeError, ValueError):
        return splits
    info = splits.info
    if len(mean) != len(info.mean) or len(std) != len(info.std) or not all(v > 0 for v in std):
        return splits
    if all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(mean + std, info.mean + info.std)):
        return splits
    print(f"nvcim eval: note: normalizing {dataset}'s images with checkpoint {ckpt}'s training statistics (mean "
          f"{', '.join(f'{v:.4g}' for v in mean)}, std {', '.join(f'{v:.4g}' for v in std)}), not this data's own "
          f"(mean {', '.join(f'{v:.4g}' for v in info.mean)}, std {', '.join(f'{v:.4g}' for v in info.std)})",
          file=sys.stderr)
    trained = dataclasses.replace(info, mean=mean, std=std)
    return dataclasses.replace(splits, info=trained, **{name: dataclasses.replace(getattr(splits, name), info=trained)
                                                         for name in ("train", "val", "test")})


def resume_pieces(args, ckpts: list[Path], **settings):
    """Where an interrupted `nvcim eval` keeps its finished evaluations (nvcim.evaluate.partial, beside --out, else
    --csv) and what every piece's key holds besides the evaluation's own coordinates: the checkpoints' fingerprints
    (one per checkpoint) and the run's settings (`settings` plus the data flags and the code's fingerprint; a
    callable `data` setting, the splits' content digest, is called only here); the caller adds the data file's
    fingerprint (`Splits.fingerprint`). (None, None, None) without
    an output file: nothing to resume into."""
    out = args.out or args.csv
    if not out:
        return None, None, None
    from nvcim.data.npz import file_sha256
    from nvcim.evaluate.partial import PartialResults, code_fingerprint

    partial = PartialResults.beside(out)
    prints = [[file_sha256(Path(ck) / name) for name in (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE)]
              for ck in ckpts]
    if callable(settings.get("data")):  # the splits' content digest: computed only when there is a piece to key
        settings["data"] = settings["data"]()
    common = {**settings, "split": args.split, "dataset_flag": args.dataset, "data_root": args.data_root,
              "no_quantize": bool(args.no_quantize), "adc_calibration": args.adc_calibration,
              "code": code_fingerprint()}
    return partial, common, prints


def finish_pieces(partial, total: int, what: str) -> None:
    """Once every output is written: say how many evaluations were taken from an interrupted run, and remove the
    pieces (nothing is left to resume)."""
    if partial is None:
        return
    if partial.taken:
        print(f"{partial.taken} of {total} {what} were kept from an interrupted run ({partial.dir})")
    partial.remove()
