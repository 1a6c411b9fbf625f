"""One rule for flags against the fields a device model sets (nvcim.cli.device_flags), in `nvcim eval`
(single and the --device-models matrix) and `nvcim train`: a field the model sets is used unless a flag asks for
it; a flag asking for another value is refused (one line, exit 2, before any work); equal values are fine.
And the printed eval header and train summary name the device model."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from nvcim.evaluate import default_sigma_grid
from nvcim.evaluate.files import read_result_file

SMOKE = ["--preset", "smoke", "--limit", "64", "--quiet", "--num-threads", "1", "--val-runs", "2"]
EVAL = ["--runs", "2", "--limit", "64", "--no-progress"]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    from nvcim.cli import main

    d = tmp_path_factory.mktemp("flags")
    assert main(["train", *SMOKE, "--method", "vanilla", "--sigma", "0.2", "--out", str(d / "ck")]) == 0
    return d / "ck"


@pytest.fixture()
def files(tmp_path):
    out = {}
    for name, text in (("r4s", 'preset = "rram4"\nsigma = 0.05\n'), ("s0", "sigma = 0.0\n"),
                       ("s1", "sigma = 0.1\n"), ("qt", "quantize = true\n")):
        (tmp_path / f"{name}.toml").write_text(text)
        out[name] = str(tmp_path / f"{name}.toml")
    return out


def _refused(rc, out, err, *words):
    assert rc == 2 and not out, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines


# ---- 1. a device model file's sigma ---------------------------------------------------------------------------
def test_eval_uses_the_files_sigma_and_says_so(ck, files, tmp_path, capsys):
    rc, out, err = run_cli(["eval", str(ck), *EVAL, "--device-model", files["r4s"], "--out", str(tmp_path / "a.json")],
                           capsys)
    assert rc == 0, err
    rec = read_result_file(tmp_path / "a.json")
    assert rec.device_config["sigma"] == 0.05 and [r["sigma"] for r in rec.results] == [0.05]
    header = out.splitlines()[0]
    assert f"device {files['r4s']} (weight_band S=4) at its σ_d 0.05" in header and "training σ 0.2" in header
    rc, out, err = run_cli(["eval", str(ck), *EVAL, "--device-model", files["s0"], "--out", str(tmp_path / "b.json")],
                           capsys)
    assert rc == 0, err
    assert [r["sigma"] for r in read_result_file(tmp_path / "b.json").results] == [0.0]


def test_eval_sigma_flags_against_the_files_sigma(ck, files, tmp_path, capsys):
    _refused(*run_cli(["eval", str(ck), *EVAL, "--device-model", files["r4s"], "--sigma", "0.3",
                       "--out", str(tmp_path / "x.json")], capsys),
             f"{files['r4s']} sets sigma = 0.05 but --sigma 0.3 asks for another: drop one")
    assert not (tmp_path / "x.json").exists()
    _refused(*run_cli(["eval", str(ck), *EVAL, "--device-model", files["r4s"], "--sigmas", "0,0.05"], capsys),
             "sets sigma = 0.05 but --sigmas 0,0.05")
    rc, _, err = run_cli(["eval", str(ck), *EVAL, "--device-model", files["r4s"], "--sigma", "0.05",
                          "--out", str(tmp_path / "eq.json")], capsys)
    assert rc == 0, err  # the same value: fine
    assert [r["sigma"] for r in read_result_file(tmp_path / "eq.json").results] == [0.05]
    rc, _, err = run_cli(["eval", str(ck), *EVAL, "--device-model", files["s1"], "--curve",
                          "--out", str(tmp_path / "c.json")], capsys)
    assert rc == 0, err  # --curve: the grid around the file's σ
    assert [r["sigma"] for r in read_result_file(tmp_path / "c.json").results] == default_sigma_grid(0.1)


def test_matrix_sigma_against_the_files_sigma(ck, files, tmp_path, capsys):
    csv_file = tmp_path / "m.csv"
    _refused(*run_cli(["eval", str(ck), "--device-models", f"gaussian,{files['r4s']}", "--sigma", "0.3", *EVAL,
                       "--csv", str(csv_file)], capsys),
             f"{files['r4s']} sets sigma = 0.05 but --sigma 0.3 asks for another: drop one")
    assert not csv_file.exists()
    rc, out, err = run_cli(["eval", str(ck), "--device-models", f"gaussian,{files['r4s']}", *EVAL,
                            "--out", str(tmp_path / "m.json")], capsys)
    assert rc == 0, err
    rec = read_result_file(tmp_path / "m.json")
    assert [rec.result(0, j).sigma for j in range(2)] == [0.2, 0.05]
    assert f"{files['r4s']}: σ_d = 0.05, set by the file" in out


def test_train_sigma_against_the_files_sigma(files, tmp_path, capsys):
    _refused(*run_cli(["train", *SMOKE, "--device-model", files["r4s"], "--sigma", "0.3",
                       "--out", str(tmp_path / "t")], capsys),
             f"{files['r4s']} sets sigma = 0.05 but --sigma 0.3 asks for another: drop one")
    (tmp_path / "cfg.toml").write_text("sigma = 0.3\n")
    _refused(*run_cli(["train", *SMOKE, "--config", str(tmp_path / "cfg.toml"), "--device-model", files["r4s"]],
                      capsys), "sets sigma = 0.05 but config file", "(sigma = 0.3)")
    assert not (tmp_path / "t").exists()


# ---- 2. other flags against the fields a device model sets ----------------------------------------------------
def test_eval_no_quantize_against_the_files_quantize(ck, files, capsys):
    _refused(*run_cli(["eval", str(ck), *EVAL, "--device-model", files["qt"], "--no-quantize"], capsys),
             f"{files['qt']} sets quantize = true but --no-quantize asks for another: drop one")
    _refused(*run_cli(["eval", str(ck), *EVAL, "--device-models", f"gaussian,{files['qt']}", "--no-quantize"], capsys),
             "sets quantize = true but --no-quantize")
    (ck.parent / "adc.toml").write_text("sigma = 0.1\nadc_bits = 8\n")  # was DeviceConfig's "use quantize=True"
    _refused(*run_cli(["eval", str(ck), *EVAL, "--device-model", str(ck.parent / "adc.toml"), "--no-quantize"], capsys),
             f"--no-quantize: {ck.parent / 'adc.toml'} simulates ADCs / DACs, which read quantized device levels: "
             "drop --no-quantize")

    import json
    import shutil

    behind = ck.parent / "adc_ck"  # a checkpoint trained behind ADCs: its own device, --no-quantize
    shutil.copytree(ck, behind, dirs_exist_ok=True)
    meta = json.loads((behind / "config.json").read_text())
    meta["device"] = {**meta["device"], "adc_bits": 8}
    (behind / "config.json").write_text(json.dumps(meta))
    _refused(*run_cli(["eval", str(behind), *EVAL, "--no-quantize"], capsys),
             "was trained behind ADCs / DACs (adc_bits=8, input_bits=None)", "drop --no-quantize")
    rc, _, err = run_cli(["eval", str(behind), *EVAL, "--no-quantize", "--device-model", "gaussian"], capsys)
    assert rc == 0, err  # the fix the message names works: a device model without ADCs replaces its device


@pytest.mark.parametrize("flags, words", [
    (["--device-model", "rram4", "--variation", "gaussian"],
     "device model rram4 sets variation = weight_band but --variation gaussian asks for another: drop one"),
    (["--device-model", "rram4", "--variation-option", "S=2"], "rram4 sets variation_options = {S = 4} but "
                                                               "--variation-option S=2"),
    (["--device-model", "QT", "--no-quantize"], "sets quantize = true but --no-quantize"),
    (["--device-model", "BITS", "--weight-bits", "4"], "sets weight_bits = 6 but --weight-bits 4"),
    (["--device-model", "BITS", "--device-bits", "2"], "sets device_bits = 3 but --device-bits 2"),
    (["--device-model", "BITS", "--sampling", "fast"], "sets sampling = device but --sampling fast"),
])
def test_train_flags_against_the_device_models_fields(files, tmp_path, capsys, flags, words):
    (tmp_path / "bits.toml").write_text('weight_bits = 6\ndevice_bits = 3\nsampling = "device"\n')
    flags = [{"QT": files["qt"], "BITS": str(tmp_path / "bits.toml")}.get(f, f) for f in flags]
    _refused(*run_cli(["train", *SMOKE, "--method", "noise_injection", *flags, "--out", str(tmp_path / "t")], capsys),
             words)


def test_train_equal_flags_are_fine(files):
    import argparse

    from nvcim.cli.train import config_from_args

    ns = argparse.Namespace(preset="smoke", device_model="rram4", variation="weight_band", sigma=0.2, quantize=True)
    cfg = config_from_args(ns).device_config
    assert cfg.variation == "weight_band" and dict(cfg.variation_options) == {"S": 4.0} and cfg.sigma == 0.2
    cfg = config_from_args(argparse.Namespace(preset="smoke", device_model=files["r4s"], sigma=0.05)).device_config
    assert cfg.sigma == 0.05



@pytest.mark.parametrize("flags", [{}, {"variation": "gaussian"}, {"sampling": "device"},
                                   {"variation": "level_dependent", "variation_option": [("multipliers", [1, 1, 1, 1])]},
                                   {"variation": "gaussian", "device_bits": 4}])
def test_train_device_flags_keep_the_default_sigma(flags):
    # --variation / --sampling / --variation-option built the device from DeviceConfig's own default (σ 0.1), where
    # `nvcim train --help` promises 0.3 (found by a new user's trial)
    import argparse

    from nvcim.cli.train import config_from_args
    from nvcim.train import DEFAULTS, TrainConfig

    cfg = config_from_args(argparse.Namespace(preset="smoke", **flags))
    assert cfg.sigma == DEFAULTS["sigma"] == 0.3
    assert config_from_args(argparse.Namespace(preset="smoke", sigma=0.2, **flags)).sigma == 0.2
    assert TrainConfig(device_config={"variation": "gaussian"}).sigma == 0.3  # a mapping without σ, from Python

# ---- 3. the printed output names the device model ---------------------------------------------------------------
def test_eval_header_names_the_device(ck, capsys):
    rc, out, err = run_cli(["eval", str(ck), *EVAL, "--device-model", "stuck-chen2015"], capsys)
    assert rc == 0, err
    assert "device stuck-chen2015 (stuck_at=[0.0175, 0.0904])" in out.splitlines()[0]
    rc, out, err = run_cli(["eval", str(ck), *EVAL], capsys)
    assert rc == 0, err
    assert "device gaussian" in out.splitlines()[0]


def test_train_summary_names_the_device_model(files, tmp_path, capsys):
    rc, out, err = run_cli(["train", *SMOKE, "--method", "noise_injection", "--device-model", files["r4s"],
                            "--out", str(tmp_path / "t")], capsys)
    assert rc == 0, err
    row = [line for line in out.splitlines() if line.startswith("device model")]
    assert row and f"{files['r4s']} (weight_band S=4)" in row[0], out
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["device"]["sigma"] == 0.05 and config["device"]["variation"] == "weight_band"


def test_a_train_only_flag_given_to_eval_is_named_by_eval(ck, capsys):
    # `nvcim eval CK --weight-bits 4` said "nvcim: error: unrecognized arguments" (the README listed the flag)
    rc, out, err = run_cli(["eval", str(ck), "--weight-bits", "4"], capsys)
    assert rc == 2 and out == "" and err.strip().splitlines() == [
        "nvcim eval: error: unrecognized arguments: --weight-bits 4 (see nvcim eval --help)"]
