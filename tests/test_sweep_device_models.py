"""The device-model axis of sweep specs (`device_models`): cells per device model, training and test under it,
result.json's cell.device_model, resume, the report's arms per device model, and spec errors."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from nvcim.cli import main
from nvcim.core.config import DeviceConfig
from nvcim.report import scan_results, write_report
from nvcim.sweep import RESULT_FILE, expand, load_spec, run_sweep, validate_spec

TINY = {
    "name": "dm",
    "models": ["tiny"],
    "datasets": ["mnist5k"],
    "methods": ["noise_injection"],
    "sigmas": [0.3],
    "seeds": [0],
    "train": {"limit": 64, "epochs": 1, "val_runs": 2, "batch_size": 32, "device": "cpu"},
    "eval": {"runs": 2},
    "resources": {"threads_per_cell": 1},
}


def spec_of(**changes) -> dict:
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return raw


def results(out: Path) -> dict[str, dict]:
    return {(d := json.loads(f.read_text()))["cell"]["id"]: d for f in sorted((out / "cells").rglob(RESULT_FILE))}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm")
    spec = validate_spec(spec_of(device_models=["gaussian", "rram4"]))
    summary = run_sweep(spec, out, progress=False)
    assert summary.exit_code == 0
    return spec, out, summary


def test_every_cell_once_per_device_model_trained_and_tested_under_it(swept):
    spec, out, summary = swept
    assert len(expand(validate_spec(TINY))) == 1 and len(summary.ok) == 2
    res = results(out)
    assert sorted(res) == ["tiny-w1/mnist5k/gaussian/noise_injection/s0.30/seed0",
                           "tiny-w1/mnist5k/rram4/noise_injection/s0.30/seed0"]
    rram4 = DeviceConfig.preset("rram4")
    for cid, d in res.items():
        name = cid.split("/")[2]
        assert d["cell"]["device_model"] == name
        variation = "gaussian" if name == "gaussian" else rram4.variation
        options = {} if name == "gaussian" else json.loads(json.dumps(rram4.variation_options))
        assert (d["device_config"]["variation"], d["device_config"]["variation_options"]) == (variation, options)
        assert d["device_config"]["sigma"] == 0.3 == d["results"][0]["sigma"]
        trained = d["checkpoint_config"]["device"]  # the training draws used the same device
        assert (trained["variation"], trained["sigma"]) == (variation, 0.3)
    a, b = (r["results"][0]["per_run_accuracy"] for r in res.values())
    assert a != b  # different devices, different chips
    assert json.loads((out / "spec.json").read_text())["device_models"]["rram4"]["variation"] == rram4.variation


def test_rerun_runs_nothing(swept):
    spec, out, _ = swept
    before = {f: f.stat().st_mtime_ns for f in (out / "cells").rglob(RESULT_FILE)}
    again = run_sweep(spec, out, progress=False)
    assert again.exit_code == 0 and again.ok == [] and again.done_before == 2
    assert {f: f.stat().st_mtime_ns for f in (out / "cells").rglob(RESULT_FILE)} == before


def test_report_shows_both_device_models(swept, tmp_path):
    _, out, _ = swept
    rs = scan_results(out)
    assert sorted(r["device_model"] for r in rs.records) == ["gaussian", "rram4"]
    assert sorted(r["label"] for r in rs.records) == ["noise injection [gaussian]", "noise injection [rram4]"]
    write_report(rs, tmp_path / "report")
    rows = list(csv.DictReader((tmp_path / "report" / "summary.csv").open()))
    assert sorted(r["label"] for r in rows) == ["noise injection [gaussian]", "noise injection [rram4]"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "noise injection [gaussian]" in md and "noise injection [rram4]" in md


def test_without_the_axis_nothing_changes():
    spec = validate_spec(spec_of(methods=["vanilla", "noise_injection"]))
    assert "device_models" not in spec.to_dict()
    cells = expand(spec)
    assert [c.id for c in cells] == ["tiny-w1/mnist5k/vanilla/seed0", "tiny-w1/mnist5k/noise_injection/s0.30/seed0"]
    assert all("device_model" not in c.to_dict() and "device" not in c.to_dict() for c in cells)


def test_vanilla_is_trained_without_noise_and_tested_under_each_device_model():
    cells = expand(validate_spec(spec_of(methods=["vanilla"], device_models=["gaussian", "rram4"])))
    assert [c.id for c in cells] == ["tiny-w1/mnist5k/gaussian/vanilla/seed0", "tiny-w1/mnist5k/rram4/vanilla/seed0"]
    assert cells[0].train == cells[1].train and cells[0].train["device_config"]["variation"] == "gaussian"
    assert cells[1].test_device().variation == DeviceConfig.preset("rram4").variation


def test_device_model_file_is_relative_to_the_spec_and_train_bits_fill_it(tmp_path, monkeypatch):
    (tmp_path / "chips").mkdir()
    (tmp_path / "chips" / "chip.toml").write_text('preset = "rram4"\nstuck_at = [0.01, 0.02]\n')
    raw = spec_of(device_models=["chips/chip.toml"])
    raw["train"] = {**raw["train"], "device_bits": 4}
    (tmp_path / "spec.json").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path / "chips")  # not the spec's directory
    (cell,) = expand(load_spec(tmp_path / "spec.json"))
    assert cell.id == "tiny-w1/mnist5k/chip/noise_injection/s0.30/seed0" and cell.device_model == "chips/chip.toml"
    dev = cell.train_config().device_config
    assert (dev.variation, list(dev.stuck_at), dev.device_bits, dev.sigma) == ("weight_band", [0.01, 0.02], 4, 0.3)


@pytest.mark.parametrize("models, needle", [
    (["gaussian", "nope"], "'nope'"),
    (["missing.toml"], "'missing.toml'"),
    ([], "device_models"),
    (["rram4", "rram4"], "duplicates"),
    (["rram4", "sub/rram4.toml"], "same directory"),
])
def test_bad_device_model_is_a_one_line_spec_error(tmp_path, models, needle):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rram4.toml").write_text('preset = "rram4"\n')
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec_of(device_models=models)))
    with pytest.raises(ValueError) as exc:
        load_spec(spec_file)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert str(spec_file) in str(exc.value)  # every spec error names its file


def test_device_model_setting_sigma_is_refused_and_cli_exits_2(tmp_path, capsys):
    (tmp_path / "chip.toml").write_text("sigma = 0.1\n")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec_of(device_models=["chip.toml"])))
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'chip.toml'" in err and "sigma" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_adc_calibration_train_calibrates_each_chip_on_training_images(tmp_path):
    """eval.adc_calibration = "train": the test chips of a calibrated-clip device calibrate on the train split
    (the API's adc_calibration=splits.train), recorded in result.json; refused without such a device."""
    from nvcim.cli.eval_data import load_for_eval
    from nvcim.evaluate.montecarlo import monte_carlo_evaluate

    (tmp_path / "adc.toml").write_text('adc_bits = 4\ntile_rows = 32\nadc_clip = "calibrated"\n'
                                       'adc_calibration_images = 16\n')
    raw = spec_of(models=["vgg8"], width=0.125, methods=["vanilla"], device_models=["adc.toml"],
                  eval={"runs": 2, "adc_calibration": "train"})
    (tmp_path / "spec.json").write_text(json.dumps(raw))
    spec = load_spec(tmp_path / "spec.json")
    assert run_sweep(spec, tmp_path / "out", progress=False).exit_code == 0
    (d,) = results(tmp_path / "out").values()
    assert d["adc_calibration"] == {"split": "train", "images": 16}
    loaded = load_for_eval(tmp_path / "out" / d["checkpoint"], dataset=None, data_root=None, split="test", limit=None,
                           no_quantize=False)
    cfg = DeviceConfig.from_dict(d["device_config"])
    r = d["results"][0]
    want = monte_carlo_evaluate(loaded.model, loaded.split, cfg, runs=2, seed=r["seed"], baselines=False,
                                adc_calibration=loaded.splits.train)
    assert r["per_run_correct"] == want.per_run_correct
    other = monte_carlo_evaluate(loaded.model, loaded.split, cfg, runs=2, seed=r["seed"], baselines=False)
    assert other.per_run_correct != want.per_run_correct  # the source matters here: the test can fail
    rs = scan_results(tmp_path / "out")  # an arm of its own in reports
    assert [r["label"] for r in rs.records] == ["vanilla [adc.toml] (ADC ranges from train images)"]
    # a cell whose device calibrates nothing keeps its definition (finished cells of a gaussian column stay valid)
    vgg = {"models": ["vgg8"], "width": 0.125}  # (tiny's grouped convolution cannot run the ADC: refused up front)
    both = expand(validate_spec(spec_of(**vgg, device_models=["gaussian", str(tmp_path / "adc.toml")],
                                        eval={"runs": 2, "adc_calibration": "train"})))
    assert [("adc_calibration" in c.eval) for c in both] == [False, True]
    plain = expand(validate_spec(spec_of(**vgg, device_models=["gaussian"], eval={"runs": 2})))
    assert both[0] == plain[0]
    with pytest.raises(ValueError, match="no cell's device has a calibrated ADC clip"):
        expand(validate_spec(spec_of(eval={"runs": 2, "adc_calibration": "train"})))
    with pytest.raises(ValueError, match="eval.adc_calibration"):
        validate_spec(spec_of(eval={"runs": 2, "adc_calibration": "test"}))


def test_an_unknown_name_is_said_as_written_and_a_file_is_read_beside_the_spec(tmp_path):
    """'rram44' in a spec under sw/ was reported as the file 'sw/rram44' (a new user's finding)."""
    spec = tmp_path / "sw" / "s.json"
    spec.parent.mkdir()
    spec.write_text(json.dumps(spec_of(device_models=["rram44"])))
    with pytest.raises(ValueError, match=r"'device_models': 'rram44': unknown device model 'rram44': use one of"):
        load_spec(spec)
    (spec.parent / "mine.toml").write_text('preset = "rram4"\n')
    spec.write_text(json.dumps(spec_of(device_models=["mine.toml"])))
    assert "mine.toml" in load_spec(spec).device_models
