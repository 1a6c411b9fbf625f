"""Checkpoints: bitwise round trip, plain state dict under variation, atomic overwrite, clear errors."""

import json
import subprocess

import pytest
import torch

import nvcim
from nvcim.io.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from nvcim.models import create_model

SPEC = {"name": "tiny", "num_classes": 10, "in_channels": 3}


def _trained_model(name="tiny", **kw):
    torch.manual_seed(0)
    model = create_model(name, 10, 3, **kw)
    model.train()
    for _ in range(2):  # non-trivial BN running stats and num_batches_tracked
        model(torch.randn(4, 3, 32, 32))
    return model


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,width", [("tiny", 1.0), ("resnet18", 0.125), ("vgg8", 0.125)])
def test_round_trip(tmp_path, name, width):
    model = _trained_model(name, width=width)
    cfg = nvcim.DeviceConfig(sigma=0.2)
    path = save_checkpoint(tmp_path / "ck", model, {"name": name, "num_classes": 10, "in_channels": 3, "width": width},
                           method="ovf", device=cfg, seed=3, metrics={"acc": 0.5, "bad": float("nan")},
                           train={"epochs": 1, "betas": (0.1, 0.01)})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, config = load_checkpoint(path)
    assert _same_state(model, loaded)
    assert loaded.state_dict()["features.1.num_batches_tracked" if name != "resnet18" else "bn1.num_batches_tracked"] == 2
    model.eval(), loaded.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert config["model"] == {"name": name, "num_classes": 10, "in_channels": 3, "width": width, "image_size": 32}
    assert nvcim.DeviceConfig.from_dict(config["device"]) == cfg
    assert config["method"] == "ovf" and config["seed"] == 3
    assert config["metrics"] == {"acc": 0.5, "bad": None}
    assert config["train"]["betas"] == [0.1, 0.01]
    assert config["nvcim_version"] == nvcim.__version__
    assert config["versions"]["torch"] == torch.__version__ and "python" in config["versions"]
    assert "created" in config and config["data"] is None
    assert read_checkpoint_config(path) == config


def test_config_is_readable_json(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC, data={"name": "cifar10"})
    text = (path / "config.json").read_text()
    config = json.loads(text)
    assert text.startswith('{\n  "nvcim_version"') and '\n    "name": "tiny"' in text
    assert set(config) >= {"nvcim_version", "model", "data", "method", "device", "train", "seed", "metrics",
                           "versions", "git_commit", "created"}
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(nvcim.__file__).parent)
    if git.returncode == 0:
        assert config["git_commit"] == git.stdout.strip()


def test_spec_from_model_attribute(tmp_path):
    model = create_model("tiny", 7, 2, width=0.5)
    path = save_checkpoint(tmp_path / "ck", model)
    loaded, config = load_checkpoint(path)
    assert config["model"] == {"name": "tiny", "num_classes": 7, "in_channels": 2, "width": 0.5, "image_size": 32}
    assert _same_state(model, loaded)


def test_noisy_model_saves_plain_state(tmp_path):
    model = _trained_model()
    plain_keys = list(model.state_dict())
    nvcim.apply_variation_(model, nvcim.DeviceConfig(sigma=0.3))
    nvcim.program_chip_(model, seed=0)
    path = save_checkpoint(tmp_path / "ck", model, SPEC)
    loaded, _ = load_checkpoint(path)
    assert list(loaded.state_dict()) == plain_keys
    assert nvcim.noisy_modules(loaded) == []
    nvcim.remove_variation_(model)
    assert _same_state(model, loaded)


def test_shared_and_noncontiguous_tensors(tmp_path):
    model = _trained_model()
    with torch.no_grad():  # non-contiguous weight storage
        w = model.classifier.weight
        model.classifier.weight = torch.nn.Parameter(w.detach().t().contiguous().t())
    assert not model.classifier.weight.is_contiguous()
    path = save_checkpoint(tmp_path / "ck", model, SPEC)
    assert _same_state(model, load_checkpoint(path)[0])


def test_overwrite_is_complete_and_clean(tmp_path):
    first, second = _trained_model(), create_model("tiny", 10, 3)
    path = save_checkpoint(tmp_path / "ck", first, SPEC, seed=1)
    save_checkpoint(tmp_path / "ck", second, SPEC, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp or old dirs left
    loaded, config = load_checkpoint(path)
    assert config["seed"] == 2 and _same_state(second, loaded)


def test_failed_save_keeps_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC, seed=1)
    with pytest.raises(CheckpointError, match="not JSON serializable"):
        save_checkpoint(path, _trained_model(), SPEC, seed=object())
    with pytest.raises(CheckpointError, match="metrics.curve of type Tensor is not JSON serializable"):
        save_checkpoint(path, _trained_model(), SPEC, seed=1, metrics={"curve": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="does not match model spec"):
        save_checkpoint(path, _trained_model(), {"name": "tiny", "num_classes": 5, "in_channels": 3})
    assert read_checkpoint_config(path)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_refuses_to_replace_foreign_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "data", _trained_model(), SPEC)
    assert (tmp_path / "data" / "keep.txt").exists()


def _one_line(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_checkpoint(tmp_path / "nope")
    _one_line(e, tmp_path / "nope")
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json") as e:
        load_checkpoint(path)
    _one_line(e, path)
    path = save_checkpoint(tmp_path / "ck2", _trained_model(), SPEC)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_corrupted_weights(tmp_path, damage):
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    file = path / "model.safetensors"
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        file.write_bytes(data[:8] + b"\x00" * 20 + data[28:])
    with pytest.raises(CheckpointError, match="model.safetensors is unreadable") as e:
        load_checkpoint(path)
    _one_line(e, path)


def test_bad_json(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as e:
        read_checkpoint_config(path)
    _one_line(e, path)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="no 'model' spec"):
        load_checkpoint(path)


def test_spec_not_matching_weights(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    config = json.loads((path / "config.json").read_text())
    for change, pattern in [({"num_classes": 5}, "shape mismatch"), ({"name": "vgg8", "width": 0.125}, "missing keys"),
                            ({"name": "nope"}, "cannot be built")]:
        broken = dict(config, model=dict(config["model"], **change))
        (path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=pattern) as e:
            load_checkpoint(path)
        _one_line(e, path)


def test_a_flipped_bit_in_the_weights_is_refused(tmp_path):
    """safetensors stores no checksum: one flipped exponent bit loaded as -1.4e37 and evaluated without a word (a
    training review, session 34); config.json records the weights' sha256, checked on load."""
    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    file = path / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs") as e:
        load_checkpoint(path)
    _one_line(e, path)
    config = json.loads((path / "config.json").read_text())  # a checkpoint saved before the digest loads as it is
    del config["weights_sha256"]
    (path / "config.json").write_text(json.dumps(config))
    load_checkpoint(path)


def test_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    state = load_file(str(path / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint(path)


def test_dtype_preserved(tmp_path):
    model = _trained_model().double()
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "ck", model, SPEC))
    assert _same_state(model, loaded)


def test_is_value_error():
    assert issubclass(CheckpointError, ValueError)


# ---- nothing but a checkpoint is replaced; normal permissions -------------------------------------------
def _listing(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_is_checkpoint_dir(tmp_path):
    from nvcim.io.checkpoint import is_checkpoint_dir

    path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
    assert is_checkpoint_dir(path)
    assert not is_checkpoint_dir(tmp_path / "nope") and not is_checkpoint_dir(path / "config.json")
    for text in ("{}", "{not json", '{"model": {"name": "tiny"}}', '{"nvcim_version": "0", "model": "tiny"}'):
        (path / "config.json").write_text(text)
        assert not is_checkpoint_dir(path), text
    (path / "config.json").write_text('{"nvcim_version": "0", "model": {"name": "tiny"}}')
    assert is_checkpoint_dir(path)
    (path / "model.safetensors").unlink()
    assert not is_checkpoint_dir(path)


@pytest.mark.parametrize("case", ["empty_config", "extra_file"])
def test_never_replaces_what_is_not_only_a_checkpoint(tmp_path, case):
    """A folder with a config.json that is not nvcim's, or a checkpoint holding the user's files too."""
    target = tmp_path / "dir"
    if case == "empty_config":
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "notes.txt").write_text("mine")
    else:
        save_checkpoint(target, _trained_model(), SPEC)
        (target / "notes.txt").write_text("mine")
    before = _listing(tmp_path)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(target, _trained_model(), SPEC)
    _one_line(e, target)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_normal_permissions_under_the_umask(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "ck", _trained_model(), SPEC)
        path = save_checkpoint(path, _trained_model(), SPEC)  # replacing keeps them normal too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name
