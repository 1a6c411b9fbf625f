"""Device models everywhere (issue #18 Must-deliver 2-3): by name or file in nvcim train and nvcim eval, the
list, and the checkpoints × device models matrix (JSON, heat-map PNG, CSV, report section)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from helpers import run_cli, run_cli_err
from nvcim.cli import main
from nvcim.evaluate.files import DeviceMatrixFile, read_result_file
from nvcim.io.device_models import device_model, list_device_models

SMOKE = ["--preset", "smoke", "--limit", "64", "--quiet", "--num-threads", "1", "--val-runs", "2"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("dm")
    out = []
    for name, extra in (("gni", ["--method", "noise_injection", "--device-model", "rram4", "--sigma", "0.2"]),
                        ("plain", ["--method", "vanilla"])):
        assert main(["train", *SMOKE, *extra, "--out", str(d / name)]) == 0
        out.append(d / name)
    return out


def test_train_records_the_device_model(ckpts):
    config = json.loads((ckpts[0] / "config.json").read_text())
    assert config["device"]["variation"] == "weight_band" and config["device"]["variation_options"] == {"S": 4.0}
    assert config["device"]["sigma"] == 0.2


def test_device_model_files_and_names(tmp_path):
    f = tmp_path / "chip.toml"
    f.write_text('preset = "fefet6-level"\nstuck_at = [0.01, 0.02]\nread_sigma = 0.01\n')
    cfg = device_model(str(f), defaults={"sigma": 0.3, "weight_bits": 6, "device_bits": 2})
    assert cfg.variation == "level_dependent" and cfg.stuck_at == (0.01, 0.02) and cfg.sigma == 0.3
    assert cfg.weight_bits == 6
    assert {n for n, _ in list_device_models()} >= {"gaussian", "rram1", "fefet2", "rram4", "fefet6", "rram4-level"}
    with pytest.raises(ValueError, match="unknown device model 'rram5'"):
        device_model("rram5")
    f.write_text("sigma = -1\n")
    with pytest.raises(ValueError, match=r"chip.toml: DeviceConfig.sigma=-1"):
        device_model(str(f))


def test_a_preset_with_another_variation_is_refused_by_name(tmp_path, capsys):
    """A preset is a variation: `preset = "rram4"` with `variation = "gaussian"` used to fail with "variation
    'gaussian' has no option(s) ['S']", an option the user never wrote; now one line names the clash."""
    import nvcim

    with pytest.raises(ValueError, match=r"preset 'rram4' is variation 'weight_band' \(S=4.0\), which "
                                         r"variation='gaussian' would replace: drop the preset or the variation"):
        nvcim.DeviceConfig.preset("rram4", variation="gaussian")
    assert nvcim.DeviceConfig.preset("rram4", variation="weight_band", sigma=0.2).variation_options == {"S": 4.0}
    f = tmp_path / "chip.toml"
    f.write_text('preset = "fefet2-level"\nvariation = "weight_band"\n')
    with pytest.raises(ValueError, match=r"chip.toml: preset 'fefet2-level' is variation 'level_dependent'"):
        device_model(str(f))
    f.write_text('preset = "rram4"\nvariation = "weight_band"\nvariation_options = {S = 8}\n')  # same kind: fine
    assert device_model(str(f)).variation_options == {"S": 8}
    f.write_text('preset = "rram4"\nvariation = "gaussian"\n')
    assert main(["eval", "nowhere", "--device-model", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop the preset or the variation" in err


def test_eval_under_another_device_model(ckpts, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", str(ckpts[0]), "--device-model", "fefet6-level", "--runs", "3", "--out", str(out)]) == 0
    rec = read_result_file(out)
    assert rec.device_config["variation"] == "level_dependent" and rec.device_config["sigma"] == 0.2
    assert main(["eval", "--list-device-models"]) == 0 and "stuck-chen2015" in capsys.readouterr().out


def test_matrix_of_checkpoints_and_device_models(ckpts, tmp_path, capsys):
    out, table = tmp_path / "m.json", tmp_path / "m.csv"
    rc = main(["eval", *map(str, ckpts), "--device-models", "gaussian,rram4,stuck-chen2015", "--sigma", "0.2",
               "--runs", "4", "--seed", "3", "--out", str(out), "--csv", str(table)])
    assert rc == 0
    rec = read_result_file(out)
    assert isinstance(rec, DeviceMatrixFile) and rec.device_models == ["gaussian", "rram4", "stuck-chen2015"]
    assert len(rec.cells) == 2 and all(len(r) == 3 for r in rec.cells)
    assert rec.cells[0][2]["device_config"]["stuck_at"] == [0.0175, 0.0904]
    assert [r["method"]["name"] for r in rec.rows] == ["noise_injection", "vanilla"]  # what trained each row
    assert rec.rows[0]["train_sigma"] == 0.2 and rec.rows[1]["seed"] == rec.rows[0]["seed"]
    assert rec.rows[0]["model"]["name"] == rec.rows[1]["model"]["name"]  # arms never pool other models
    assert "train_device" in rec.rows[0] and rec.rows[0]["recipe"]["epochs"] == 1  # nor other training devices
    assert all(rec.result(i, j).sigma == 0.2 and rec.result(i, j).seed == 3 for i in range(2) for j in range(3))
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 6 and {r["device_model"] for r in rows} == {"gaussian", "rram4", "stuck-chen2015"}
    # the same chips in every column: the Gaussian column equals a plain evaluation with that seed
    single = tmp_path / "s.json"
    assert main(["eval", str(ckpts[1]), "--sigma", "0.2", "--runs", "4", "--seed", "3", "--out", str(single)]) == 0
    assert read_result_file(single).mc_results()[0].per_run_correct == rec.result(1, 0).per_run_correct
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Device-model matrix" in md and "stuck-chen2015" in md
    assert (tmp_path / "rep" / "device_matrix_paired.csv").read_text().startswith("file,device_model")
    assert (tmp_path / "rep" / "device_matrix_arms.csv").read_text().startswith("file,device_model")


def test_an_adc_column_and_the_gaussian_column_score_the_same_chips():
    """ADC columns draw each device's level; the Gaussian column drew one value per weight (same distribution,
    other random numbers), so its chips were not the ADC column's (a user's trial: per chip [73.4, 69.0, 78.6]
    against [77.8, 74.0, 66.2]). Drawn alike, a 16-bit ADC column is the Gaussian one to within its converters."""
    import torch
    from torch import nn

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate
    from nvcim.evaluate.matrix import device_matrix

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    devices = {"gaussian": DeviceConfig(sigma=0.3), "adc16": DeviceConfig(sigma=0.3, adc_bits=16, input_bits=16)}
    rec = device_matrix([("m", "d", model, (x, y))], list(devices), lambda i, name: devices[name], runs=6, seed=3)
    gauss, adc = (rec.result(0, j).per_run_accuracy for j in range(2))
    assert rec.cells[0][0]["device_config"]["sampling"] == "device"  # what it was drawn with, recorded
    assert max(abs(a - b) for a, b in zip(gauss, adc)) <= 1.0 and max(gauss) - min(gauss) > 3.0, (gauss, adc)
    per_device = monte_carlo_evaluate(model, (x, y), devices["gaussian"].replace(sampling="device"), runs=6, seed=3)
    assert per_device.per_run_accuracy == gauss
    alone = device_matrix([("m", "d", model, (x, y))], ["gaussian"], lambda i, name: devices[name], runs=6, seed=3)
    assert alone.cells[0][0]["device_config"].get("sampling", "auto") == "auto"  # no ADC column: the fast path


def test_matrix_bad_input_is_one_line(ckpts, capsys):
    assert main(["eval", str(ckpts[0]), "--device-models", "gaussian,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown device model 'nope'" in err[0]
    # an empty list (an unset shell variable) ran the Gaussian column alone, as if nothing were wrong
    assert main(["eval", str(ckpts[0]), "--device-models", ""]) == 2
    assert "--device-models '' lists no device model" in capsys.readouterr().err
    assert main(["eval", str(ckpts[0]), "--device-models", "gaussian", "--curve"]) == 2
    capsys.readouterr()
    # a noise-injection checkpoint trained at σ 0.2 beside a vanilla one trained at 0.3 (a sweep's vanilla: 0), each
    # at its own σ: a row of other variation read as the better model; one σ for the matrix, or no matrix
    assert main(["eval", *map(str, ckpts), "--device-models", "gaussian,rram4", "--runs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained at different σ_d" in err[0] and "give --sigma S" in err[0]


def test_cli_ci_of_two_chips_stays_in_0_100_with_a_note(ckpts, tmp_path, capsys):
    """Two chips: t = 12.7, so the interval of the mean would reach below 0 %; its bounds are accuracies, and a note
    says that the interval rests on few chips. (A trained checkpoint: an untrained one predicts one class on every
    chip, so there is no spread.)"""
    ckpt = ckpts[1]
    out, table = tmp_path / "r.json", tmp_path / "r.csv"
    rc, stdout, err = run_cli(["eval", str(ckpt), "--runs", "2", "--out", str(out), "--csv", str(table)], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())["results"][0]
    acc = r["per_run_accuracy"]
    half = 12.706204736174704 * abs(acc[0] - acc[1]) / math.sqrt(2) / math.sqrt(2)  # t_{0.975, 1} * std / √2
    assert r["mean"] - half < 0  # the unclipped interval leaves [0, 100]: the case this test is about
    lo, hi = r["ci95"]
    assert 0.0 <= lo <= r["mean"] <= hi <= 100.0 and lo == 0.0
    row = next(csv.DictReader(table.open()))
    assert float(row["ci95_lo"]) == 0.0 and 0.0 <= float(row["ci95_hi"]) <= 100.0
    assert "[-" not in stdout  # the printed table too
    notes = [line for line in err.splitlines() if "rests on only 2 chips" in line]
    assert len(notes) == 1 and "--runs 10" in notes[0], err
    rc, _, err = run_cli(["eval", str(ckpt), "--runs", "10"], capsys)
    assert rc == 0 and "rests on only" not in err


def test_matrix_refuses_a_checkpoint_given_twice_before_any_work(ckpts, tmp_path, capsys, monkeypatch):
    import nvcim.cli.eval_matrix

    def no_loading(*a, **k):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(nvcim.cli.eval_matrix, "load_for_eval", no_loading)
    link = tmp_path / "link"
    link.symlink_to(ckpts[0], target_is_directory=True)
    again = ckpts[0].parent / ".." / ckpts[0].parent.name / ckpts[0].name
    for argv in ([str(ckpts[0]), str(ckpts[1]), str(ckpts[0]), "--device-models", "gaussian,rram4"],
                 [str(ckpts[0]), str(again)], [str(link), str(ckpts[1]), str(ckpts[0]), "--device-models", "gaussian"]):
        rc, err = run_cli_err(["eval", *argv, "--runs", "2", "--out", str(tmp_path / "m.json")], capsys)
        assert rc == 2 and len(err) == 1, err
        assert "is given twice" in err[0] and "list each checkpoint once" in err[0] and str(ckpts[0].name) in err[0]
    assert not (tmp_path / "m.json").exists()


def test_device_model_is_validated_before_any_loading(tmp_path, capsys, monkeypatch):
    """A bad --device-model (unknown name, missing file, or a file whose values are invalid with the checkpoint's bits)
    is the same one line as before, exit 2, but before any checkpoint is loaded (eval: single and matrix) or any data
    (train); a file valid with every checkpoint's bits is accepted (not judged by DeviceConfig's default bits)."""
    import nvcim.cli.eval_data
    import nvcim.cli.eval_matrix
    import nvcim.data
    from nvcim.core.config import DeviceConfig
    from helpers import tiny_mnist5k_checkpoint

    six = tiny_mnist5k_checkpoint(tmp_path / "six", DeviceConfig(sigma=0.1, weight_bits=6, device_bits=2))
    eight = tiny_mnist5k_checkpoint(tmp_path / "eight", DeviceConfig(sigma=0.1))  # weight_bits 8
    bad, bits3 = tmp_path / "bad.toml", tmp_path / "bits3.toml"
    bad.write_text("sigma = -1\n")
    bits3.write_text("device_bits = 3\n")  # divides 6, not 8
    text = {}
    for spec, bits in (("nope", 8), (str(tmp_path / "missing.toml"), 8), (str(bad), 8), (str(bits3), 8)):
        with pytest.raises(ValueError) as info:
            device_model(spec, defaults={"sigma": 0.1, "weight_bits": bits, "device_bits": 2, "quantize": True})
        text[spec] = str(info.value)  # the error as it is reported after loading

    def no_loading(*a, **k):
        raise AssertionError("loaded before the device model was validated")

    for where, name in ((nvcim.cli.eval_data, "load_for_eval"), (nvcim.cli.eval_matrix, "load_for_eval"),
                        (nvcim.data, "load_dataset")):
        monkeypatch.setattr(where, name, no_loading)
    cases = [(["eval", str(eight), "--device-model", spec, "--runs", "2"], spec) for spec in text]
    cases += [(["eval", str(six), str(eight), "--device-models", f"gaussian,{spec}", "--runs", "2"], spec) for spec in text]
    cases += [(["train", *SMOKE, "--device-model", spec], spec) for spec in ("nope", str(bad))]
    for argv, spec in cases:
        rc, err = run_cli_err(argv, capsys)
        assert rc == 2 and err == [f"nvcim {argv[0]}: error: {text[spec]}"], (argv, err)
    monkeypatch.undo()
    rc, _, err = run_cli(["eval", str(six), "--device-models", str(bits3), "--runs", "2"], capsys)
    assert rc == 0, err


def test_report_keeps_results_under_other_devices_apart(ckpts, tmp_path):
    """An `nvcim eval --device-model` result is an arm of its own, labelled with the device model's name (it was
    "weight_band S=4", what rram4 sets, in which a user looking for rram4 found nothing: new-user trial)."""
    for dm in ("gaussian", "rram4"):
        assert main(["eval", str(ckpts[1]), "--device-model", dm, "--runs", "2", "--out",
                     str(tmp_path / f"{dm}.json")]) == 0
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    labels = {r["label"] for r in csv.DictReader((tmp_path / "rep" / "summary.csv").open())}
    assert labels == {"vanilla", "vanilla [rram4]"}, labels
    assert "weight_band S=4" in (tmp_path / "rep" / "report.md").read_text()  # the device table says what it sets


@pytest.fixture(scope="module")
def vgg_ckpt(tmp_path_factory):
    """A narrow VGG-8 checkpoint (layers of the types the ADC studies use)."""
    d = tmp_path_factory.mktemp("vgg")
    assert main(["train", *SMOKE, "--model", "vgg8", "--width", "0.125", "--out", str(d / "v")]) == 0
    return d / "v"


def test_adc_calibration_source_from_the_cli_single_and_matrix(vgg_ckpt, tmp_path, capsys, monkeypatch):
    """--adc-calibration train: each chip of a calibrated-clip device calibrates its ADCs on training images (the
    API's adc_calibration=splits.train), recorded in the file; the default calibrates on the evaluated split; the
    flag without a calibrated device is refused in one line before any work."""
    from nvcim.cli.eval_data import load_for_eval
    from nvcim.evaluate.montecarlo import monte_carlo_evaluate

    chip = tmp_path / "cal.toml"
    chip.write_text('adc_bits = 4\ntile_rows = 32\nadc_clip = "calibrated"\nadc_calibration_images = 16\n')
    args = ["eval", str(vgg_ckpt), "--device-model", str(chip), "--sigma", "0.2", "--runs", "3", "--seed", "2",
            "--limit", "32"]
    assert main([*args, "--adc-calibration", "train", "--out", str(tmp_path / "t.json")]) == 0
    assert main([*args, "--out", str(tmp_path / "e.json")]) == 0
    train, evaluated = read_result_file(tmp_path / "t.json"), read_result_file(tmp_path / "e.json")
    assert train.adc_calibration == {"split": "train", "images": 16}
    assert evaluated.adc_calibration == {"split": "test", "images": 16}
    loaded = load_for_eval(vgg_ckpt, dataset=None, data_root=None, split="test", limit=32, no_quantize=False)
    cfg = device_model(str(chip), defaults={"sigma": 0.2, "weight_bits": loaded.device.weight_bits,
                                            "device_bits": loaded.device.device_bits})
    want = monte_carlo_evaluate(loaded.model, loaded.split, cfg, runs=3, seed=2, baselines=False,
                                adc_calibration=loaded.splits.train)
    assert train.mc_results()[0].per_run_correct == want.per_run_correct
    assert "adc_calibration" not in json.loads((tmp_path / "e.json").read_text())["results"][0]
    # the matrix: the calibrated column follows the flag, the others are unaffected
    m = tmp_path / "m.json"
    assert main(["eval", str(vgg_ckpt), "--device-models", f"gaussian,{chip}", "--sigma", "0.2", "--runs", "3",
                 "--seed", "2", "--limit", "32", "--adc-calibration", "train", "--out", str(m)]) == 0
    rec = read_result_file(m)
    assert rec.adc_calibration == {"split": "train"}
    assert rec.result(0, 1).per_run_correct == want.per_run_correct
    assert "calibrated ADC clips measured on the train split's first images" in capsys.readouterr().out
    capsys.readouterr()
    import nvcim.cli.eval_data as eval_data

    def no_loading(*a, **k):
        raise AssertionError("loaded before refusing --adc-calibration")

    monkeypatch.setattr(eval_data, "load_for_eval", no_loading)
    monkeypatch.setattr(eval_data.checkpoint, "load_checkpoint", no_loading)
    for argv in (["eval", str(vgg_ckpt), "--sigma", "0.2", "--adc-calibration", "train"],
                 ["eval", str(vgg_ckpt), "--device-models", "gaussian,rram4", "--adc-calibration", "evaluated"]):
        rc, err = run_cli_err(argv, capsys)
        assert rc == 2 and len(err) == 1 and "no device here has a calibrated ADC clip" in err[0], err
    assert not list(tmp_path.glob("*.png")) or (tmp_path / "m.png").exists()


def test_a_files_variation_option_adds_to_its_presets(tmp_path):
    # preset = "rram4-level" with normalize = false lost the preset's multipliers ("multipliers=None is invalid")
    from nvcim.io.device_models import device_model

    f = tmp_path / "lvl.toml"
    f.write_text('preset = "rram4-level"\n[variation_options]\nnormalize = false\n')
    cfg = device_model(str(f), defaults={"sigma": 0.3})
    assert cfg.variation == "level_dependent"
    assert cfg.variation_options == {"multipliers": (1.0, 4.0, 4.0, 1.0), "normalize": False}


def test_a_device_file_tiling_without_an_adc_is_refused(tmp_path, capsys):
    """tile_rows alone changes nothing (exact partial sums add up the same in any tiling): such a file was accepted,
    named in the header, and simulated nothing. Recorded configs with it still load (a checkpoint written before)."""
    from nvcim.core.config import DeviceConfig
    from nvcim.io.device_models import device_model_fields

    f = tmp_path / "t.toml"
    f.write_text("tile_rows = 64\n")
    with pytest.raises(ValueError, match=r"t.toml: tile_rows = 64 tiles nothing without an ADC.*set adc_bits"):
        device_model(str(f))
    with pytest.raises(ValueError, match="tiles nothing"):
        device_model_fields(str(f))  # a sweep's device-model axis
    f.write_text("tile_rows = 64\nadc_bits = 8\n")
    assert device_model(str(f)).tile_rows == 64
    assert DeviceConfig.from_dict({"sigma": 0.1, "tile_rows": 64}).tile_rows == 64


def test_list_device_models_checks_the_users_own_files(tmp_path, capsys):
    # a new user had no way to check a device file without a checkpoint: --list-device-models ignored it
    good, bad = tmp_path / "mine.toml", tmp_path / "typo.toml"
    good.write_text('sigma = 0.2\nstuck_at = [0.01, 0.02]\nadc_bits = 6\nadc_readout = "differential"\n')
    bad.write_text("read_sgima = 0.02\n")
    rc, out, err = run_cli(["eval", "--list-device-models", "--device-models", f"{good},rram4"], capsys)
    assert rc == 0 and len(out.splitlines()) == 2, (out, err)
    assert "ok: stuck_at=[0.01, 0.02], adc_bits=6" in out and "sets adc_bits, adc_readout, sigma, stuck_at" in out
    assert "rram4" in out.splitlines()[1] and "σ from the checkpoint or --sigma; weight_bits and device_bits" in out
    rc, err = run_cli_err(["eval", "--list-device-models", "--device-model", str(bad)], capsys)
    assert rc == 2 and len(err) == 1 and "did you mean 'read_sigma'?" in err[0], err


def test_eval_measures_what_the_converters_alone_cost(capsys):
    # a new user's 6-bit ADC took 50 points with the SPEC's full-scale clip, and the "quantized" column (no ADC) hid it:
    # eval now prints the σ = 0 chip through the converters, and a note when a full-scale clip alone costs > 10 points
    import torch

    from nvcim import DeviceConfig
    from nvcim.cli.eval import adc_alone
    from nvcim.evaluate import monte_carlo_evaluate

    torch.manual_seed(0)
    x = torch.randn(200, 16)
    model = torch.nn.Linear(16, 4)
    y = model(x).argmax(1)  # the float model is right on every input
    for cfg, noted in ((DeviceConfig(sigma=0.0, adc_bits=24), False), (DeviceConfig(sigma=0.0, adc_bits=5), True),
                       (DeviceConfig(sigma=0.1), False)):
        res = monte_carlo_evaluate(model, (x, y), cfg, runs=2, seed=0)
        adc_alone(model, (x, y), cfg, [res], seed=0)
        out, err = capsys.readouterr()
        if not cfg.sliced_mvm:
            assert out == err == ""
            continue
        line = out.strip().splitlines()[-1]
        alone = float(line.split(": ")[1].split(" %")[0])
        assert line.startswith("the σ = 0 chip through these converters") and abs(alone - res.mean) < 1e-9  # σ 0: same
        assert ("the ADCs alone cost" in err) == noted and len(err.strip().splitlines()) == int(noted), err
        assert noted == (res.quantized_accuracy - alone > 10)


def test_unknown_device_fields_get_a_hint_only_when_one_is_likely():
    from nvcim import DeviceConfig

    def message(d):
        with pytest.raises(ValueError) as e:
            DeviceConfig.from_dict(d)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "did you mean 'read_sigma'?" in message({"read_sgima": 0.1})
    assert "did you mean 'read_sigma'?" in message({"sigma_r": 0.1})  # the SPEC's σ_r, not 'sigma'
    assert "option of variation 'level_dependent': put it under variation_options" in message({"multipliers": [1, 2]})
    assert "did you mean" not in message({"colour": 1}) and "did you mean 'tile_rows'" not in message({"multiplier": 1})


def test_list_device_models_checks_a_file_for_other_bits_at_bits_it_fits(tmp_path, capsys):
    # a file for 3-bit devices was refused for the default K = 2 it does not ask for
    (tmp_path / "k3.toml").write_text("device_bits = 3\n")
    (tmp_path / "m8.toml").write_text('variation = "level_dependent"\n[variation_options]\nmultipliers = [1, 1, 1, 1, 2, 2, 2, 2]\n')
    rc, out, err = run_cli(["eval", "--list-device-models", "--device-models",
                            f"{tmp_path / 'k3.toml'},{tmp_path / 'm8.toml'}"], capsys)
    assert rc == 0, err
    assert "(checked with M=9, K=3)" in out.splitlines()[0] and "(checked with M=9, K=3)" in out.splitlines()[1]
    (tmp_path / "bad.toml").write_text("device_bits = 3\nweight_bits = 8\n")  # sets both, and they do not fit
    rc, err = run_cli_err(["eval", "--list-device-models", "--device-model", str(tmp_path / "bad.toml")], capsys)
    assert rc == 2 and len(err) == 1 and "weight_bits" in err[0], err


def test_matrix_refuses_rows_scored_on_different_test_sets(ckpts, tmp_path, capsys):
    """Each checkpoint's own training --limit would score its row on other test images: refused, naming --limit
    (review finding: 1,000 against 300 images under a caption saying common random numbers)."""
    other = tmp_path / "other"
    assert main(["train", "--preset", "smoke", "--limit", "96", "--quiet", "--num-threads", "1", "--val-runs", "2",
                 "--method", "vanilla", "--out", str(other)]) == 0
    capsys.readouterr()
    argv = ["eval", str(ckpts[1]), str(other), "--device-models", "gaussian", "--runs", "2", "--sigma", "0.2"]
    assert main([*argv, "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different mnist5k test images" in err[0] and "--limit 64" in err[0]
    assert not (tmp_path / "m.json").exists()
    assert main([*argv, "--limit", "10"]) == 0  # one --limit: every row on the same images
    capsys.readouterr()
    for flag in (["--device", "cuda"], ["--chunk-runs", "1"]):  # flags the matrix would ignore: refused
        assert main([*argv, "--limit", "10", *flag]) == 2
        assert "drop --device / --chunk-runs" in capsys.readouterr().err


def test_matrix_refuses_val_splits_of_other_data_seeds(tmp_path, capsys):
    """Two checkpoints of other --data-seed hold out other validation images of the same number: the matrix compared
    its rows by size only and scored them on other images under "common random numbers"."""
    for seed in (0, 1):
        assert main(["train", "--preset", "smoke", "--quiet", "--num-threads", "1", "--val-runs", "2",
                     "--method", "vanilla", "--data-seed", str(seed), "--out", str(tmp_path / f"d{seed}")]) == 0
    capsys.readouterr()
    argv = ["eval", str(tmp_path / "d0"), str(tmp_path / "d1"), "--device-models", "gaussian", "--runs", "2",
            "--sigma", "0.2"]
    assert main([*argv, "--split", "val", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different mnist5k val images" in err[0] and "--split test" in err[0], err
    assert not (tmp_path / "m.json").exists()
    assert main([*argv, "--split", "test"]) == 0  # the test split does not depend on the data seed


def test_checkpoints_trained_at_sigma_zero_are_not_evaluated_noiseless_without_a_word(tmp_path, capsys):
    """A sweep's vanilla checkpoint records σ_d 0: a matrix of such checkpoints ran every column at σ 0 and read as
    "Gaussian and rram4 variation cost this model nothing" (identical chips); a plain eval said nothing either
    (new user's finding)."""
    for seed in (0, 1):
        assert main(["train", "--preset", "smoke", "--quiet", "--num-threads", "1", "--val-runs", "2", "--method",
                     "vanilla", "--sigma", "0", "--seed", str(seed), "--out", str(tmp_path / f"v{seed}")]) == 0
    capsys.readouterr()
    ck = tmp_path / "v0"
    assert main(["eval", str(ck), str(tmp_path / "v1"), "--device-models", "gaussian,rram4", "--runs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained at σ_d 0" in err[0] and "column(s) gaussian, rram4" in err[0], err
    assert "--sigma S" in err[0]
    # a device whose chips differ without σ (stuck-at faults) is a fair column at σ_d 0 (review finding: refused)
    assert main(["eval", str(ck), str(tmp_path / "v1"), "--device-models", "stuck-chen2015", "--runs", "2"]) == 0
    assert main(["eval", str(ck), "--runs", "2"]) == 0
    assert "was trained at σ_d 0, so it is evaluated at σ_d = 0" in capsys.readouterr().err
    assert main(["eval", str(ck), "--runs", "2", "--device-model", "stuck-chen2015"]) == 0
    assert "every chip is the quantized model" not in capsys.readouterr().err


def test_a_matrix_says_what_a_zero_width_ci_rests_on(ckpts, capsys):
    """Cells whose chips all scored the same printed [x, x] with no word (nvcim eval's table says what it rests on)."""
    rc, out, err = run_cli(["eval", *map(str, ckpts), "--device-models", "gaussian", "--runs", "3", "--sigma",
                            "1e-9"], capsys)
    assert rc == 0, err
    assert f"2 cell(s) with a zero-width CI, e.g. {ckpts[0]} under gaussian, σ=1e-09: all 3 chips scored" in out, out


def test_the_device_model_list_is_aligned_and_the_unknown_name_message_lists_every_name(capsys):
    assert main(["eval", "--list-device-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}  # where each description begins
    assert len(starts) == 1 and any(line.startswith("right_censored_gaussian ") for line in lines), lines
    with pytest.raises(ValueError, match=r"unknown device model 'rram5': use one of \[.*'weight_band'\]"):
        device_model("rram5")


def test_device_files_say_what_they_do_not_do(tmp_path):
    """A device-CLI trial (session 34): drift_nu without drift_time was accepted and named as the device while no
    drift happened; JSON null for sigma was "sigma=None is invalid"; 'presets' got no hint."""
    f = tmp_path / "d.toml"
    f.write_text("drift_nu = [0.06, 0.02]\n")
    with pytest.raises(ValueError, match=r"drift_nu = \[0.06, 0.02\] has no drift to shape: set drift_time"):
        device_model(str(f), defaults={"sigma": 0.2})
    f.write_text("drift_nu = [0.06, 0.02]\ndrift_time = 3600\n")
    assert device_model(str(f), defaults={"sigma": 0.2}).drift_nu == (0.06, 0.02)
    j = tmp_path / "d.json"
    j.write_text(json.dumps({"sigma": None, "read_sigma": 0.01, "adc_bits": None}))
    cfg = device_model(str(j), defaults={"sigma": 0.2})
    assert cfg.sigma == 0.2 and cfg.read_sigma == 0.01 and cfg.adc_bits is None
    f.write_text('presets = "rram4"\n')
    with pytest.raises(ValueError, match=r"unknown key 'presets' \(did you mean 'preset'\?\)"):
        device_model(str(f))


def test_a_matrix_column_at_its_own_sigma_says_so(ckpts, tmp_path, capsys):
    """A column whose file sets sigma = 0.3 was described as at "each checkpoint's training σ" (here 0.3: 0.15)."""
    (tmp_path / "s03.toml").write_text("sigma = 0.15\n")
    out = tmp_path / "m.json"
    assert main(["eval", str(ckpts[1]), "--device-models", f"gaussian,{tmp_path / 's03.toml'}", "--runs", "2",
                 "--limit", "32", "--out", str(out)]) == 0
    from nvcim.report.matrix import matrix_table, own_sigmas

    rec = read_result_file(out)
    assert own_sigmas(rec) == {str(tmp_path / "s03.toml"): 0.15}
    assert "s03.toml: σ_d = 0.15, set by its device model" in matrix_table(rec).note


def test_arms_trained_under_other_devices_name_them_even_when_their_recipes_differ(tmp_path):
    """One model trained 1 epoch under read noise, another 2 epochs on the plain Gaussian: the report labelled them
    "(1 epoch)" / "(2 epochs)" only, so the gap read as a budget effect."""
    from nvcim.report.labels import assign_labels

    def rec(epochs, device):
        return {"model": "m", "width": 1.0, "dataset": "d", "method": "noise_injection", "method_params": {},
                "beta_search": None, "label_override": None, "train_sigma": 0.2, "recipe": {"epochs": epochs},
                "train_device": device, "device_model": None}
    recs = [rec(1, "read_sigma=0.05"), rec(2, "gaussian")]
    assign_labels(recs)
    assert [r["label"] for r in recs] == ["noise injection (trained on read_sigma=0.05) (1 epoch)",
                                          "noise injection (trained on gaussian) (2 epochs)"]


def test_an_adc_device_drifting_with_its_own_nu_evaluates():
    """A diff review: the drift_nu refusal fired on nvcim's own copies of such a device (drift off, ν kept)."""
    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate

    torch.manual_seed(0)
    model, data = torch.nn.Linear(8, 3), (torch.rand(16, 8), torch.randint(0, 3, (16,)))
    cfg = DeviceConfig(sigma=0.1, adc_bits=8, drift_time=3600.0, drift_nu=(0.1, 0.02))
    assert math.isfinite(monte_carlo_evaluate(model, data, cfg, runs=2, seed=0).mean)


def test_no_quantize_under_a_device_model_replaces_a_faulty_training_device(tmp_path, capsys):
    """--no-quantize with --device-model was refused for a checkpoint trained under stuck-at faults (they act on
    quantized levels), though the device model replaces them; under its own device it says why, in one line."""
    ck = tmp_path / "stuck"
    assert main(["train", *SMOKE, "--method", "noise_injection", "--device-model", "stuck-chen2015", "--out",
                 str(ck)]) == 0
    assert main(["eval", str(ck), "--no-quantize", "--device-model", "gaussian", "--runs", "2", "--limit", "32"]) == 0
    capsys.readouterr()
    assert main(["eval", str(ck), "--no-quantize", "--runs", "2", "--limit", "32"]) == 2
    assert "trained under stuck-at faults or drift" in capsys.readouterr().err
