"""Conductance maps (nvcim export / import): bit-exact round trip for every registered model, the format, errors."""

import json
import math
import re

import pytest
import torch
from torch import nn
from helpers import run_cli

import nvcim
from nvcim.core.device import slice_levels, quantize_levels
from nvcim.io.checkpoint import load_checkpoint, save_checkpoint
from nvcim.io.conductance import (MANIFEST_FILE, TENSORS_FILE, ConductanceMapError, export_conductance_map,
                                  import_conductance_map, read_conductance_map)
from nvcim.layers.noise import selected_parameters
from nvcim.models import create_model, list_models


def _checkpoint(tmp_path, name="tiny", cfg=None, dtype=torch.float32):
    torch.manual_seed(0)
    model = create_model(name, 10, 1, width=0.125)
    model.train()
    model(torch.randn(4, 1, 32, 32))  # BatchNorm statistics that are not the defaults
    model = model.to(dtype)
    cfg = cfg or nvcim.DeviceConfig(sigma=0.2)
    return save_checkpoint(tmp_path / f"ck-{name}", model, model.nvcim_spec, device=cfg, method="ovf", seed=4), model, cfg


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("tiles", [None, (7, 5)], ids=["untiled", "tiled"])
@pytest.mark.parametrize("name", list_models())
def test_round_trip_equals_quantize(tmp_path, name, tiles):
    ckpt, model, cfg = _checkpoint(tmp_path, name)
    rows, cols = tiles or (None, None)
    export_conductance_map(ckpt, tmp_path / "map", tile_rows=rows, tile_cols=cols)
    import_conductance_map(tmp_path / "map", tmp_path / "back")
    back, config = load_checkpoint(tmp_path / "back")
    noisy = {n: getattr(m, a) for n, m, a in selected_parameters(model)}
    state, rebuilt = model.state_dict(), back.state_dict()
    assert rebuilt.keys() == state.keys()
    for key, value in state.items():
        expected = nvcim.quantize(value, cfg) if key in noisy else value
        assert rebuilt[key].dtype == expected.dtype and torch.equal(_bits(rebuilt[key]) if key in noisy else rebuilt[key],
                                                                     _bits(expected) if key in noisy else expected), key
    assert config["method"] == "ovf" and config["seed"] == 4 and nvcim.DeviceConfig.from_dict(config["device"]) == cfg
    assert config["imported_from"] == {"conductance_map": str(tmp_path / "map"), "source_checkpoint": str(ckpt)}


@pytest.mark.parametrize("dtype,bits", [(torch.float32, (6, 3)), (torch.bfloat16, (8, 2)), (torch.float16, (4, 1))])
def test_round_trip_other_bits_and_dtypes(tmp_path, dtype, bits):
    cfg = nvcim.DeviceConfig(weight_bits=bits[0], device_bits=bits[1], sigma=0.1)
    ckpt, model, _ = _checkpoint(tmp_path, "tiny", cfg, dtype)
    export_conductance_map(ckpt, tmp_path / "map", tile_rows=3)
    back, _ = read_conductance_map(tmp_path / "map")
    for name, module, attr in selected_parameters(model):
        got = back.get_parameter(name)
        assert got.dtype == dtype and torch.equal(_bits(got), _bits(nvcim.quantize(getattr(module, attr), cfg)))


def test_format_levels_sign_scale_and_manifest(tmp_path):
    ckpt, model, cfg = _checkpoint(tmp_path)
    out = export_conductance_map(ckpt, tmp_path / "map", tile_rows=4, tile_cols=3)
    assert sorted(p.name for p in out.iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    from safetensors.torch import load_file

    tensors = load_file(str(out / TENSORS_FILE))
    data = json.loads((out / MANIFEST_FILE).read_text())
    params = selected_parameters(model)
    assert [layer["name"] for layer in data["layers"]] == [n for n, _, _ in params]  # layer order
    assert data["weight_bits"] == 8 and data["device_bits"] == 2 and data["devices_per_weight"] == 4
    assert data["level_conductance"] == [0, 1 / 3, 2 / 3, 1] and data["tiling"] == {"tile_rows": 4, "tile_cols": 3}
    assert data["source"]["checkpoint"] == str(ckpt) and data["source"]["config"]["method"] == "ovf"
    name, module, attr = params[0]  # a conv: [out, in, kh, kw]
    w = getattr(module, attr).detach()
    layer = data["layers"][0]
    rows, cols = w[0].numel(), w.shape[0]
    assert layer["shape"] == list(w.shape) and (layer["crossbar_rows"], layer["crossbar_cols"]) == (rows, cols)
    assert layer["tiles"] == [-(-rows // 4), -(-cols // 3)] and layer["tile_shape"] == [4, 3]
    levels, sign, scale = tensors[f"levels/{name}"], tensors[f"sign/{name}"], tensors[f"scale/{name}"]
    assert levels.dtype == sign.dtype == torch.uint8 and levels.shape == (4, *layer["tiles"], 4, 3)
    assert torch.equal(scale, w.abs().amax()) and layer["scale"] == float(scale)
    expected = slice_levels(quantize_levels(w, cfg), cfg)  # [4, out, in, kh, kw]
    # device j of weight [o, i, y, x] sits at crossbar row (i, y, x), column o
    o, r = 1, 5
    tile_r, tile_c = divmod(r, 4), divmod(o, 3)
    assert levels[:, tile_r[0], tile_c[0], tile_r[1], tile_c[1]].tolist() == expected.reshape(4, cols, rows)[:, o, r].tolist()
    assert int(sign[tile_r[0], tile_c[0], tile_r[1], tile_c[1]]) == int(w.reshape(cols, rows)[o, r] < 0)
    assert f"digital/{params[0][0].rsplit('.', 1)[0]}.bias" in tensors or data["digital"]  # biases / BN kept exact


def _corrupt(map_dir, key, fn):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(map_dir / TENSORS_FILE))
    tensors[key] = fn(tensors[key])
    save_file(tensors, str(map_dir / TENSORS_FILE))


def test_cli_export_import_and_errors(tmp_path, capsys):
    ckpt, _, _ = _checkpoint(tmp_path)
    rc, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "map"), "--tile-rows", "8"], capsys)
    assert rc == 0 and "noisy weight tensors" in out and err == ""
    rc, out, _ = run_cli(["export", str(ckpt), "--out", str(tmp_path / "map")], capsys)  # replaces its own map
    assert rc == 0 and json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())["tiling"]["tile_rows"] is None
    rc, out, err = run_cli(["import", str(tmp_path / "map"), "--out", str(tmp_path / "back")], capsys)
    assert rc == 0 and (tmp_path / "back" / "config.json").is_file()
    # a checkpoint in --out (here the trained one) is replaced only with --overwrite, as `nvcim train` does
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    rc, out, err = run_cli(["import", str(tmp_path / "map"), "--out", str(ckpt)], capsys)
    assert rc == 2 and "already holds a checkpoint: pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    rc, out, err = run_cli(["import", str(tmp_path / "map"), "--out", str(tmp_path / "back"), "--overwrite"], capsys)
    assert rc == 0

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    for argv in (["export", str(ckpt), "--out", str(other)],                    # not nvcim's: never replaced
                 ["export", str(ckpt), "--out", str(ckpt / "map")],            # inside the checkpoint
                 ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")],
                 ["export", str(ckpt), "--out", str(tmp_path / "m3"), "--tile-rows", "0"],
                 ["export", str(ckpt), "--out", str(tmp_path / "m3"), "--tile-rows", "100000000"],  # all padding
                 ["export", str(ckpt), "--out", str(tmp_path / "m3"), "--tile-cols", "100000000"],
                 ["import", str(other), "--out", str(tmp_path / "b2")],        # no manifest
                 ["import", str(tmp_path / "map"), "--out", str(other)],
                 ["import", str(tmp_path / "map"), "--out", str(tmp_path / "map" / "ck")]):
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "error" in err, (argv, err)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert not any((tmp_path / n).exists() for n in ("m2", "m3", "b2")) and not (ckpt / "map").exists()
    assert not (tmp_path / "map" / "ck").exists()
    # an aihwkit model file over an existing file: only with --overwrite (nvcim cannot tell its own from the user's)
    (tmp_path / "model.py").write_text("mine")
    rc, out, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm", "--out", str(tmp_path / "model.py")], capsys)
    assert rc == 2 and "exists: pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "model.py").read_text() == "mine"
    rc, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "map"), "--overwrite"], capsys)
    assert rc == 2 and "--overwrite is for --aihwkit" in err


@pytest.mark.parametrize("problem", ["level", "sign", "padding", "shape", "missing"])
def test_import_refuses_a_damaged_map(tmp_path, problem):
    ckpt, model, _ = _checkpoint(tmp_path)
    export_conductance_map(ckpt, tmp_path / "map", tile_rows=7)
    name = selected_parameters(model)[0][0]
    if problem == "missing":
        data = json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())
        data["digital"].append("features.99.bias")
        (tmp_path / "map" / MANIFEST_FILE).write_text(json.dumps(data))
    else:
        key = f"{'sign' if problem == 'sign' else 'levels'}/{name}"
        fixes = {"level": lambda t: t.index_fill(0, torch.tensor([0]), 7),
                 "sign": lambda t: t + 2,
                 "padding": lambda t: t.index_fill(-2, torch.tensor([t.shape[-2] - 1]), 1),
                 "shape": lambda t: t[:2]}
        _corrupt(tmp_path / "map", key, fixes[problem])
    with pytest.raises(ConductanceMapError, match="map"):
        import_conductance_map(tmp_path / "map", tmp_path / "back")
    assert not (tmp_path / "back").exists()


class _Shared(nn.Module):
    """One Linear registered under two names (a layer called twice), and one Parameter shared by two layers."""

    def __init__(self, num_classes=10, in_channels=1, image_size=8, width=1.0):
        super().__init__()
        self.inp = nn.Linear(in_channels * image_size * image_size, 16)
        self.block = nn.Linear(16, 16)
        self.block_again = self.block
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        h = torch.relu(self.block_again(torch.relu(self.block(h))))
        return self.head(torch.relu(self.b(torch.relu(self.a(h)))))


@pytest.mark.filterwarnings("ignore:apply_variation_.*held under several names")
def test_a_layer_registered_twice_comes_back_quantised(tmp_path):
    # `self.block_again = self.block`: block_again.weight was exported as an exact digital float next to the levels
    # of block.weight, and loaded after them, so the imported checkpoint held the unquantised weight
    from nvcim.models import MODELS, register_model

    register_model("_test_shared")(lambda num_classes, in_channels, image_size, width=1.0:
                                   _Shared(num_classes, in_channels, image_size))
    try:
        torch.manual_seed(0)
        model = create_model("_test_shared", 10, 1, image_size=8)
        cfg = nvcim.DeviceConfig(sigma=0.2)
        ckpt = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=cfg)
        export_conductance_map(ckpt, tmp_path / "map")
        data = json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())
        assert "block_again.weight" not in data["digital"] and data["aliases"]["block_again.weight"] == "block.weight"
        import_conductance_map(tmp_path / "map", tmp_path / "back")
        back, _ = load_checkpoint(tmp_path / "back")
        noisy = {n: getattr(m, a) for n, m, a in selected_parameters(model)}
        for key, value in back.state_dict().items():
            source = noisy.get(key.replace("block_again", "block"))
            expected = model.state_dict()[key] if source is None else nvcim.quantize(source, cfg)
            assert torch.equal(_bits(value), _bits(expected)), key
        assert back.block_again is back.block and back.b.weight is back.a.weight
        source = create_model("_test_shared", 10, 1, image_size=8)  # the checkpoint's weights, quantised
        source.load_state_dict({k: nvcim.quantize(noisy[k], cfg) if k in noisy else v
                                for k, v in model.state_dict().items() if not k.startswith("block_again")}, strict=False)
        nvcim.apply_variation_(source, cfg)
        chips = [nvcim.draw_chip(m, seed=3) for m in (source, nvcim.apply_variation_(back, cfg))]
        assert chips[0].keys() == chips[1].keys() and all(torch.equal(chips[0][k], chips[1][k]) for k in chips[0])
    finally:
        MODELS.unregister("_test_shared")


@pytest.mark.parametrize("shape", [[], [8, 1, 3, "3"], [None], [8, 1, 3, 3.0], [8, 1, -3, -3], [True], "8x9"])
def test_import_refuses_a_manifest_shape_that_is_no_list_of_sizes(tmp_path, capsys, shape):
    ckpt, _, _ = _checkpoint(tmp_path)
    export_conductance_map(ckpt, tmp_path / "map")
    data = json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())
    data["layers"][0]["shape"] = shape
    (tmp_path / "map" / MANIFEST_FILE).write_text(json.dumps(data))
    rc, out, err = run_cli(["import", str(tmp_path / "map"), "--out", str(tmp_path / "back")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "shape" in err and "fix the manifest" in err, err
    assert not (tmp_path / "back").exists()


def test_import_names_the_tensor_that_does_not_fit(tmp_path):
    ckpt, model, _ = _checkpoint(tmp_path)
    export_conductance_map(ckpt, tmp_path / "map")
    data = json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())
    layer = data["layers"][0]
    old = layer["shape"]
    layer["shape"] = [old[0], math.prod(old[1:])]  # fits the levels, not the model
    (tmp_path / "map" / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ConductanceMapError, match=re.escape(f"'{layer['name']}' is {layer['shape']} in the map, {old} in the model")):
        import_conductance_map(tmp_path / "map", tmp_path / "back")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_export_refuses_weights_that_are_not_finite(tmp_path, capsys, value):
    torch.manual_seed(0)
    model = create_model("tiny", 10, 1, width=0.125)
    name = selected_parameters(model)[1][0]
    with torch.no_grad():
        model.get_parameter(name).view(-1)[3] = value
    ckpt = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=nvcim.DeviceConfig(sigma=0.1))
    rc, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "map")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and name in err and "NaN or infinite" in err, err
    assert not (tmp_path / "map").exists()


def test_export_refuses_an_out_that_cannot_be_created_before_loading(tmp_path, capsys, monkeypatch):
    ckpt, _, _ = _checkpoint(tmp_path)
    (tmp_path / "afile").write_text("mine")
    import nvcim.io.checkpoint as checkpoint_module

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before --out was checked")

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", no_load)
    rc, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "afile" / "map")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "afile" / "map") in err and "is a file, not a directory: choose another path" in err, err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_map_written_from_a_model_of_ones_own_reads_back_into_that_architecture(tmp_path):
    """The README's `write_conductance_map` -> `read_conductance_map` round trip failed for a model nvcim cannot rebuild
    (no registered spec): "the manifest names no source model spec: export it again". `model=` takes the module."""
    from nvcim.io.conductance import read_conductance_map, write_conductance_map

    torch.manual_seed(0)
    mine = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    cfg = nvcim.DeviceConfig()
    write_conductance_map(tmp_path / "map", mine, cfg)
    with pytest.raises(ConductanceMapError, match="pass model= a module of that architecture"):
        read_conductance_map(tmp_path / "map")
    fresh = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    back, _ = read_conductance_map(tmp_path / "map", model=fresh)
    assert back is fresh
    for key, value in mine.state_dict().items():
        want = nvcim.quantize(value, cfg) if key.endswith("weight") else value
        assert torch.equal(back.state_dict()[key], want), key
