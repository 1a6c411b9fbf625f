"""`nvcim export` / `nvcim import`: conductance maps for programming a real chip (nvcim.io.conductance).

    nvcim export runs/ovf-0.3 --out chip/                          # per noisy layer: device levels, sign, scale
    nvcim export runs/ovf-0.3 --out chip/ --tile-rows 128 --tile-cols 128   # cut into 128 x 128 crossbars
    nvcim import chip/ --out runs/ovf-0.3-chip                      # the quantised weights as a checkpoint
    nvcim export runs/ovf-0.3 --aihwkit aihwkit:pcm --out analog.pt  # an aihwkit analog model (the aihwkit extra)
    nvcim import analog.pt --out runs/from-aihwkit                   # aihwkit(-trained) weights as a checkpoint

DIR holds manifest.json (layer order, names, shapes, M, K, level -> conductance, tiling) and
conductances.safetensors (uint8 device levels, uint8 sign crossbar, scale; the digital tensors exact); the
README documents the format. `nvcim import` rebuilds exactly the weights `nvcim.quantize` gives. Only a
directory nvcim wrote is ever replaced. An aihwkit model file is torch.save(analog_model): importing one
unpickles it, which runs code from the file, so import only files you trust; errors end in one line on stderr and exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {value} is invalid: use an integer >= 1 (e.g. 128)")
        return value
    return parse


def add_parser(sub) -> None:
    """Registers both subcommands (one format, one owner)."""
    p = sub.add_parser("export", help="write a checkpoint's device levels (conductance map) for programming a chip",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory written by `nvcim train`")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output directory (created; only an earlier conductance map is replaced); with --aihwkit "
                        "the model file to write")
    p.add_argument("--aihwkit", metavar="DEVICE", default=None,
                   help="write an aihwkit analog model (convert_to_analog with this device's RPU config, e.g. "
                        "aihwkit:pcm or 'aihwkit:reram?noise_scale=0.5') instead of a conductance map")
    p.add_argument("--tile-rows", metavar="R", type=_positive("--tile-rows"), default=None,
                   help="crossbar rows per tile, the weight's fan-in axis (default: one tile of all rows)")
    p.add_argument("--tile-cols", metavar="C", type=_positive("--tile-cols"), default=None,
                   help="crossbar columns per tile, the output axis (default: one tile of all columns)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --aihwkit: replace an existing model file at --out (a file torch.save wrote, outside any "
                        "nvcim checkpoint; default: refuse; nvcim cannot tell "
                        "a file it wrote from yours)")
    p.set_defaults(run=run_export)

    p = sub.add_parser("import", help="rebuild a checkpoint of quantised weights from a conductance map",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("map_dir", metavar="DIR_OR_FILE",
                   help="conductance map directory written by `nvcim export`, or an aihwkit model file "
                        "(torch.save of an analog model converted from an nvcim model; trusted files only)")
    p.add_argument("--out", metavar="CKPT", required=True,
                   help="checkpoint directory to write (an nvcim checkpoint there is replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out (default: refuse)")
    p.set_defaults(run=run_import)


def run_export(args) -> int:
    from nvcim.io.conductance import export_conductance_map, read_manifest

    if args.aihwkit is None and args.overwrite:
        raise ValueError("--overwrite is for --aihwkit model files (an earlier conductance map is replaced without "
                         "it, anything else never): drop it")
    if args.aihwkit is not None:
        from nvcim.interop.aihwkit import aihwkit_device, export_analog

        if args.tile_rows or args.tile_cols:
            raise ValueError("--tile-rows / --tile-cols shape conductance maps, not aihwkit models: drop them")
        from nvcim.io.files import check_output_path

        out = Path(args.out)
        if (out.exists() or out.is_symlink()) and not (args.overwrite and out.is_file()):
            raise ValueError(f"--out {out} exists" + (" and is not a file" if args.overwrite else
                             ": pass --overwrite to replace it (nvcim cannot tell a model file it wrote from yours)")
                             + ", or choose another path")
        from nvcim.io.checkpoint import is_checkpoint_dir
        from nvcim.io.train_state import is_train_state_dir

        owner = next((d for d in out.resolve().parents if is_checkpoint_dir(d) or is_train_state_dir(d)), None)
        if owner is not None:  # a checkpoint's or an interrupted training's folder (a sweep cell's included)
            raise ValueError(f"--out {out} is inside nvcim's {owner} (a checkpoint or training state): choose a "
                             "path outside it")
        if args.overwrite and out.is_file():  # replaced only when it is a model file: never a file of another kind
            if not _torch_saved(out):
                raise ValueError(f"--out {out} is not a file torch.save wrote: --overwrite replaces only a model file "
                                 "(an earlier export); choose another path")
        device = aihwkit_device(args.aihwkit)
        check_output_path(args.out, "--out")
        if Path(args.checkpoint).resolve() in Path(args.out).resolve().parents:
            raise ValueError(f"--out {args.out} is inside the checkpoint {args.checkpoint}: choose a path outside it")
        print(f"wrote {export_analog(args.checkpoint, args.out, device)}: aihwkit analog model under {device.name}")
        return 0
    out = export_conductance_map(args.checkpoint, args.out, tile_rows=args.tile_rows, tile_cols=args.tile_cols)
    data = read_manifest(out)
    devices = sum(layer["devices"] for layer in data["layers"])
    print(f"wrote {out}: {len(data['layers'])} noisy weight tensors, {devices} devices of {data['device_bits']} bits "
          f"(M={data['weight_bits']}), {len(data['digital'])} digital tensors")
    return 0


def run_import(args) -> int:
    from nvcim.io.checkpoint import is_checkpoint_dir
    from nvcim.io.conductance import import_conductance_map

    if not args.overwrite and is_checkpoint_dir(Path(args.out)):  # as `nvcim train` refuses it
        raise ValueError(f"--out {args.out} already holds a checkpoint: pass --overwrite or choose another path")
    if Path(args.map_dir).is_file():
        from nvcim.interop.aihwkit import import_analog

        if not _torch_saved(Path(args.map_dir)):  # (aihwkit missing would be said first, about any file)
            raise ValueError(f"{args.map_dir} is neither a conductance map directory (nvcim export) nor a model file "
                             "written by torch.save (an aihwkit analog model): give one of them")

        print(f"wrote {import_analog(args.map_dir, args.out)}")
        return 0
    print(f"wrote {import_conductance_map(args.map_dir, args.out)}")
    return 0


def _torch_saved(path: Path) -> bool:
    """Whether `path` is a file torch.save wrote, without unpickling it: a zip archive holding a data.pkl, or the
    legacy format (_use_new_zipfile_serialization=False), a pickle whose first object is torch's magic number."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        pass
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04") and head[2:3] == b"\x8a"  # PROTO, then LONG1
