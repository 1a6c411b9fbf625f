"""Sweeps (nvcim.sweep, nvcim sweep): spec validation, cell expansion, kill + resume giving
bitwise-identical results, failed cells, β search on the validation split only, process pool."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvcim import sweep
from nvcim.sweep import expand, load_spec, run_sweep, validate_spec

ROOT = Path(__file__).resolve().parents[1]

# tiny model, 96 examples, 1 epoch, 3 Monte Carlo runs: ~0.2-0.5 s a cell
TRAIN = {"epochs": 1, "limit": 96, "batch_size": 32, "val_runs": 0, "select": "clean", "device": "cpu"}
BASE = {
    "name": "test",
    "models": ["tiny"],
    "datasets": ["mnist5k"],
    "methods": ["vanilla", "noise_injection", "ovf"],
    "sigmas": [0.2, 0.3],
    "seeds": [0, 1],
    "betas": [0.1, 0.001],
    "train": TRAIN,
    "eval": {"runs": 3, "val_runs": 2},
    "resources": {"threads_per_cell": 1},
}


def spec_of(**changes) -> dict:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def write_json_spec(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def results_of(out: Path) -> dict[str, dict]:
    """cell id -> (per-run accuracies per test σ, chosen β, method params) of every result.json."""
    found = {}
    for f in sorted((out / "cells").rglob(sweep.RESULT_FILE)):
        d = json.loads(f.read_text())
        bs = d["cell"]["beta_search"]
        found[d["cell"]["id"]] = {
            "acc": [(r["sigma"], r["per_run_accuracy"], r["ekl"]) for r in d["results"]],
            "beta": bs["chosen_beta"] if bs else None,
            "scores": [c["val_mean"] for c in bs["candidates"]] if bs else None,
            "params": d["cell"]["params"],
        }
    return found


def cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvcim", "sweep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The BASE sweep run uninterrupted, in process: 2 vanilla + 4 NI + 4 OVF (β search) cells."""
    out = tmp_path_factory.mktemp("ref")
    summary = run_sweep(validate_spec(BASE), out, progress=False)
    assert summary.exit_code == 0 and len(summary.ok) == 10
    return out, results_of(out)


# ---- expansion ---------------------------------------------------------------------------------------
def test_expansion_counts_vanilla_once_and_variant_ids():
    raw = spec_of(sigmas=[0.1, 0.2, 0.3], seeds=[0, 1, 2], betas=[0.1, 0.01, 0.001, 0.0001], variants=[
        {"label": "ovf-beta0", "method": "ovf", "params": {"beta": 0.0}},
        {"label": "ni-scale-1/4", "method": "noise_injection", "params": {"logit_scale": 0.25}},
    ])
    cells = expand(validate_spec(raw))
    by = {}
    for c in cells:
        by.setdefault(c.label, []).append(c)
    assert len(cells) == 3 + 9 + 9 + 9 + 9
    assert len(by["vanilla"]) == 3  # once per seed, not once per σ
    for c in by["vanilla"]:
        assert c.sigma is None and c.test_sigmas == [0.1, 0.2, 0.3] and c.train["sigma"] == 0.0
        assert c.id == f"tiny-w1/mnist5k/vanilla/seed{c.seed}"
    ovf = [c for c in by["ovf"] if c.sigma == 0.3 and c.seed == 2][0]
    assert ovf.id == "tiny-w1/mnist5k/ovf/s0.30/seed2"
    assert ovf.betas == [0.1, 0.01, 0.001, 0.0001] and ovf.test_sigmas == [0.3] and "beta" not in ovf.params
    b0 = [c for c in by["ovf-beta0"] if c.sigma == 0.1 and c.seed == 0][0]
    assert b0.id == "tiny-w1/mnist5k/ovf-beta0/s0.10/seed0" and b0.betas is None
    assert b0.train["method_params"]["beta"] == 0.0
    ni = by["ni-scale-1/4"][0]
    assert ni.id.split("/")[2] == "ni-scale-1_4" and ni.method == "noise_injection"
    assert ni.train["method_params"] == {"logit_scale": 0.25}
    assert len({c.id for c in cells}) == len(cells)
    # one β: no search, the value is fixed; test at every σ of the grid
    cells = expand(validate_spec(spec_of(betas=[0.01], eval={"test_sigmas": "grid"})))
    ovf = [c for c in cells if c.method == "ovf"]
    assert all(c.betas is None and c.params == {"beta": 0.01} and c.test_sigmas == [0.2, 0.3] for c in ovf)


def test_the_chip_cap_is_the_clis():
    """[eval] runs above the cap are refused as `nvcim eval --runs` refuses them (its copy keeps --help torch-free)."""
    from nvcim.cli.eval import MAX_RUNS
    from nvcim.evaluate.adaptive import MAX_RUNS as API_MAX_RUNS

    assert MAX_RUNS == API_MAX_RUNS == 100_000
    validate_spec(spec_of(eval={"runs": MAX_RUNS}))


def test_toml_and_yaml_specs(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "cpu"\nmodels = ["tiny"]\nwidth = 0.5\ndatasets = ["mnist5k"]\n'
        'methods = ["vanilla", "noise_injection", "ovf"]\nsigmas = [0.1, 0.2, 0.3]\nseeds = [0, 1, 2]\n'
        'betas = [1e-1, 1e-2, 1e-3, 1e-4]\n[train]\nepochs = 3\n[eval]\nruns = 200\nseed = 0\ntest_sigmas = "train"\n'
        '[[variants]]\nlabel = "ovf-beta0"\nmethod = "ovf"\nparams = { beta = 0.0 }\n'
        '[[variants]]\nlabel = "ni-scale-1/4"\nmethod = "noise_injection"\nparams = { logit_scale = 0.25 }\n'
    )
    spec = load_spec(toml)
    assert spec.width == 0.5 and spec.train == {"epochs": 3} and len(spec.variants) == 2
    assert len(expand(spec)) == 3 + 4 * 9
    yaml = tmp_path / "s.yaml"
    yaml.write_text("models: [tiny]\ndatasets: [mnist5k]\nmethods: [ovf]\nsigmas: [0.3]\nseeds: [0]\n")
    spec = load_spec(yaml)
    assert spec.name == "s" and [c.id for c in expand(spec)] == ["tiny-w1/mnist5k/ovf/s0.30/seed0"]


@pytest.mark.parametrize("changes, key", [
    ({"sigma": [0.1]}, "sigma"),  # unknown top-level key
    ({"models": ["vgg9"]}, "a model of your own: pass --plugin FILE.py"),
    ({"models": []}, "models"),
    ({"datasets": ["imagenet"]}, "or npz:PATH.npz for a data set file"),
    ({"methods": ["gni"]}, "methods"),
    ({"sigmas": [0.1, -0.2]}, "sigmas"),
    ({"sigmas": "0.1"}, "sigmas"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0.5]}, "seeds"),
    ({"betas": []}, "betas"),
    ({"width": 0}, "width"),
    ({"train": {**TRAIN, "seed": 3}}, "train.seed"),
    ({"train": {**TRAIN, "epoch": 3}}, "train.epoch"),
    ({"train": {**TRAIN, "optimizer": "rmsprop"}}, "optimizer"),
    ({"eval": {"runs": 0}}, "eval.runs"),
    ({"eval": {"runs": 1}}, "eval.runs"),  # as nvcim eval: one chip has no spread
    ({"eval": {"run": 3}}, "eval.run"),
    # a top-level key written after a [table] header (TOML puts it into that table): where to move it
    ({"train": {**TRAIN, "device_models": ["rram4"]}}, "'device_models' is a top-level key: move it to the top level (in TOML, above the first"),
    ({"eval": {"seeds": [0, 1]}}, "'seeds' is a top-level key"),
    ({"eval": {"test_sigmas": "all"}}, "eval.test_sigmas"),
    ({"eval": {"bn_calibration_images": 1}}, "eval.bn_calibration_images"),
    ({"eval": {"bn_calibration_images": -5}}, "eval.bn_calibration_images"),
    ({"eval": {"bn_calibration_images": 2.5}}, "eval.bn_calibration_images"),
    ({"eval": {"bn_calibration_images": True}}, "eval.bn_calibration_images"),
    ({"resources": {"threads_per_cell": 0}}, "resources.threads_per_cell"),
    ({"resources": {"threads_per_cell": 100000}}, "resources.threads_per_cell"),  # torch segfaults on such counts
    ({"train": {"device_config": {"sigma": 0.7}}}, "train.device_config.sigma"),  # each cell's σ would replace it
    ({"eval": {"runs": 10_000_000}}, "eval.runs"),  # as nvcim eval refuses it without --force-runs
    ({"methods": ["vanilla", "noise_injection"], "method_params": {"ovf": {"n_variational": 2}}}, "method_params.ovf"),
    ({"train": {"weight_bits": 8, "device_config": {"weight_bits": 4}}}, "weight_bits = 8 and device_config"),
    ({"resources": {"cpus_per_cell": 1e6}}, "resources.cpus_per_cell"),
    ({"method_params": {"ovf": {"n_variational": 0}}}, "n_variational"),
    ({"method_params": {"gni": {}}}, "method_params"),
    ({"variants": [{"label": "x", "method": "ovf", "params": {"gamma": 1}}]}, "gamma"),
    ({"variants": [{"label": "x", "method": "sgd"}]}, "method"),
    ({"variants": [{"label": "ovf", "method": "ovf"}]}, "label"),
    ({"variants": [{"label": "a/b", "method": "ovf"}, {"label": "a_b", "method": "ovf"}]}, "label"),
    # a label never escapes its folder, hides, or shares a directory on a case-insensitive file system
    ({"variants": [{"label": "..", "method": "ovf"}]}, "'..'"),
    ({"variants": [{"label": ".", "method": "ovf"}]}, "label"),
    ({"variants": [{"label": ".hidden", "method": "ovf"}]}, "'.hidden'"),
    ({"variants": [{"label": "../../x", "method": "ovf"}]}, "label"),
    ({"variants": [{"label": "x" * 101, "method": "ovf"}]}, "label"),
    ({"variants": [{"label": "OVF", "method": "ovf"}]}, "'OVF'"),
    ({"variants": [{"label": "Vanilla", "method": "vanilla"}]}, "'Vanilla'"),
    ({"variants": [{"label": "Big", "method": "ovf"}, {"label": "big", "method": "ovf"}]}, "'Big'"),
    ({"variants": [{"label": "a b", "method": "ovf"}, {"label": "A_B", "method": "ovf"}]}, "'a b'"),
    ({"variants": [{"label": "x", "method": "ovf", "param": {}}]}, "param"),
    ({"variants": [{"label": "x", "method": "noise_injection", "params": {"logit_scale": -1}}]}, "logit_scale"),
])
def test_spec_validation_errors_are_one_line_and_name_the_key(changes, key):
    with pytest.raises(ValueError) as info:
        validate_spec(spec_of(**changes))
    msg = str(info.value)
    assert "\n" not in msg and key in msg, msg


# spec.json as nvcim wrote it before specs were typed (json.dumps of the file's contents, key order kept)
OLD_SPEC_JSON = [
    '{"name": "sweep", "models": ["tiny"], "width": 1.0, "datasets": ["mnist5k"], "methods": ["vanilla"], '
    '"sigmas": [0.3], "seeds": [0], "betas": null, "method_params": {}, "train": {"device": "cpu"}, "eval": '
    '{"runs": 200, "seed": 0, "val_runs": 20, "val_seed": 1, "batch_size": 1024, "test_sigmas": "train", '
    '"keep_beta_checkpoints": true}, "resources": {"threads_per_cell": null, "cpus_per_cell": 1, "gpus_per_cell": 0}, '
    '"variants": []}',
    '{"name": "golden", "description": "every kind of key", "models": ["tiny"], "width": 1.0, "datasets": ["mnist5k"], '
    '"methods": ["vanilla", "ovf"], "sigmas": [0.1, 0.3], "seeds": [1, 0], "betas": [0.1, 0.001], "method_params": '
    '{"ovf": {"n_variational": 2}}, "train": {"epochs": 1, "limit": 96, "device": "cpu"}, "eval": {"runs": 3, '
    '"seed": 0, "val_runs": 20, "val_seed": 1, "batch_size": 1024, "test_sigmas": [0.2, 0.4], '
    '"keep_beta_checkpoints": false, "bn_calibration_images": 8}, "resources": {"threads_per_cell": 2, '
    '"cpus_per_cell": 1.5, "gpus_per_cell": 0}, "variants": [{"label": "ni x", "method": "noise_injection", '
    '"params": {"logit_scale": 0.5}}, {"label": "ovf-b0", "method": "ovf", "params": {"beta": 0.0}}]}',
]
TYPED_RAW = [
    {"models": ["tiny"], "datasets": ["mnist5k"], "methods": ["vanilla"], "sigmas": [0.3], "seeds": [0],
     "train": {"device": "cpu"}},
    {"name": "golden", "description": "every kind of key", "models": ["tiny"], "width": 1, "datasets": ["mnist5k"],
     "methods": ["vanilla", "ovf"], "sigmas": [0.3, 0.1], "seeds": [1, 0], "betas": [0.001, 0.1],
     "method_params": {"ovf": {"n_variational": 2}}, "train": {"epochs": 1, "limit": 96, "device": "cpu"},
     "eval": {"runs": 3, "test_sigmas": [0.4, 0.2], "bn_calibration_images": 8, "keep_beta_checkpoints": False},
     "resources": {"cpus_per_cell": 1.5, "threads_per_cell": 2},
     "variants": [{"label": "ni x", "method": "noise_injection", "params": {"logit_scale": 0.5}},
                  {"label": "ovf-b0", "method": "ovf", "params": {"beta": 0.0}}]},
]


@pytest.mark.parametrize("i", range(len(TYPED_RAW)))
def test_spec_is_typed_and_its_dict_is_the_spec_json_of_earlier_versions(tmp_path, i):
    """validate_spec gives a frozen SweepSpec whose to_dict() is exactly what spec.json held before (keys, their
    order, values), so a sweep directory made by an earlier version is this spec's and resumes."""
    spec = validate_spec(TYPED_RAW[i])
    assert isinstance(spec, sweep.SweepSpec) and isinstance(spec.eval, sweep.EvalOptions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.resources.threads_per_cell = 3
    assert json.dumps(spec.to_dict()) == OLD_SPEC_JSON[i]
    assert sweep.SweepSpec.from_dict(json.loads(OLD_SPEC_JSON[i])) == spec
    old_file = json.dumps(json.loads(OLD_SPEC_JSON[i]), indent=2) + "\n"  # as an earlier version wrote it
    (tmp_path / sweep.SPEC_JSON).write_text(old_file)
    (tmp_path / "cells").mkdir()
    sweep.prepare_out_dir(spec, tmp_path)  # the same spec: accepted without --force, and spec.json stays as it was
    assert (tmp_path / sweep.SPEC_JSON).read_text() == old_file


def test_spec_defaults_live_in_the_typed_spec():
    spec = validate_spec(TYPED_RAW[0])
    assert spec.eval == sweep.EvalOptions() and spec.resources == sweep.Resources(gpus_per_cell=0)
    assert sweep.EVAL_DEFAULTS == {f.name: f.default for f in dataclasses.fields(sweep.EvalOptions)}
    assert spec.name == sweep.SweepSpec.name == "sweep" and spec.width == 1.0 and spec.betas is None


def test_recorded_spec_json_and_nulls_for_optional_keys_load_back(tmp_path, capsys):
    """DIR/spec.json as `nvcim sweep` records it ("betas": null, "threads_per_cell": null) loads back as the same spec
    (so `nvcim sweep DIR/spec.json --out DIR` resumes), and null for any optional key means absent (its default)."""
    from nvcim.cli import main
    from nvcim.sweep.runner import is_recorded_spec

    raw = spec_of(resources={})
    del raw["betas"]
    spec = validate_spec(raw)  # no betas, no threads_per_cell: recorded as null
    out = sweep.prepare_out_dir(spec, tmp_path / "out")
    recorded = json.loads((out / sweep.SPEC_JSON).read_text())
    assert recorded["betas"] is None and recorded["resources"]["threads_per_cell"] is None
    back = load_spec(out / sweep.SPEC_JSON)
    assert back == spec and is_recorded_spec(back, out)
    assert main(["sweep", str(out / sweep.SPEC_JSON), "--out", str(out), "--dry-run"]) == 0
    assert f"{len(expand(spec))} cells: 0 done" in capsys.readouterr().out
    nulls = spec_of(description=None, betas=None, device_models=None, method_params=None, variants=None,
                    eval={"runs": 3, "val_runs": 2, "target_ci": None, "max_chips": None, "images_per_chip": None,
                          "seed": None, "bn_calibration_images": None},
                    resources={"threads_per_cell": None, "cpus_per_cell": None, "gpus_per_cell": None})
    assert validate_spec(nulls) == spec
    variant = {"label": "ni", "method": "noise_injection"}
    assert validate_spec(spec_of(variants=[{**variant, "params": None}])) == validate_spec(spec_of(variants=[variant]))
    with pytest.raises(ValueError, match="'seeds'=None"):  # a required key stays required
        validate_spec(spec_of(seeds=None))


def test_recorded_spec_json_with_target_ci_and_device_models_loads_back(tmp_path):
    """spec.json records [eval] runs beside target_ci and the device-model axis as {name: fields}: both load back as the
    same spec (a device model file is not read again: the recorded fields are the spec's), while runs beside target_ci
    written by hand stays an error."""
    from nvcim.sweep.runner import is_recorded_spec

    (tmp_path / "chips").mkdir()
    (tmp_path / "chips" / "chip.toml").write_text('preset = "rram4"\nstuck_at = [0.01, 0.0]\n')
    spec_file = write_json_spec(tmp_path / "s.json", spec_of(
        betas=[0.001], device_models=["gaussian", "chips/chip.toml"], eval={"target_ci": 1.0, "max_chips": 50}))
    spec = load_spec(spec_file)
    out = sweep.prepare_out_dir(spec, tmp_path / "out")
    (tmp_path / "chips" / "chip.toml").unlink()  # the record holds its fields
    back = load_spec(out / sweep.SPEC_JSON)
    assert back == spec and is_recorded_spec(back, out) and expand(back) == expand(spec)
    with pytest.raises(ValueError, match="give one"):
        validate_spec(spec_of(eval={"runs": 200, "target_ci": 1.0}))
    recorded = json.loads((out / sweep.SPEC_JSON).read_text())
    recorded["device_models"]["chips/chip.toml"]["sigma"] = 0.1
    with pytest.raises(ValueError, match="'device_models': 'chips/chip.toml': it sets sigma"):
        validate_spec(recorded)


def test_expansion_refuses_two_cells_in_one_directory_case_aside():
    """Even a spec that skipped validation (e.g. edited spec.json) cannot put two cells in one directory."""
    spec = validate_spec(spec_of(methods=["noise_injection"], variants=[{"label": "ni-a", "method": "noise_injection"}]))
    edited = spec.to_dict()
    edited["variants"].append({"label": "NI-A", "method": "noise_injection", "params": {}})
    with pytest.raises(ValueError) as e:
        expand(sweep.SweepSpec.from_dict(edited))
    msg = str(e.value)
    assert "\n" not in msg and "'ni-a'" in msg and "'NI-A'" in msg


def test_model_that_does_not_fit_a_dataset_is_a_spec_error(monkeypatch):
    import nvcim.models

    def gray_only(num_classes, in_channels, width, image_size):
        if in_channels != 1:
            raise ValueError(f"in_channels={in_channels}: this model reads 1-channel images only")
        return nvcim.models.tiny(num_classes, in_channels, width, image_size)

    monkeypatch.setitem(nvcim.models.MODELS, "gray-only", gray_only)
    validate_spec(spec_of(models=["gray-only"]))
    with pytest.raises(ValueError) as e:
        validate_spec(spec_of(models=["gray-only"], datasets=["mnist5k", "cifar10"]))
    assert "\n" not in str(e.value) and "'gray-only' does not fit dataset 'cifar10'" in str(e.value)


def test_a_device_the_model_cannot_run_is_a_spec_error(monkeypatch, tmp_path):
    """A device-model axis with ADCs and a model with a transposed convolution: refused while validating (the cells
    failed one by one at run time, after a dry run had accepted the spec)."""
    import torch.nn as nn

    import nvcim.models

    def with_conv1d(num_classes, in_channels, width, image_size):
        return nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(in_channels, 4, 3), nn.Flatten(),
                             nn.Linear(4 * (image_size * image_size + 2), num_classes))

    monkeypatch.setitem(nvcim.models.MODELS, "conv1d-net", with_conv1d)
    (tmp_path / "adc.toml").write_text("adc_bits = 6\n")
    validate_spec(spec_of(models=["conv1d-net"], device_models=["gaussian"]), base_dir=tmp_path)
    with pytest.raises(ValueError) as e:
        validate_spec(spec_of(models=["conv1d-net"], device_models=["gaussian", "adc.toml"]), base_dir=tmp_path)
    assert "\n" not in str(e.value) and "model 'conv1d-net': layer '1' (ConvTranspose1d) cannot run the ADC" in str(e.value)


def test_each_model_keeps_its_own_layers_digital_and_every_bad_model_is_named(monkeypatch, tmp_path):
    """One [train] digital_layers list applied to every model, and a pattern matching nothing in one model was an
    error: an LSTM model and a transposed-convolution model could not share an ADC spec; the error named neither
    model, and only the first model that could not run the ADC was said (new-user trial)."""
    import torch.nn as nn

    import nvcim.models

    class _Seq(nn.Module):
        """An LSTM over an image's rows, then a Linear head."""

        def __init__(self, rnn, head):
            super().__init__()
            self.rnn, self.head = rnn, head

        def forward(self, x):  # x [B, C, H, W] -> rows [B, H, C W]
            return self.head(self.rnn(x.permute(0, 2, 1, 3).flatten(2))[0][:, -1])

    def with_lstm(num_classes, in_channels, width, image_size):
        return _Seq(nn.LSTM(in_channels * image_size, 8, batch_first=True), nn.Linear(8, num_classes))

    def with_convt(num_classes, in_channels, width, image_size):
        return nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(in_channels, 4, 3), nn.Flatten(),
                             nn.Linear(4 * (image_size * image_size + 2), num_classes))

    monkeypatch.setitem(nvcim.models.MODELS, "lstm-net", with_lstm)
    monkeypatch.setitem(nvcim.models.MODELS, "convt-net", with_convt)
    (tmp_path / "adc.toml").write_text("adc_bits = 6\n")
    both = dict(models=["lstm-net", "convt-net"], device_models=["gaussian", "adc.toml"])
    with pytest.raises(ValueError) as e:
        validate_spec(spec_of(**both), base_dir=tmp_path)
    assert "model 'lstm-net': layer 'rnn' (LSTM)" in str(e.value) and "model 'convt-net': layer '1'" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"model 'convt-net': TrainConfig.digital_layers: digital layer pattern 'rnn' matches no layer"):
        validate_spec(spec_of(**both, train={**BASE["train"], "digital_layers": ["rnn"]}), base_dir=tmp_path)
    spec = validate_spec(spec_of(**both, train={**BASE["train"], "digital_layers": {"lstm-net": ["rnn"],
                                                                                     "convt-net": ["1"]}}),
                         base_dir=tmp_path)
    kept = {(c.model, tuple(c.train_config().digital_layers)) for c in sweep.expand(spec)}
    assert kept == {("lstm-net", ("rnn",)), ("convt-net", ("1",))}
    with pytest.raises(ValueError, match=r"'train.digital_layers.mlp' names no model of the spec"):
        validate_spec(spec_of(**both, train={**BASE["train"], "digital_layers": {"mlp": ["0"]}}), base_dir=tmp_path)
    for bad in ("11", 3, None):  # a string was split into letters, silently (review finding); others a traceback
        with pytest.raises(ValueError, match=r"'train.digital_layers.convt-net'=.* is invalid: give a list") as e:
            validate_spec(spec_of(**both, train={**BASE["train"], "digital_layers": {"convt-net": bad}}),
                          base_dir=tmp_path)
        assert "\n" not in str(e.value)


def test_missing_key_and_bad_file(tmp_path):
    raw = spec_of()
    del raw["seeds"]
    with pytest.raises(ValueError, match="'seeds' is missing"):
        validate_spec(raw)
    bad = tmp_path / "bad.toml"
    bad.write_text("models = [tiny\n")
    with pytest.raises(ValueError, match="cannot be read"):
        load_spec(bad)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "nope.toml")


@pytest.mark.parametrize("name,text,key", [
    ("dup.json", '{"name": "t", "seeds": [0], "seeds": [5]}', "seeds"),
    ("dup.yaml", "train: {epochs: 1, limit: 96}\ntrain: {epochs: 3}\n", "train"),
    ("nested.yaml", "train:\n  epochs: 1\n  epochs: 3\n", "epochs"),
])
def test_a_key_given_twice_is_refused_not_merged(tmp_path, name, text, key):
    """JSON and YAML keep the last of a repeated key without a word (a second `train:` table dropped `limit`):
    refused in one line naming the key, as TOML does (review finding). YAML merge keys still work."""
    spec = tmp_path / name
    spec.write_text(text)
    with pytest.raises(ValueError, match=rf"key '{key}' is given twice") as exc:
        load_spec(spec)
    assert str(spec) in str(exc.value) and "\n" not in str(exc.value)
    from nvcim.io.files import read_mapping_file

    merged = tmp_path / "merge.yaml"
    merged.write_text("base: &b {epochs: 1, limit: 96}\ntrain:\n  <<: *b\n  epochs: 3\n")
    assert read_mapping_file(merged, "spec")["train"] == {"epochs": 3, "limit": 96}


# ---- running -------------------------------------------------------------------------------------------
def test_reference_layout(reference):
    out, res = reference
    assert len(res) == 10
    van = json.loads((out / "cells/tiny-w1/mnist5k/vanilla/seed0/result.json").read_text())
    assert van["kind"] == "mc_eval" and van["split"] == "test" and van["dataset"] == "mnist5k"
    assert [r["sigma"] for r in van["results"]] == [0.2, 0.3]  # trained once, tested at every σ
    assert van["checkpoint"] == "cells/tiny-w1/mnist5k/vanilla/seed0/checkpoint"
    assert (out / van["checkpoint"] / "model.safetensors").is_file()
    assert van["checkpoint_config"]["method"]["name"] == "vanilla"
    cell = van["cell"]
    for k in ("id", "model", "dataset", "method", "label", "sigma", "seed", "wall_time_s", "train_wall_time_s",
              "eval_wall_time_s", "beta_search"):
        assert k in cell
    assert cell["beta_search"] is None and cell["threads"] == 1
    assert len(van["results"][0]["per_run_accuracy"]) == 3
    ovf = json.loads((out / "cells/tiny-w1/mnist5k/ovf/s0.30/seed1/result.json").read_text())
    bs = ovf["cell"]["beta_search"]
    assert [c["beta"] for c in bs["candidates"]] == [0.1, 0.001] and bs["split"] == "val"
    assert ovf["checkpoint_config"]["method"]["beta"] == bs["chosen_beta"] == ovf["cell"]["params"]["beta"]
    assert json.loads((out / "spec.json").read_text())["name"] == "test"


def _all_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())


def test_sigkill_then_rerun_gives_identical_results(tmp_path, reference):
    ref_out, ref = reference
    spec = write_json_spec(tmp_path / "spec.json", BASE)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "nvcim", "sweep", str(spec), "--out", str(out), "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and any((out / "cells").rglob(sweep.RESULT_FILE)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((out / "cells").rglob(sweep.RESULT_FILE)))
    assert 1 <= n_before < 10
    done = cli(spec, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"({10 - n_before} this run)" in done.stderr  # finished cells were skipped, the rest ran once
    assert results_of(out) == ref  # bitwise: per-run accuracies, EKL, chosen β, validation scores
    files = _all_files(out)
    assert files == _all_files(ref_out)  # same layout, no partial or duplicate cell, no temp file left
    assert not [f for f in files if "/." in f]
    # a rerun runs nothing
    again = cli(spec, "--out", out, "--quiet")
    assert again.returncode == 0 and "(0 this run)" in again.stderr


def test_process_pool_equals_in_process(tmp_path, reference, capfd):
    _, ref = reference
    summary = run_sweep(validate_spec(BASE), tmp_path / "pool", workers=2, progress=True)
    assert summary.exit_code == 0 and len(summary.ok) == 10
    assert results_of(tmp_path / "pool") == ref  # progress lines change no number
    # the workers' own lines (a running cell said nothing for hours before): the pool passes the setting on
    err = capfd.readouterr().err
    assert "  tiny-w1/mnist5k/ovf/s0.30/seed1 β=0.001 (2 of 2): training (ovf, 1 epoch of 96 images)" in err, err
    assert "  tiny-w1/mnist5k/vanilla/seed0: testing on 3 chips × " in err


def _task_killing_the_seed1_worker(cell: dict, out: str, threads: int) -> dict:
    """A stand-in for run_cell in pool workers: seed 1's cell kills its worker process (like the OOM killer)."""
    if cell["seed"] == 1:
        os._exit(9)
    time.sleep(0.2)
    return {"id": cell["id"], "status": "ok", "error": None, "wall_time_s": 0.2, "mean": 50.0, "sigma": cell["sigma"],
            "beta": None}


def test_a_dead_worker_fails_only_its_own_cell(tmp_path):
    from nvcim.sweep import backends

    cells = expand(validate_spec(spec_of(methods=["noise_injection"], sigmas=[0.2, 0.3], seeds=[0, 1, 2])))
    done = []
    backends.run_pool(cells, tmp_path, done.append, workers=2, threads=1, task=_task_killing_the_seed1_worker)
    by_id = {d["id"]: d for d in done}
    assert len(done) == len(by_id) == 6  # every cell reported exactly once
    for c in cells:
        assert by_id[c.id]["status"] == ("failed" if c.seed == 1 else "ok"), c.id
        assert (sweep.cell_dir(tmp_path, c.id) / sweep.FAILED_FILE).exists() == (c.seed == 1)
    assert "worker process died" in by_id[cells[1].id]["error"]


def _task_slow_after_seed0(cell: dict, out: str, threads: int) -> dict:
    """A stand-in for run_cell: seed 0's cells finish at once, the others take a minute (their pid in OUT/pids)."""
    with open(Path(out) / "pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.1 if cell["seed"] == 0 else 60)
    return {"id": cell["id"], "status": "ok", "error": None, "wall_time_s": 0.1, "mean": 50.0, "sigma": cell["sigma"],
            "beta": None}


def test_an_interrupted_pool_stops_at_once_not_after_its_running_cells(tmp_path):
    """Ctrl-C / SIGTERM with --workers 2 waited for every running and queued cell (hours on a real sweep)."""
    from nvcim.sweep import backends

    cells = expand(validate_spec(spec_of(methods=["noise_injection"], sigmas=[0.2], seeds=[0, 1, 2])))

    def on_done(summary):
        raise KeyboardInterrupt  # what Ctrl-C raises in the sweep process while it waits

    with pytest.raises(KeyboardInterrupt):
        backends.run_pool(cells, tmp_path, on_done, workers=2, threads=1, task=_task_slow_after_seed0)

    def alive(pid: int) -> bool:  # a terminated worker is gone, or a zombie until its pool reaps it
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    time.sleep(2)
    pids = {int(p) for p in (tmp_path / "pids").read_text().split()}
    assert pids and not any(alive(p) for p in pids)  # was: running on, the process exit waiting 60 s for them


def test_pool_workers_exit_with_the_sweep_process(tmp_path):
    """A worker whose sweep process is killed must not run on (and write into DIR) outside the lock."""
    code = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT / 'src')!r})
import concurrent.futures as cf, multiprocessing as mp
from nvcim.sweep.backends.pool import _pool_init
def work(path):
    open(path + ".started", "w").write("busy")
    time.sleep(4)
    open(path, "w").write("orphan")
if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_pool_init, initargs=(1, []))
    pool.submit(work, {str(tmp_path / 'late')!r})
    time.sleep(3)
    os._exit(0)  # the sweep process dies while its worker is busy
"""
    script = tmp_path / "parent.py"
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], timeout=60, check=True)
    time.sleep(5)
    # the worker did start (initargs that _pool_init rejects broke the pool first: the test passed vacuously)
    assert (tmp_path / "late.started").exists() and not (tmp_path / "late").exists()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an exited worker no process reaped yet is not running


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_exit_when_the_sweep_died_while_they_started(tmp_path):
    """The sweep process dies before its worker is ready (still importing nvcim): the worker exits too."""
    code = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT / 'src')!r})
import concurrent.futures as cf, multiprocessing as mp
from nvcim.sweep.backends.pool import _pool_init
def work(path):
    time.sleep(1)
    open(path, "w").write("orphan")
if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_pool_init, initargs=(1, []))
    pool.submit(work, {str(tmp_path / 'late')!r})
    print(*pool._processes, flush=True)
    time.sleep(0.3)  # the work item is on its way; the worker is still importing
    os._exit(0)
"""
    script = tmp_path / "parent.py"
    script.write_text(code)
    worker = int(subprocess.run([sys.executable, str(script)], timeout=60, check=True, capture_output=True,
                                text=True).stdout.split()[0])
    deadline = time.monotonic() + 30
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(worker) and not (tmp_path / "late").exists()


def test_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from nvcim import train as train_mod

    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0, 1, 2], betas=[0.1])
    real = train_mod.train

    def flaky(cfg, *a, **k):
        if cfg.seed == 1:
            raise RuntimeError("simulated failure\nsecond line")
        return real(cfg, *a, **k)

    monkeypatch.setattr(train_mod, "train", flaky)
    out = tmp_path / "out"
    s = run_sweep(validate_spec(raw), out, progress=False)
    assert s.exit_code == 1 and len(s.ok) == 2 and s.failed == ["tiny-w1/mnist5k/noise_injection/s0.30/seed1"]
    failed = json.loads((out / "cells" / s.failed[0] / "failed.json").read_text())
    assert failed["kind"] == "sweep_cell_failed" and failed["error"] == "RuntimeError: simulated failure"
    assert "Traceback" in failed["traceback"] and failed["cell"]["id"] == s.failed[0]
    assert not (out / "cells" / s.failed[0] / "result.json").exists()
    # without --retry-failed the failed cell is left alone (and the sweep still reports it)
    s = run_sweep(validate_spec(raw), out, progress=False)
    assert s.exit_code == 1 and s.ok == [] and s.failed_before == [failed["cell"]["id"]]
    monkeypatch.setattr(train_mod, "train", real)
    s = run_sweep(validate_spec(raw), out, progress=False, retry_failed=True)
    assert s.exit_code == 0 and s.ok == [failed["cell"]["id"]]
    assert not (out / "cells" / s.ok[0] / "failed.json").exists()


def test_a_failure_of_another_definition_runs_again_after_the_spec_is_edited(tmp_path, monkeypatch, capsys):
    """A cell that failed under lr = 1e30 is not a failure of the edited spec (lr fixed, --force): it runs again,
    and the dry run says why; the same definition's failure is still left alone (review finding)."""
    from nvcim import train as train_mod
    from nvcim.cli import main

    raw = spec_of(methods=["vanilla"], seeds=[0])
    real = train_mod.train

    def diverge_on_big_lr(cfg, *a, **k):
        if cfg.lr > 1:
            raise RuntimeError("CellDiverged: nan")
        return real(cfg, *a, **k)

    monkeypatch.setattr(train_mod, "train", diverge_on_big_lr)
    out = tmp_path / "out"
    bad = {**raw, "train": {**raw["train"], "lr": 1e30}}
    assert run_sweep(validate_spec(bad), out, progress=False).exit_code == 1
    assert run_sweep(validate_spec(bad), out, progress=False, force=True).failed_before  # same definition: left
    spec_file = tmp_path / "fixed.json"
    spec_file.write_text(json.dumps(raw))
    assert main(["sweep", str(spec_file), "--out", str(out), "--dry-run", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "failed under another definition: train differ; runs again" in printed and "0 failed" in printed
    s = run_sweep(validate_spec(raw), out, progress=False, force=True)
    assert s.exit_code == 0 and len(s.ok) == 1 and not s.failed_before
    assert not (out / "cells" / s.ok[0] / sweep.FAILED_FILE).exists()


def test_cli_diverging_cell_exit_code_1_and_dry_run(tmp_path, capsys):
    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1],
                  variants=[{"label": "ovf-huge", "method": "ovf", "params": {"beta": 1e38}}])
    spec = write_json_spec(tmp_path / "spec.json", raw)
    out = tmp_path / "out"
    r = cli(spec, "--out", out)
    assert r.returncode == 1, r.stderr
    assert "FAILED tiny-w1/mnist5k/ovf-huge/s0.30/seed0: CellDiverged: training diverged" in r.stderr
    assert (out / "cells/tiny-w1/mnist5k/noise_injection/s0.30/seed0/result.json").is_file()
    assert (out / "cells/tiny-w1/mnist5k/ovf-huge/s0.30/seed0/failed.json").is_file()
    from nvcim.cli import main  # the rest in process (same code path, no interpreter start)

    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0
    stdout = capsys.readouterr().out
    assert "done     tiny-w1/mnist5k/noise_injection/s0.30/seed0" in stdout
    assert "failed   tiny-w1/mnist5k/ovf-huge/s0.30/seed0" in stdout
    # another spec into the same directory: refused with a one-line error
    other = write_json_spec(tmp_path / "other.json", spec_of(methods=["noise_injection"], sigmas=[0.2], seeds=[0]))
    assert main(["sweep", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds cells of another spec" in err and len(err.strip().splitlines()) == 1
    bad = write_json_spec(tmp_path / "bad.json", spec_of(sigmas=[-1]))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'sigmas'" in err and len(err.strip().splitlines()) == 1


def test_cell_training_to_non_finite_outputs_fails_not_ok(tmp_path):
    """One SGD step at lr 1e12: weights still finite, logits NaN. The cell is a divergence, not an ok result."""
    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1],
                  train={**TRAIN, "limit": 32, "optimizer": "sgd", "lr": 1e12})
    out = tmp_path / "out"
    s = run_sweep(validate_spec(raw), out, progress=False)
    assert s.exit_code == 1 and s.ok == [] and len(s.failed) == 1
    failed = json.loads((out / "cells" / s.failed[0] / sweep.FAILED_FILE).read_text())
    assert failed["error"].startswith("CellDiverged: training diverged (non-finite")
    assert not (out / "cells" / s.failed[0] / sweep.RESULT_FILE).exists()
    ckpt = json.loads((out / "cells" / s.failed[0] / "checkpoint" / "config.json").read_text())
    assert ckpt["metrics"]["status"] == "diverged"  # recorded next to the successes


@pytest.mark.parametrize("damage", ["truncated", "not_a_result", "other_cell", "no_results"])
def test_damaged_result_is_not_done_and_the_cell_reruns_with_a_warning(tmp_path, capsys, damage):
    from nvcim.cli import main

    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0, 1], betas=[0.1])
    spec = validate_spec(raw)
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    cid = expand(spec)[0].id
    file = sweep.cell_dir(out, cid) / sweep.RESULT_FILE
    good = json.loads(file.read_text())
    text = file.read_text()
    file.write_text({"truncated": text[: len(text) // 2], "not_a_result": "[1, 2]",
                     "other_cell": json.dumps({**good, "cell": {**good["cell"], "id": "x"}}),
                     "no_results": json.dumps({**good, "results": []})}[damage])
    assert sweep.cell_state(out, cid) == "pending" and sweep.result_problem(out, cid)
    spec_file = write_json_spec(tmp_path / "spec.json", raw)
    assert main(["sweep", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"pending  {cid}" in printed and "runs again" in printed and "1 done" in printed
    with pytest.warns(sweep.SweepWarning, match=f"cell {re.escape(cid)}: result.json") as caught:
        summary = run_sweep(spec, out, progress=True)
    assert summary.exit_code == 0 and summary.ok == [cid] and summary.done_before == 1
    assert len([w for w in caught if "result.json" in str(w.message)]) == 1
    again = json.loads(file.read_text())
    assert again["results"][0]["per_run_accuracy"] == good["results"][0]["per_run_accuracy"]  # same model, same chips


def test_tested_checkpoint_of_a_beta_search_has_normal_permissions(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        spec = validate_spec(spec_of(methods=["ovf"], sigmas=[0.3], seeds=[0], betas=[0.1, 0.001]))
        assert run_sweep(spec, tmp_path / "out", progress=False).exit_code == 0
    finally:
        os.umask(old)
    ckpt = sweep.cell_dir(tmp_path / "out", expand(spec)[0].id) / "checkpoint"
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in ckpt.iterdir()} == {0o644}


def test_damaged_beta_score_is_scored_again(tmp_path):
    spec = validate_spec(spec_of(methods=["ovf"], sigmas=[0.3], seeds=[0], betas=[0.1, 0.001]))
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    d = sweep.cell_dir(out, expand(spec)[0].id)
    good = json.loads((d / sweep.RESULT_FILE).read_text())["cell"]["beta_search"]
    (d / sweep.RESULT_FILE).unlink()  # as if killed before the cell finished
    score = d / "beta" / "0.1" / sweep.SCORE_FILE
    score.write_text(score.read_text()[:20])
    s = run_sweep(spec, out, progress=False)
    assert s.exit_code == 0 and len(s.ok) == 1
    assert json.loads((d / sweep.RESULT_FILE).read_text())["cell"]["beta_search"]["candidates"] == good["candidates"]


def test_missing_data_fails_up_front_with_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import nvcim.data
    from nvcim.cli import main

    calls = []

    def offline(url, dest):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(nvcim.data.download, "_fetch", offline)
    raw = spec_of(datasets=["cifar10"], methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1],
                  train={**TRAIN, "data_root": str(tmp_path / "data")})
    spec_file = write_json_spec(tmp_path / "spec.json", raw)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("nvcim: downloading")]
    assert len(err) == 1 and "cifar10" in err[0] and str(tmp_path / "data" / "cifar10") in err[0], err
    assert len(calls) == 1  # one download try, up front, not one per cell
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no sweep directory, no data folder


def test_other_spec_refused_unless_force(tmp_path):
    out = tmp_path / "out"
    sweep.prepare_out_dir(validate_spec(BASE), out)
    sweep.prepare_out_dir(validate_spec(BASE), out)  # same spec: fine
    other = validate_spec(spec_of(seeds=[0, 1, 2]))
    with pytest.raises(ValueError, match="another spec"):
        sweep.prepare_out_dir(other, out)
    sweep.prepare_out_dir(other, out, force=True)
    assert json.loads((out / "spec.json").read_text())["seeds"] == [0, 1, 2]


def test_running_sweep_is_refused_and_its_spec_left_alone_even_with_force(tmp_path):
    out = tmp_path / "out"
    sweep.prepare_out_dir(validate_spec(BASE), out)
    before = (out / "spec.json").read_bytes()
    with sweep.sweep_lock(out):  # another sweep is running in `out`
        with pytest.raises(ValueError, match="in use by another running sweep"):
            run_sweep(validate_spec(spec_of(seeds=[0, 1, 2])), out, force=True, progress=False)
    assert (out / "spec.json").read_bytes() == before and not (out / "cells").exists()


def test_partial_work_of_another_thread_count_is_redone_with_a_warning(tmp_path, capsys):
    spec = validate_spec(spec_of(methods=["vanilla"], seeds=[0]))
    (cell,) = expand(spec)
    sweep.prepare_out_dir(spec, tmp_path)
    d = sweep.cell_dir(tmp_path, cell.id)
    d.mkdir(parents=True)
    (d / sweep.CELL_FILE).write_text(json.dumps({**cell.to_dict(), "threads": 7}))  # killed while on 7 threads
    (d / "checkpoint").mkdir()
    (d / "checkpoint" / "config.json").write_text("{half")  # nvcim's partial work: removed
    (d / "notes.txt").write_text("x")  # not nvcim's: kept
    with pytest.warns(sweep.SweepWarning, match=r"made with 7 thread\(s\) per cell, this run uses 1"):
        summary = run_sweep(spec, tmp_path, progress=False)  # a warning, quiet or not
    assert summary.exit_code == 0
    assert (d / "notes.txt").read_text() == "x" and json.loads((d / sweep.CELL_FILE).read_text())["threads"] == 1
    assert json.loads((d / "checkpoint" / "config.json").read_text())  # trained again


def test_temp_leftovers_are_removed_and_an_interrupted_replace_is_undone(tmp_path):
    (tmp_path / ".result.json.ab_c1234.tmp").write_text("half")  # atomic_write_text's temp (tempfile: 8 random)
    (tmp_path / ".checkpoint.tmp-x1234567").mkdir()  # the new copy, never renamed into place
    (tmp_path / ".checkpoint.old-y1234567").mkdir()  # the previous copy, renamed away just before the kill
    (tmp_path / ".checkpoint.old-y1234567" / "config.json").write_text("{}")
    (tmp_path / ".train_state.old-z1234567").mkdir()  # a previous copy whose replacement did land
    (tmp_path / "train_state").mkdir()
    (tmp_path / ".nvcim-probe-abcd1234.tmp").write_text("")
    # the user's hidden files: nvcim's patterns, but not nvcim's names (or not its kind of entry): kept as they are
    mine = [".draft.tmp", ".notes.txt.abcd1234.tmp", ".scratch.tmp-abcd1234", ".analysis.old-v1234567",
            ".result.json.tmp", ".checkpoint.old-short"]
    for name in mine[:2] + mine[4:]:
        (tmp_path / name).write_text("mine")
    for name in mine[2:4]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").write_text("mine")
    sweep.files._clean_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint", "train_state", *mine])
    assert (tmp_path / "checkpoint" / "config.json").read_text() == "{}"
    assert (tmp_path / ".scratch.tmp-abcd1234" / "data").read_text() == "mine"


def test_removing_a_cells_files_keeps_the_users_hidden_files(tmp_path):
    d = tmp_path / "cell"
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "config.json").write_text("{}")
    (d / sweep.CELL_FILE).write_text("{}")
    (d / ".cell.json.abcd1234.tmp").write_text("half")
    (d / ".draft.tmp").write_text("mine")
    (d / ".scratch.tmp").mkdir()
    (d / ".scratch.tmp" / "data").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("my checkpoint")
    (d / "train_state").symlink_to(tmp_path / "mine")  # a link where nvcim writes a directory: the link goes
    sweep.files.remove_cell_files(d)
    assert sorted(p.name for p in d.iterdir()) == [".draft.tmp", ".scratch.tmp"]
    assert (d / ".scratch.tmp" / "data").read_text() == "mine"
    assert (tmp_path / "mine" / "config.json").read_text() == "my checkpoint"  # what it named stays


def test_beta_search_selects_on_validation_split_only(tmp_path, monkeypatch):
    """Scores are forced (by call order) so that β = 0.01 and 0.001 tie for best: the larger wins."""
    from nvcim import evaluate
    from nvcim.data import load_dataset

    raw = spec_of(methods=["ovf"], sigmas=[0.3], seeds=[0], betas=[0.1, 0.01, 0.001])
    real_mc, real_curve = evaluate.monte_carlo_evaluate, evaluate.robustness_curve
    splits = load_dataset("mnist5k", limit=TRAIN["limit"], val_fraction=0.1, seed=0)
    calls = []
    forced = iter([40.0, 70.0, 70.0])

    def fake_mc(model, data, cfg, **kw):
        calls.append(("mc", data, cfg.sigma, kw["runs"]))
        return dataclasses.replace(real_mc(model, data, cfg, **kw), mean=next(forced))

    def spy_curve(model, data, cfg, sigmas, **kw):
        calls.append(("curve", data, list(sigmas), kw["runs"]))
        return real_curve(model, data, cfg, sigmas, **kw)

    monkeypatch.setattr(evaluate, "monte_carlo_evaluate", fake_mc)
    monkeypatch.setattr(evaluate, "robustness_curve", spy_curve)
    out = tmp_path / "out"
    assert run_sweep(validate_spec(raw), out, progress=False).exit_code == 0
    mc = [c for c in calls if c[0] == "mc"]
    assert len(mc) == 3
    for _, data, sigma, runs in mc:  # every selection score: validation split, training σ, eval.val_runs
        assert data.images.shape == splits.val.images.shape and bool((data.images == splits.val.images).all())
        assert sigma == 0.3 and runs == 2
    curve = [c for c in calls if c[0] == "curve"]
    assert len(curve) == 1  # the test set is touched once, by the chosen model only
    assert bool((curve[0][1].images == splits.test.images).all()) and curve[0][2] == [0.3] and curve[0][3] == 3
    d = json.loads((out / "cells/tiny-w1/mnist5k/ovf/s0.30/seed0/result.json").read_text())
    bs = d["cell"]["beta_search"]
    assert bs["chosen_beta"] == 0.01 and [c["val_mean"] for c in bs["candidates"]] == [40.0, 70.0, 70.0]
    assert d["checkpoint_config"]["method"]["beta"] == 0.01
    # a resumed search reads the finished candidates' scores instead of retraining or re-scoring them
    (out / "cells/tiny-w1/mnist5k/ovf/s0.30/seed0/result.json").unlink()
    calls.clear()
    assert run_sweep(validate_spec(raw), out, progress=False).exit_code == 0
    assert [c[0] for c in calls] == ["curve"]


def test_per_chip_bn_calibration(tmp_path, monkeypatch):
    """eval.bn_calibration_images: the β search's validation chips and the test chips recalibrate BatchNorm;
    the test numbers equal monte_carlo_evaluate(..., bn_calibration=ChipCalibration) on the checkpoint."""
    import torch

    from nvcim import evaluate
    from nvcim.batchnorm import ChipCalibration
    from nvcim.io.checkpoint import load_checkpoint

    assert "bn_calibration_images" not in validate_spec(BASE).to_dict()["eval"]  # off: old sweep directories still resume
    assert validate_spec(spec_of(eval={"runs": 3, "val_runs": 2, "bn_calibration_images": 0})) == validate_spec(BASE)
    raw = spec_of(methods=["noise_injection", "ovf"], sigmas=[0.3], seeds=[0], betas=[0.1, 0.001],
                  eval={"runs": 3, "val_runs": 2, "bn_calibration_images": 40})
    seen = []
    real_mc, real_curve = evaluate.monte_carlo_evaluate, evaluate.robustness_curve

    def spy_mc(model, data, cfg, **kw):
        seen.append(("mc", kw.get("bn_calibration")))
        return real_mc(model, data, cfg, **kw)

    def spy_curve(model, data, cfg, sigmas, **kw):
        seen.append(("curve", kw.get("bn_calibration")))
        return real_curve(model, data, cfg, sigmas, **kw)

    monkeypatch.setattr(evaluate, "monte_carlo_evaluate", spy_mc)
    monkeypatch.setattr(evaluate, "robustness_curve", spy_curve)
    out = tmp_path / "out"
    assert run_sweep(validate_spec(raw), out, progress=False).exit_code == 0
    assert [k for k, _ in seen] == ["curve", "mc", "mc", "curve"]  # NI test; OVF: 2 β scores, then its test
    assert all(isinstance(c, ChipCalibration) and c.images == 40 and c.batch_size == 1024 for _, c in seen)
    monkeypatch.undo()

    cell = next(c for c in expand(validate_spec(raw)) if c.method == "noise_injection")
    d = json.loads((sweep.cell_dir(out, cell.id) / sweep.RESULT_FILE).read_text())
    assert d["bn_recalibration"] == {"split": "train", "images": 40, "batch_size": 1024, "weights": "each chip"}
    splits = sweep.cell_run._splits(cell.train_config())
    model, _ = load_checkpoint(sweep.cell_dir(out, cell.id) / "checkpoint")
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cell ran
    try:
        cfg = cell.train_config().device_cfg()
        want = evaluate.monte_carlo_evaluate(model, splits.test, cfg, runs=3, seed=0,
                                             bn_calibration=ChipCalibration(splits.train, images=40))
        plain = evaluate.monte_carlo_evaluate(model, splits.test, cfg, runs=3, seed=0)
    finally:
        torch.set_num_threads(old)
    assert d["results"][0]["per_run_accuracy"] == want.per_run_accuracy
    assert want.per_run_accuracy != plain.per_run_accuracy  # the calibration did change the chips' scores
    # the report keeps such results apart from the paper's evaluation
    from nvcim.report import load_results

    recs = load_results(out)
    assert {r["label"] for r in recs} == {"noise injection (BN per chip)", "OVF (BN per chip)"}


def test_stale_partial_cell_is_wiped(tmp_path):
    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1])
    spec = validate_spec(raw)
    out = tmp_path / "out"
    cid = expand(spec)[0].id
    d = sweep.cell_dir(out, cid)
    (d / ".checkpoint.tmp-abc").mkdir(parents=True)
    (d / "cell.json").write_text('{"id": "something else"}')
    (d / "checkpoint").mkdir()
    (d / "checkpoint" / "model.safetensors").write_text("x")
    (d / "beta" / "1e-1" / "checkpoint").mkdir(parents=True)
    (d / "beta" / "1e-1" / "score.json").write_text("{}")
    (d / "my_plot.png").write_text("the user's")  # a file nvcim did not write stays, whatever the sweep redoes
    assert run_sweep(spec, out, progress=False, force=True).exit_code == 0
    assert sorted(p.name for p in d.iterdir()) == ["cell.json", "checkpoint", "my_plot.png", "result.json"]
    assert json.loads((d / "cell.json").read_text())["id"] == cid
    assert (d / "my_plot.png").read_text() == "the user's"


def test_stale_partial_cell_keeps_files_nvcim_did_not_write_even_in_its_checkpoint(tmp_path):
    spec = validate_spec(spec_of(methods=["vanilla"], seeds=[0]))
    out = tmp_path / "out"
    d = sweep.cell_dir(out, expand(spec)[0].id)
    (d / "checkpoint").mkdir(parents=True)  # no cell.json: partial work of unknown definition
    (d / "checkpoint" / "config.json").write_text("{}")
    (d / "checkpoint" / "README").write_text("mine")
    summary = run_sweep(spec, out, progress=False, force=True)
    assert (d / "checkpoint" / "README").read_text() == "mine"  # kept, so the cell cannot train there: it fails
    assert summary.failed == [expand(spec)[0].id] and not (d / "checkpoint" / "config.json").exists()
    assert "refusing to replace it" in json.loads((d / "failed.json").read_text())["error"]


def test_finished_cell_of_another_definition_is_refused_not_reused(tmp_path, capsys):
    """Growing the σ grid with --force: the vanilla cell (tested at the old grid) is stale. The sweep refuses
    with one line and keeps its result; a spec that only adds cells runs them and keeps the finished ones."""
    from nvcim.cli import main

    out = tmp_path / "out"
    small = spec_of(methods=["vanilla", "noise_injection"], sigmas=[0.3], seeds=[0])
    assert run_sweep(validate_spec(small), out, progress=False).exit_code == 0
    van = sweep.cell_dir(out, "tiny-w1/mnist5k/vanilla/seed0") / sweep.RESULT_FILE
    before = van.read_bytes()
    grown = write_json_spec(tmp_path / "grown.json", {**small, "sigmas": [0.2, 0.3]})
    assert main(["sweep", str(grown), "--out", str(out), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 finished cell(s) were made by another definition" in err
    assert "tiny-w1/mnist5k/vanilla/seed0, test_sigmas differ" in err
    assert van.read_bytes() == before
    assert main(["sweep", str(grown), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "stale    tiny-w1/mnist5k/vanilla/seed0" in printed and "1 stale" in printed
    # the dry run says what the run would refuse (it used to list "1 to run" and say nothing of it)
    assert "note: the run would stop here: sweep output" in captured.err and "pass --force" in captured.err
    assert main(["sweep", str(grown), "--out", str(out), "--dry-run", "--force"]) == 0
    assert "note: the run would stop here: 1 finished cell(s) marked stale" in capsys.readouterr().err
    # adding a method leaves every finished cell's definition alone: only the new cells run
    more = validate_spec({**small, "methods": ["vanilla", "noise_injection", "ovf"], "betas": [0.1]})
    summary = run_sweep(more, out, progress=False, force=True)
    assert summary.done_before == 2 and summary.ok == ["tiny-w1/mnist5k/ovf/s0.30/seed0"]
    assert van.read_bytes() == before


def test_repository_experiment_specs_are_valid():
    specs = sorted((ROOT / "experiments").glob("*/*.toml"))
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in specs}
    pairs = ["vgg8_mnist", "vgg8_cifar10", "resnet18_mnist", "resnet18_cifar10", "resnet18_cifar100",
             "resnet18_tiny_imagenet"]
    assert {f"paper/fig3_{p}.toml" for p in pairs} | {"paper/fig4_ekl.toml", "paper/convergence.toml",
                                                      "cpu/ablation_mnist5k.toml"} <= names
    for p in specs:
        if p.parent.name == "devices":  # device models (DeviceConfig fields) for scripts/device_study.sh
            from nvcim.io.device_models import device_model

            assert device_model(str(p), defaults={"sigma": 0.2}).sigma == 0.2
            continue
        cells = expand(load_spec(p))
        if p.parent.name == "paper" and p.stem.startswith("fig"):
            spec = load_spec(p)
            assert spec.sigmas == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4) and spec.seeds == (0, 1, 2, 3, 4)
            assert spec.train["epochs"] == 200 and spec.eval.runs == 200 and len(cells) == 95
            assert spec.train["lr"] == (1e-3 if "vgg8" in spec.models else 1e-2)
    conv = expand(load_spec(ROOT / "experiments/paper/convergence.toml"))
    assert len(conv) == 20 and {c.sigma for c in conv} == {0.35}
    abl = expand(load_spec(ROOT / "experiments/cpu/ablation_mnist5k.toml"))
    assert len(abl) == 36 and {c.label for c in abl} == {"noise_injection", "ovf", "ovf-beta0", "ni-scale-1/2",
                                                         "ni-scale-1/4", "ni-scale-1/8"}


def test_cpu_reproduction_script_runs_every_repro_spec():
    # scripts/run_repro_cpu.sh is REPRODUCTION.md's one command: it must name every spec in
    # experiments/repro/ exactly once, each with its own output folder
    script = (ROOT / "scripts/run_repro_cpu.sh").read_text()
    pairs = re.search(r'ALL="([^"]*)"', script).group(1).split()
    specs = [p.split(":")[0] for p in pairs]
    dirs = [p.split(":")[1] for p in pairs]
    assert sorted(specs) == sorted(p.stem for p in (ROOT / "experiments/repro").glob("*.toml"))
    assert len(set(specs)) == len(specs) and len(set(dirs)) == len(dirs)


def test_sweep_log_line_names_the_searched_parameter():
    """A tempered cell's chosen value is its logit scale, not a β: the progress line says which it is."""
    from nvcim.sweep.runner import _log_line

    base = {"status": "ok", "id": "c", "sigma": 0.35, "mean": 61.07, "wall_time_s": 1.0, "beta": 0.0625}
    assert "logit_scale=0.0625" in _log_line(1, 2, {**base, "searched": "logit_scale"})
    assert "β=0.0625" in _log_line(1, 2, {**base, "searched": "beta"})
    assert "β=0.0625" in _log_line(1, 2, base)  # summaries without the key (older callers)


def test_results_that_are_not_cells_of_the_spec_are_named(tmp_path, capsys):
    """A sweep directory can hold results that are not cells of its spec (a sweep of CorrectNet run before λ was
    searched per σ left ".../correctnet/seed0" beside the new ".../correctnet/s0.30/seed0"); `nvcim report` reads
    them too, so the sweep and its dry run name them (they used to say nothing)."""
    from nvcim.cli import main
    from nvcim.sweep.files import foreign_results

    raw = spec_of(methods=["vanilla"], sigmas=[0.3], seeds=[0])
    spec = validate_spec(raw)
    out = sweep.prepare_out_dir(spec, tmp_path / "out")
    assert foreign_results(out, expand(spec)) == []
    old = out / "cells" / "tiny-w1" / "mnist5k" / "correctnet" / "seed0"
    old.mkdir(parents=True)
    (old / sweep.RESULT_FILE).write_text("{}")
    (sweep.cell_dir(out, expand(spec)[0].id)).mkdir(parents=True)  # a cell of the spec, not run yet: not foreign
    assert foreign_results(out, expand(spec)) == ["tiny-w1/mnist5k/correctnet/seed0"]
    spec_file = write_json_spec(tmp_path / "spec.json", raw)
    assert main(["sweep", str(spec_file), "--out", str(out), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "note: 1 result(s) under" in err and "(first: tiny-w1/mnist5k/correctnet/seed0)" in err


# ---- issue 16: trust nothing unparseable, warn even when quiet, delete / overwrite nothing of the user's ------
ONE_CELL = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1])


def _warned(caught, text: str) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, sweep.SweepWarning) and text in str(w.message)]


def test_quiet_sweep_still_warns_of_a_damaged_result(tmp_path, capsys):
    """--quiet / progress=False drops the bar and per-cell lines, never a warning (it used to say nothing)."""
    from nvcim.cli import main

    spec = validate_spec(ONE_CELL)
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    (cid,) = [c.id for c in expand(spec)]
    file = sweep.cell_dir(out, cid) / sweep.RESULT_FILE
    text = file.read_text()
    file.write_text(text[: len(text) // 2])
    with pytest.warns(sweep.SweepWarning) as caught:
        assert run_sweep(spec, out, progress=False).ok == [cid]
    assert len(_warned(caught, f"cell {cid}: result.json is not a complete result")) == 1
    file.write_text(text[: len(text) // 2])
    spec_file = write_json_spec(tmp_path / "spec.json", ONE_CELL)
    assert main(["sweep", str(spec_file), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"nvcim sweep: warning: cell {cid}: result.json is not a complete result" in err
    assert "[1/1]" not in err  # quiet: no per-cell line


def test_a_result_that_parses_but_the_report_would_refuse_is_not_done(tmp_path):
    """A NaN mean or a missing test σ counted as done: nothing reran it, and the report aborted or dropped the row."""
    spec = validate_spec(spec_of(methods=["vanilla"], sigmas=[0.2, 0.3], seeds=[0]))
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    (cid,) = [c.id for c in expand(spec)]
    file = sweep.cell_dir(out, cid) / sweep.RESULT_FILE
    good = json.loads(file.read_text())
    assert sweep.result_problem(out, cid) is None
    for edit, why in ((lambda d: d["results"].pop(), "holds σ [0.2], not the cell's test σ [0.2, 0.3]"),
                      (lambda d: d["results"][0].update(mean=float("nan")), "holds a mean accuracy nan at σ = 0.2")):
        damaged = json.loads(json.dumps(good))
        edit(damaged)
        file.write_text(json.dumps(damaged))
        assert why in sweep.result_problem(out, cid) and sweep.cell_state(out, cid) == "pending"
    with pytest.warns(sweep.SweepWarning):
        assert run_sweep(spec, out, progress=False).ok == [cid]  # runs again
    assert sweep.result_problem(out, cid) is None


def test_a_report_of_an_unfinished_sweep_says_how_much_is_done(tmp_path, capsys):
    """A whole arm (OVF) missing from a half-finished sweep's report, and nothing said."""
    from nvcim.cli import main

    spec = validate_spec(spec_of(methods=["noise_injection"], sigmas=[0.2, 0.3], seeds=[0]))
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    assert main(["report", str(out), "--out", str(tmp_path / "r1")]) == 0
    assert "cells done" not in capsys.readouterr().err  # all done: nothing to say
    shutil.rmtree(sweep.cell_dir(out, expand(spec)[1].id))
    assert main(["report", str(out), "--out", str(tmp_path / "r2")]) == 0
    note = f"sweep {out}: 1 of 2 cells done (1 pending, 0 failed): arms may lack seeds or be missing"
    assert note in capsys.readouterr().err and note in (tmp_path / "r2" / "report.md").read_text()


def test_a_users_file_named_cells_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cells").write_text("my notes\n")  # was [Errno 20] after spec.json, spec.toml and the lock were written
    with pytest.raises(ValueError, match=r"cells is not a directory, and a sweep writes its cells there: move it away"):
        run_sweep(validate_spec(ONE_CELL), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["cells"] and (out / "cells").read_text() == "my notes\n"


def test_dry_run_reports_missing_data_like_the_run_without_downloading(tmp_path, capsys, monkeypatch):
    import nvcim.data
    from nvcim.cli import main

    calls = []
    monkeypatch.setattr(nvcim.data.download, "_fetch", lambda url, dest: calls.append(url))
    raw = spec_of(datasets=["cifar10"], methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1],
                  train={**TRAIN, "data_root": str(tmp_path / "data")})
    spec_file = write_json_spec(tmp_path / "spec.json", raw)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nvcim sweep: error: cifar10: put ") and \
        str(tmp_path / "data" / "cifar10") in err[0], err
    assert calls == []  # no download tried
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("damage", ["wrong_types", "truncated", "method_not_a_mapping"])
def test_untrusted_cell_checkpoint_is_retrained_with_a_warning(tmp_path, damage):
    """A reused checkpoint whose config.json is damaged (truncated) or has wrong-typed entries is trained again,
    with a warning naming the cell and the problem (it used to fail the cell with a TypeError, or be deleted and
    retrained silently); --retry-failed of a cell that failed that way runs it too."""
    spec = validate_spec(ONE_CELL)
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    (cid,) = [c.id for c in expand(spec)]
    d = sweep.cell_dir(out, cid)
    good = json.loads((d / sweep.RESULT_FILE).read_text())
    (d / sweep.RESULT_FILE).unlink()  # as if killed after training, before the result
    config = d / "checkpoint" / "config.json"
    rec = json.loads(config.read_text())
    text = {"wrong_types": json.dumps({**rec, "metrics": [1]}), "truncated": config.read_text()[:40],
            "method_not_a_mapping": json.dumps({**rec, "method": "ovf"})}[damage]
    config.write_text(text)
    with pytest.warns(sweep.SweepWarning) as caught:
        s = run_sweep(spec, out, progress=False)
    assert s.exit_code == 0 and s.ok == [cid], s
    (msg,) = _warned(caught, "cannot be reused")
    assert msg.startswith(f"cell {cid}: checkpoint checkpoint cannot be reused (") and "trained again" in msg
    assert {"wrong_types": "metrics=[1]", "truncated": "not valid JSON", "method_not_a_mapping": "method='ovf'"}[damage] \
        in msg
    again = json.loads((d / sweep.RESULT_FILE).read_text())
    assert again["results"][0]["per_run_accuracy"] == good["results"][0]["per_run_accuracy"]  # retrained identically
    # a cell that failed on such a checkpoint earlier: --retry-failed runs it the same way
    (d / sweep.RESULT_FILE).unlink()
    config.write_text(text)
    (d / sweep.FAILED_FILE).write_text(json.dumps({"kind": "sweep_cell_failed", "error": "TypeError: ..."}))
    with pytest.warns(sweep.SweepWarning, match="cannot be reused"):
        s = run_sweep(spec, out, progress=False, retry_failed=True)
    assert s.exit_code == 0 and s.ok == [cid]


def test_untrusted_checkpoint_keeps_files_that_are_not_nvcims(tmp_path):
    spec = validate_spec(ONE_CELL)
    out = tmp_path / "out"
    assert run_sweep(spec, out, progress=False).exit_code == 0
    (cid,) = [c.id for c in expand(spec)]
    d = sweep.cell_dir(out, cid)
    (d / sweep.RESULT_FILE).unlink()
    (d / "checkpoint" / "config.json").write_text("{")
    (d / "checkpoint" / "my-notes.txt").write_text("mine")
    with pytest.warns(sweep.SweepWarning, match="cannot be reused"):
        s = run_sweep(spec, out, progress=False)
    assert (d / "checkpoint" / "my-notes.txt").read_text() == "mine"  # not deleted: the cell fails, naming it
    assert s.exit_code == 1 and s.failed == [cid]
    assert "my-notes.txt" in json.loads((d / sweep.FAILED_FILE).read_text())["error"]


@pytest.mark.parametrize("content", ['{"mine": 1}', "[1, 2]", "not json", '{"name": "x"}'])
def test_force_never_replaces_a_spec_json_that_is_not_nvcims(tmp_path, capsys, content):
    from nvcim.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text(content)
    spec_file = write_json_spec(tmp_path / "spec.json", ONE_CELL)
    for extra in (["--force"], [], ["--force", "--dry-run"]):
        rc = main(["sweep", str(spec_file), "--out", str(out), "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        said = "cannot be parsed" if content == "not json" else "is not an nvcim sweep spec record"  # damaged?
        if "--dry-run" in extra:
            assert rc == 0 and said in err
            continue
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert str(out / "spec.json") in err and said in err and "another --out" in err
    assert (out / "spec.json").read_text() == content and sorted(p.name for p in out.iterdir()) == ["spec.json"]
    with pytest.raises(ValueError, match="not an nvcim sweep spec record|cannot be parsed"):
        sweep.prepare_out_dir(validate_spec(ONE_CELL), out, force=True)
    # nvcim's own spec.json of another spec: --force still replaces it
    sweep.prepare_out_dir(validate_spec(BASE), tmp_path / "own")
    sweep.prepare_out_dir(validate_spec(ONE_CELL), tmp_path / "own", force=True)
    assert json.loads((tmp_path / "own" / "spec.json").read_text())["seeds"] == [0]


def test_the_spec_copy_never_replaces_a_users_file(tmp_path):
    """DIR/spec.toml (the copy of the spec's text) is written only where it is nvcim's: never over a user's file."""
    spec = validate_spec(ONE_CELL)
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.toml").write_text("# my own notes\n")
    with pytest.raises(ValueError, match=r"spec\.toml exists and is not nvcim's copy of this spec") as exc:
        sweep.prepare_out_dir(spec, out, spec_text="name = 'x'\n", spec_suffix=".toml")
    assert len(str(exc.value).splitlines()) == 1
    assert (out / "spec.toml").read_text() == "# my own notes\n" and sorted(p.name for p in out.iterdir()) == ["spec.toml"]
    with pytest.raises(ValueError, match=r"spec\.toml exists and is not nvcim's copy"):  # a run: no lock file left
        run_sweep(spec, out, spec_text="name = 'x'\n", spec_suffix=".toml", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["spec.toml"]
    # the very text (the user ran the spec file kept in its output directory): fine, and the file is not touched
    (out / "spec.toml").write_text("name = 'x'\n")
    sweep.prepare_out_dir(spec, out, spec_text="name = 'x'\n", spec_suffix=".toml")
    assert (out / "spec.toml").read_text() == "name = 'x'\n"
    # ... but it stays the user's: another spec's text does not replace it, though DIR now holds nvcim's spec.json
    with pytest.raises(ValueError, match=r"spec\.toml exists and is not nvcim's copy"):
        sweep.prepare_out_dir(spec, out, spec_text="name = 'y'\n", spec_suffix=".toml")
    # nvcim's own copy (marked by its first line) is replaced by the next spec's
    fresh = tmp_path / "fresh"
    sweep.prepare_out_dir(spec, fresh, spec_text="name = 'x'\n", spec_suffix=".toml")
    assert (fresh / "spec.toml").read_text() == sweep.runner.COPY_HEADER + "name = 'x'\n"
    sweep.prepare_out_dir(spec, fresh, spec_text="name = 'y'\n", spec_suffix=".toml")
    assert (fresh / "spec.toml").read_text() == sweep.runner.COPY_HEADER + "name = 'y'\n"
    # a spec.json of a JSON spec's run does not make the user's spec.toml nvcim's (review finding)
    other = tmp_path / "other"
    sweep.prepare_out_dir(spec, other, spec_text='{"name": "x"}', spec_suffix=".json")
    (other / "spec.toml").write_text("# mine\n")
    with pytest.raises(ValueError, match=r"spec\.toml exists and is not nvcim's copy"):
        sweep.prepare_out_dir(spec, other, spec_text="name = 'x'\n", spec_suffix=".toml")
    assert (other / "spec.toml").read_text() == "# mine\n"


def test_a_spec_replaced_with_force_leaves_no_copy_of_the_old_one(tmp_path):
    """After --force with the spec in another format, nvcim's spec.toml (headed "a copy of the spec this directory's
    cells ran") stayed, contradicting spec.json; a user's spec.yaml beside it stays."""
    out = tmp_path / "out"
    sweep.prepare_out_dir(validate_spec(ONE_CELL), out, spec_text="name = 'x'\n", spec_suffix=".toml")
    (out / "spec.yaml").write_text("# my notes\n")
    sweep.prepare_out_dir(validate_spec(ONE_CELL), out, spec_text='{"name": "x"}', spec_suffix=".json")  # the same
    assert (out / "spec.toml").is_file()  # still this spec's copy
    two = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0, 1], betas=[0.1])
    sweep.prepare_out_dir(validate_spec(two), out, spec_text="name = 'x'\n", spec_suffix=".toml", force=True)
    assert (out / "spec.toml").is_file()  # the same text, another record (say, another nvcim's): the copy stays
    sweep.prepare_out_dir(validate_spec(ONE_CELL), out, spec_text="{}", spec_suffix=".json", force=True)
    assert not (out / "spec.toml").exists() and (out / "spec.yaml").read_text() == "# my notes\n"


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", ".", ".hidden", "", " x", "a\nb"])
def test_registry_refuses_names_that_cannot_be_one_directory(name):
    from nvcim.data.registry import REGISTRY as DATASETS
    from nvcim.methods import METHODS
    from nvcim.models import MODELS
    from nvcim.registry import Registry

    for reg in (MODELS, DATASETS, Registry("thing")):
        with pytest.raises(ValueError) as exc:
            reg.register(name, object())
        assert len(str(exc.value).splitlines()) == 1 and "name must be" in str(exc.value)
        assert name not in reg
    # every built-in name is still a valid one
    from nvcim.registry import check_name

    for reg in (MODELS, DATASETS, METHODS, sweep.BACKENDS):
        for n in reg:
            check_name(reg.kind, n)
    assert {"vgg8", "resnet18", "tiny"} <= set(MODELS) and {"mnist5k", "fashion_mnist", "tiny_imagenet"} <= set(DATASETS)


def test_implausible_results_are_recorded_and_warned_per_cell(tmp_path, capsys):
    """σ = 1e30 gives non-finite logits on every chip (all images wrong: below chance). The cell is a result
    (status ok, result.json written) but one warning line names the cell, σ and the causes, quiet or not."""
    from nvcim.cli import main

    raw = spec_of(methods=["noise_injection"], sigmas=[0.3], seeds=[0], betas=[0.1],
                  eval={"runs": 3, "val_runs": 2, "test_sigmas": [0.3, 1e30]})
    spec = validate_spec(raw)
    (cid,) = [c.id for c in expand(spec)]
    with pytest.warns(sweep.SweepWarning) as caught:
        s = run_sweep(spec, tmp_path / "api", progress=False)
    assert s.exit_code == 0 and s.ok == [cid]
    (msg,) = _warned(caught, "recorded, but check it")
    assert msg.startswith(f"cell {cid}: recorded, but check it: ")
    assert "σ=1e+30: non-finite logits in 3 of 3 chips, mean 0.00% is below chance 10%" in msg
    rec = json.loads((sweep.cell_dir(tmp_path / "api", cid) / sweep.RESULT_FILE).read_text())
    assert rec["results"][1]["nonfinite_runs"] == 3
    spec_file = write_json_spec(tmp_path / "spec.json", raw)
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "recorded, but check it" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"nvcim sweep: warning: cell {cid}: ") and "σ=1e+30" in lines[0]


def test_a_path_like_data_set_name_cannot_take_a_cell_out_of_its_directory():
    spec = validate_spec(ONE_CELL)
    bad = dataclasses.replace(spec, datasets=("npz:../../../../x.npz",))
    with pytest.raises(ValueError, match=r"cannot be a directory under DIR/cells.*'\.\.'"):
        expand(bad)


def test_a_sweep_never_goes_into_a_checkpoint_a_map_or_another_sweeps_cells(tmp_path):
    """DIR that is another kind of nvcim directory, or inside another sweep's cells (its report would read the
    cells twice), is refused in one line before anything is written (review finding)."""
    from nvcim.io.checkpoint import save_checkpoint
    from nvcim.io.conductance import export_conductance_map
    from nvcim.models import create_model

    spec = validate_spec(ONE_CELL)
    ckpt = tmp_path / "ckpt"
    model = create_model("tiny", 10, 1)
    save_checkpoint(ckpt, model, model.nvcim_spec)
    export_conductance_map(ckpt, tmp_path / "map")
    sweep.prepare_out_dir(spec, tmp_path / "sweep1")
    inner = tmp_path / "sweep1" / "cells" / "tiny-w1" / "x"
    inner.mkdir(parents=True)
    for out, said in ((ckpt, "is an nvcim checkpoint"), (tmp_path / "map", "is a conductance map"),
                      (inner, "is inside the cells of the sweep in"), (inner / "new", "is inside the cells")):
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        with pytest.raises(ValueError, match=said) as exc:
            sweep.prepare_out_dir(spec, out)
        assert "\n" not in str(exc.value)
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_a_spec_copy_an_older_nvcim_wrote_is_still_replaced_by_an_edit(tmp_path):
    """Copies written before the marking first line are nvcim's when they read as the recorded spec.json (the name
    aside): a spec edited and run with --force replaces it; a user's own file of that name stays refused."""
    out = tmp_path / "out"
    old_text = json.dumps(ONE_CELL)  # JSON is YAML too
    sweep.prepare_out_dir(validate_spec(ONE_CELL), out, spec_text=old_text, spec_suffix=".yaml")
    (out / "spec.yaml").write_text(old_text)  # as an older nvcim left it: no first line
    edited = {**ONE_CELL, "seeds": [0, 1]}
    sweep.prepare_out_dir(validate_spec(edited), out, force=True, spec_text=json.dumps(edited), spec_suffix=".yaml")
    assert (out / "spec.yaml").read_text() == sweep.runner.COPY_HEADER + json.dumps(edited)
    (out / "spec.yaml").write_text("# my own notes\n")
    with pytest.raises(ValueError, match=r"spec\.yaml exists and is not nvcim's copy"):
        sweep.prepare_out_dir(validate_spec(ONE_CELL), out, force=True, spec_text=old_text, spec_suffix=".yaml")


def test_a_cells_progress_line_shows_its_own_sigma(tmp_path, capsys):
    """With test_sigmas "grid", the cell trained at 0.3 printed "σ=0.2 mean ..." (the grid's first σ): read as its
    result at 0.2 (new user's finding)."""
    spec = validate_spec({"name": "own-sigma", "models": ["tiny"], "datasets": ["mnist5k"],
                          "methods": ["noise_injection"], "sigmas": [0.2, 0.3], "seeds": [0],
                          "train": {"epochs": 1, "limit": 64, "val_runs": 0, "select": "clean"},
                          "eval": {"runs": 2, "test_sigmas": "grid"}, "resources": {"threads_per_cell": 1}})
    assert run_sweep(spec, tmp_path / "o", progress=True).exit_code == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "s0.30/seed0:" in ln and "] ok" in ln)  # its result's line
    assert "σ=0.3 mean" in line, line
    # its other test σ too (a vanilla cell tested at 0.1 and 0.6 showed 0.1 only: a new user's finding)
    assert re.search(r"σ=0\.3 mean [\d.]+%, σ=0\.2 [\d.]+% \(", line), line


def test_a_warning_of_every_cells_model_is_shown_once(tmp_path):
    """A model warned about by apply_variation_ (a matrix outside any layer) printed the warning once per cell, 10
    times in a new user's sweep, between the progress lines."""
    import warnings

    from torch import nn

    from nvcim.models import MODELS, register_model

    class Loose(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(0.03 * __import__("torch").randn(1024, 16))
            self.head = nn.Linear(16, 10)

        def forward(self, x):  # x [B, 1, 32, 32]
            return self.head(x.flatten(1) @ self.W)

    register_model("loose_sweep_test")(lambda num_classes=10, in_channels=1, image_size=32, **_: Loose())
    try:
        spec = validate_spec({"name": "once", "models": ["loose_sweep_test"], "datasets": ["mnist5k"],
                              "methods": ["noise_injection"], "sigmas": [0.2], "seeds": [0, 1, 2],
                              "train": {"epochs": 1, "limit": 64, "val_runs": 0, "select": "clean"},
                              "eval": {"runs": 2}, "resources": {"threads_per_cell": 1}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run_sweep(spec, tmp_path / "o", progress=False).exit_code == 0
    finally:
        MODELS.pop("loose_sweep_test", None)
    loose = [w for w in caught if "outside any layer" in str(w.message)]
    assert len(loose) == 1, [str(w.message) for w in caught]


def test_a_search_with_no_validation_images_fails_before_training_a_candidate(tmp_path):
    """A val_fraction that rounds to 0 images trained the first β candidate in full, then failed with "data is empty:
    need at least one sample" (a review's catch)."""
    spec = validate_spec({"name": "ev", "models": ["tiny"], "datasets": ["mnist5k"], "methods": ["ovf"],
                          "sigmas": [0.2], "seeds": [0], "betas": [0.1, 0.01],
                          "train": {"epochs": 1, "limit": 300, "val_fraction": 0.0001, "val_runs": 2},
                          "eval": {"runs": 2, "val_runs": 2}, "resources": {"threads_per_cell": 1}})
    assert run_sweep(spec, tmp_path / "s", progress=False).exit_code == 1
    (failed,) = (tmp_path / "s").rglob("failed.json")
    assert "the β search has no validation images" in json.loads(failed.read_text())["error"]
    assert not list((tmp_path / "s").rglob("model.safetensors"))  # no candidate trained


@pytest.mark.parametrize("params, device, text", [
    ({"censor": 1.0}, {"preset": "rram4"}, "censors Gaussian training noise"),
    ({"delta_sigma": 1e308}, {}, "σ + N·Δσ = inf"),
])
def test_what_a_method_asks_of_the_device_is_refused_when_the_spec_is_read(params, device, text):
    """OVF with censored noise on a non-Gaussian device passed the spec check and --dry-run, and every such cell
    failed when run; a huge Δσ failed at the first step with "DeviceConfig.sigma=inf", a σ the user never set."""
    raw = {"name": "c", "models": ["tiny"], "datasets": ["mnist5k"], "variants": [{"label": "mine", "method": "ovf", "params": params}],
           "sigmas": [0.2], "seeds": [0], "train": {"epochs": 1}}
    if device:
        raw["device_models"] = ["rram4"]
    with pytest.raises(ValueError, match=re.escape(text)):
        validate_spec(raw)


def test_the_dry_run_says_the_run_would_refuse_a_users_spec_file_in_dir(tmp_path, capsys):
    """A new user's DIR held their own spec.toml: --dry-run listed "12 to run", the run refused."""
    import yaml

    from nvcim.cli import main

    spec = tmp_path / "mine.yaml"
    spec.write_text(yaml.safe_dump(ONE_CELL))
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.yaml").write_text("# my own notes\n")
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "the run would stop here" in err and "spec.yaml exists and is not nvcim's copy" in err
    assert sorted(p.name for p in out.iterdir()) == ["spec.yaml"]


def test_running_cells_say_what_they_do_unless_quiet(tmp_path, capsys, monkeypatch):
    """A sweep printed one line per finished cell: a β search of full-width models ran for hours in silence. Each
    running cell now says it trains (which candidate of its search), how its epochs go and when it tests."""
    import nvcim.train.loop as loop

    monkeypatch.setattr(loop, "LINE_EVERY_S", 0.0)  # within an epoch too
    spec = validate_spec(spec_of(methods=["vanilla", "ovf"], sigmas=[0.3], seeds=[0]))
    run_sweep(spec, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "  tiny-w1/mnist5k/vanilla/seed0: training (vanilla, 1 epoch of 96 images)" in err
    assert "  tiny-w1/mnist5k/ovf/s0.30/seed0 β=0.1 (1 of 2): training (ovf, " in err
    assert "  tiny-w1/mnist5k/ovf/s0.30/seed0 β=0.001 (2 of 2): epoch 1/1: step 3/3, loss " in err
    assert "  tiny-w1/mnist5k/ovf/s0.30/seed0: testing on 3 chips × " in err and " images at σ 0.3\n" in err
    run_sweep(spec, tmp_path / "quiet", progress=False)
    assert "training (" not in capsys.readouterr().err


def test_the_eta_weighs_cells_by_their_kind(tmp_path, capsys, monkeypatch):
    """Cells of one kind cost alike, of another not: after 2 noise-injection cells of 10 s and an OVF cell of
    40 s, the OVF cell left takes 40 s (the ETA, counting trainings, said 20 s); an earlier run's result.json
    times count from the first line of a resumed sweep."""
    from nvcim.sweep import runner
    from nvcim.sweep.backends.registry import BACKENDS, register_backend
    from nvcim.sweep.eta import Eta

    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])

    def fake(cells, out, spec, on_done, say, *, workers, address):
        for c in sorted(cells, key=lambda c: (c.method, c.seed)):  # noise injection first
            wall = 40.0 if c.method == "ovf" else 10.0
            clock[0] += wall
            on_done({"id": c.id, "status": "ok", "error": None, "wall_time_s": wall, "mean": 50.0,
                     "sigma": c.sigma, "beta": None})

    register_backend("eta_kind_test", help="fake")(fake)
    try:
        spec = validate_spec(spec_of(methods=["noise_injection", "ovf"], sigmas=[0.3], seeds=[0, 1], betas=[1e-3]))
        run_sweep(spec, tmp_path / "out", backend="eta_kind_test", progress=True)
    finally:
        BACKENDS.unregister("eta_kind_test")
    third = next(line for line in capsys.readouterr().err.splitlines() if "[3/4]" in line)
    assert third.endswith("ETA 40 s"), third
    # resumed: the finished OVF cell's recorded 40 s weighs the OVF cell left from the start
    cells = {(c.method, c.seed): c for c in expand(spec)}
    for key, wall in ((("noise_injection", 0), 10.0), (("ovf", 0), 40.0)):
        d = sweep.cell_dir(tmp_path / "res", cells[key].id)
        d.mkdir(parents=True)
        (d / sweep.RESULT_FILE).write_text(json.dumps({"cell": {"wall_time_s": wall}}))
    eta = Eta(tmp_path / "res", [cells["noise_injection", 1], cells["ovf", 1]],
              [cells["noise_injection", 0], cells["ovf", 0]])
    assert eta.seconds(5.0) is None  # nothing of this run finished yet
    eta.finished({"id": cells["noise_injection", 1].id, "status": "ok", "wall_time_s": 10.0})
    assert eta.seconds(10.0) == pytest.approx(40.0)
    eta.finished({"id": cells["ovf", 1].id, "status": "ok", "wall_time_s": 40.0})
    assert eta.seconds(50.0) is None  # none left
    # a resumed β search with 1 of its 2 candidates scored counts one training, not two
    search = validate_spec(spec_of(methods=["ovf"], sigmas=[0.3], seeds=[0, 1], betas=[0.1, 1e-3]))
    s0, s1 = expand(search)
    scored = sweep.cell_dir(tmp_path / "srch", s1.id) / "beta" / sweep.fmt_beta(0.1)
    scored.mkdir(parents=True)
    (scored / sweep.SCORE_FILE).write_text(json.dumps({"beta": 0.1, "val_mean": 50.0, "status": "ok"}))
    half = Eta(tmp_path / "srch", [s0, s1], [])
    half.finished({"id": s0.id, "status": "ok", "wall_time_s": 20.0})  # 10 s a training
    assert half.seconds(20.0) == pytest.approx(10.0)
    # ... and when the resumed cell finishes first, the run's pace counts only its share of it (the ETA said 4.6×
    # too little after a resume: a sweep review, session 34): 10 s for its one training left, so s0 takes 20 s
    first = Eta(tmp_path / "srch", [s0, s1], [])
    first.finished({"id": s1.id, "status": "ok", "wall_time_s": 10.0})
    assert first.seconds(10.0) == pytest.approx(20.0)
    # a training resumed from its state after 3 of 12 epochs: three quarters of a training left
    st = sweep.cell_dir(tmp_path / "srch", s0.id) / "beta" / sweep.fmt_beta(0.1) / "train_state"
    st.mkdir(parents=True)
    (st / "state.json").write_text(json.dumps({"epoch": 3, "epochs": 12}))
    from nvcim.sweep.eta import done_before
    assert done_before(tmp_path / "srch", s0) == pytest.approx(0.25) and done_before(tmp_path / "srch", s1) == 1
    # a first cell that failed: no ETA until a cell is timed (its 300 s against weights of 1 said "ETA 5 s": review)
    fresh = Eta(tmp_path / "none", list(cells.values()), [])
    fresh.finished({"id": cells["ovf", 0].id, "status": "failed", "wall_time_s": 300.0})
    assert fresh.seconds(300.0) is None
    fresh.finished({"id": cells["ovf", 1].id, "status": "ok", "wall_time_s": 300.0})
    assert fresh.seconds(600.0) == pytest.approx(600.0 * 600.0 / 600.0)  # 2 cells of 300 s left, 600 s done


def test_the_eta_weighs_cells_by_their_trainings(tmp_path, capsys, monkeypatch):
    """A cell that searches β over 2 values trains 2 models: after a 1-training cell took 10 s, the β cell left
    takes ~20 s, not 10 (the ETA said "6 s" with 57 s to go)."""
    from nvcim.sweep import runner
    from nvcim.sweep.backends.registry import BACKENDS, register_backend

    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])

    def fake(cells, out, spec, on_done, say, *, workers, address):
        for c in sorted(cells, key=lambda c: bool(c.betas)):  # the 1-training cell first
            clock[0] += 10.0 * max(1, len(c.betas or ()))
            on_done({"id": c.id, "status": "ok", "error": None, "wall_time_s": 1.0, "mean": 50.0,
                     "sigma": c.sigma, "beta": None})

    register_backend("eta_test", help="fake")(fake)
    try:
        spec = validate_spec(spec_of(methods=["noise_injection", "ovf"], sigmas=[0.3], seeds=[0], betas=[0.1, 1e-3]))
        run_sweep(spec, tmp_path / "out", backend="eta_test", progress=True)
    finally:
        BACKENDS.unregister("eta_test")
    first = next(line for line in capsys.readouterr().err.splitlines() if "[1/2]" in line)
    assert first.endswith("ETA 20 s"), first
