"""aihwkit interop (nvcim.interop.aihwkit): device-model specs (always), and with the aihwkit extra installed,
Monte Carlo under its noise models, the device-model matrix, analog models out and back in."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from helpers import run_cli

import nvcim
from nvcim.interop import aihwkit as ai
from nvcim.io.checkpoint import load_checkpoint, save_checkpoint
from nvcim.models import create_model

needs_aihwkit = pytest.mark.skipif(not ai.available(), reason="the aihwkit extra is not installed "
                                   "(pip install 'nvcim[aihwkit]' or bash scripts/install_aihwkit.sh)")


@pytest.fixture(autouse=True)
def one_thread():
    """aihwkit's small forwards thrash with 2 threads on a busy 2-core machine (measured 11.6 s vs 1.6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_spec_parsing():
    dev = ai.aihwkit_device("aihwkit:pcm?prog_noise_scale=1.5&t_inference=3600&tile=rpucuda&io=perfect")
    assert (dev.kind, dev.noise, dev.t_inference, dev.tile, dev.io, dev.compensation) == \
        ("pcm", {"prog_noise_scale": 1.5}, 3600.0, "rpucuda", "perfect", "global")
    assert ai.aihwkit_device("aihwkit:reram", t_inference=86400).t_inference == 86400
    assert ai.aihwkit_device(" aihwkit:pcm ").to_dict()["noise_model"] == "PCMLikeNoiseModel"
    assert ai.is_aihwkit_spec("aihwkit:pcm") and not ai.is_aihwkit_spec("rram4") and not ai.is_aihwkit_spec(None)
    assert [n for n, _ in ai.list_aihwkit_models()] == ["aihwkit:pcm", "aihwkit:reram"]


@pytest.mark.parametrize("spec,kw,match", [
    ("aihwkit:flash", {}, "unknown aihwkit kind"),
    ("aihwkit:pcm?noise_scale=1", {}, "unknown option 'noise_scale'"),
    ("aihwkit:pcm?prog_noise_scale=x", {}, "not a number"),
    ("aihwkit:pcm?prog_noise_scale=-1", {}, ">= 0"),
    ("aihwkit:pcm?tile=gpu", {}, "tile='gpu' is invalid"),
    ("aihwkit:pcm?t_inference=10", {"t_inference": 20}, "give the inference time once"),
    ("aihwkit:reram?t_inference=3600", {}, "86400"),
    ("aihwkit:pcm?g_max=1&g_max=2", {}, "twice"),
    ("aihwkit:pcm?t_read=0", {}, r"t_read='0' is invalid: use a finite number > 0"),  # a ZeroDivisionError later
    ("aihwkit:pcm?t_0=0", {}, r"t_0='0' is invalid"),
    ("aihwkit:reram?g_max=0", {}, r"g_max='0' is invalid"),
    ("rram4", {}, "not an aihwkit one"),
])
def test_spec_errors(spec, kw, match):
    with pytest.raises(ai.AihwkitError, match=match):
        ai.aihwkit_device(spec, **kw)


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg8", 10, 1, width=0.0625)
    return save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=nvcim.DeviceConfig(sigma=0.1),
                           data={"name": "mnist5k", "limit": 64}), model


def test_cli_checks_before_loading(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path)
    for argv, match in (([str(ckpt), "--device-model", "aihwkit:pcm", "--sigma", "0.1"], "has no σ_d"),
                        ([str(ckpt), "--device-model", "aihwkit:pcm?bad=1"], "unknown option"),
                        ([str(ckpt), "--time", "5"], "aihwkit device models only"),
                        ([str(ckpt), "--device-model", "aihwkit:pcm", "--time", "x"], "not a number")):
        rc, _, err = run_cli(["eval", *argv], capsys)
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err
    rc, out, _ = run_cli(["eval", "--list-device-models"], capsys)
    assert rc == 0 and "aihwkit:pcm" in out and "aihwkit:reram" in out


@pytest.mark.skipif(ai.available(), reason="checks the message shown without the aihwkit extra")
def test_missing_aihwkit_is_one_line(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path)
    rc, _, err = run_cli(["eval", str(ckpt), "--device-model", "aihwkit:pcm", "--runs", "2"], capsys)
    assert rc == 2 and "aihwkit is not installed" in err and "install_aihwkit.sh" in err


def _data(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@needs_aihwkit
@pytest.mark.aihwkit
def test_monte_carlo_statistics_and_reproducibility():
    torch.manual_seed(0)
    model = create_model("vgg8", 10, 1, width=0.0625)
    dev = ai.aihwkit_device("aihwkit:pcm?prog_noise_scale=3")
    a = dev.monte_carlo(model, _data(), runs=2, seed=5, batch_size=8)
    b = dev.monte_carlo(model, _data(), runs=2, seed=5, batch_size=8)
    assert a.runs == 2 and a.n_samples == 16 and a.path == "aihwkit" and a.device_config["aihwkit"] == "pcm"
    assert a.per_run_correct == b.per_run_correct  # the chips come from the seed
    torch.manual_seed(123)  # whatever the global generator holds, the baseline (its IO noise drawn) is the seed's
    c = dev.monte_carlo(model, _data(), runs=2, seed=5, batch_size=8)
    assert a.quantized_accuracy == b.quantized_accuracy == c.quantized_accuracy
    exact = ai.aihwkit_device("aihwkit:pcm?prog_noise_scale=3&io=perfect")  # no output noise drawn per forward:
    e, f = (exact.monte_carlo(model, _data(), runs=2, seed=5, batch_size=bs) for bs in (8, 16))
    assert e.per_run_correct == f.per_run_correct  # then the batching does not matter either
    assert len(set(a.per_run_accuracy)) > 1 or a.std == 0  # chips differ (or the model is constant)
    clean = nvcim.evaluate.monte_carlo_evaluate(model, _data(), nvcim.DeviceConfig(sigma=0), runs=2)
    assert a.clean_accuracy == clean.clean_accuracy
    with pytest.raises(ai.AihwkitError, match="groups=1"):  # aihwkit has no grouped convolutions
        dev.monte_carlo(create_model("tiny", 10, 1), _data(), runs=2, seed=0)


@needs_aihwkit
@pytest.mark.aihwkit
def test_analog_export_import_round_trip(tmp_path, capsys):
    ckpt, model = _checkpoint(tmp_path)
    rc, out, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm", "--out", str(tmp_path / "a.pt")], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm", "--out", str(tmp_path / "a.pt"),
                            "--overwrite"], capsys)  # an existing file: replaced only with --overwrite
    assert rc == 0, err
    analog = torch.load(tmp_path / "a.pt", weights_only=False)
    assert any("Analog" in type(m).__name__ for m in analog.modules())
    rc, out, err = run_cli(["import", str(tmp_path / "a.pt"), "--out", str(tmp_path / "back")], capsys)
    assert rc == 0, err
    back, config = load_checkpoint(tmp_path / "back")
    assert config["imported_from"] == {"aihwkit_model": str(tmp_path / "a.pt")}
    for key, value in model.state_dict().items():
        assert torch.allclose(back.state_dict()[key].float(), value.float(), rtol=1e-5, atol=1e-6), key

    from aihwkit.optim import AnalogSGD  # one step of hardware-aware training in aihwkit, then back into nvcim

    analog.train()
    opt = AnalogSGD(analog.parameters(), lr=0.5)
    x, y = _data(8)
    torch.nn.functional.cross_entropy(analog(x), y).backward()
    opt.step()
    torch.save(analog, tmp_path / "trained.pt")
    rc, out, err = run_cli(["import", str(tmp_path / "trained.pt"), "--out", str(tmp_path / "trained")], capsys)
    assert rc == 0, err
    trained, _ = load_checkpoint(tmp_path / "trained")
    expected = ai.from_analog(analog).state_dict()
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in expected.items())
    assert not torch.allclose(expected["classifier.2.weight"], model.state_dict()["classifier.2.weight"])


@needs_aihwkit
@pytest.mark.aihwkit
def test_eval_and_matrix_cli(tmp_path, capsys, monkeypatch):
    ckpt, model = _checkpoint(tmp_path)
    import nvcim.cli.eval_data as eval_data

    x, y = _data(16)

    class Split:
        def __len__(self):
            return len(y)

        def batches(self, b):
            return [(x[i:i + b], y[i:i + b]) for i in range(0, len(y), b)]

        def sha256(self):  # the content digest the matrix compares rows' images by
            return "these 16 images"

    from types import SimpleNamespace

    splits = SimpleNamespace(fingerprint=None, train=None,  # what the matrix reads of the splits (a built-in set's)
                             sha256=lambda: "these splits")
    loaded = eval_data.Loaded(model, load_checkpoint(ckpt)[1], nvcim.DeviceConfig(sigma=0.1), "mnist5k", splits,
                              Split())
    monkeypatch.setattr(eval_data, "load_for_eval", lambda *a, **k: loaded)
    monkeypatch.setattr("nvcim.cli.eval_aihwkit.load_for_eval", lambda *a, **k: loaded)
    monkeypatch.setattr("nvcim.cli.eval_matrix.load_for_eval", lambda *a, **k: loaded)
    rc, out, err = run_cli(["eval", str(ckpt), "--device-model", "aihwkit:reram", "--time", "86400", "--runs", "2",
                            "--out", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["device_config"]["aihwkit"] == "reram" and rec["device_config"]["t_inference"] == 86400
    assert len(rec["results"][0]["per_run_accuracy"]) == 2 and (tmp_path / "r.csv").is_file()
    rc, out, err = run_cli(["eval", str(ckpt), "--device-models", "gaussian,aihwkit:pcm", "--runs", "2",
                            "--out", str(tmp_path / "m.json")], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["device_models"] == ["gaussian", "aihwkit:pcm"] and m["cells"][0][1]["device_config"]["aihwkit"] == "pcm"


@pytest.mark.slow
def test_install_script(tmp_path):
    """scripts/install_aihwkit.sh into this environment: aihwkit imports and torch is unchanged (minutes)."""
    before = torch.__version__
    script = Path(__file__).resolve().parents[1] / "scripts" / "install_aihwkit.sh"
    proc = subprocess.run(["bash", str(script), sys.executable], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "NICE": "10"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", "import aihwkit, torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == before


def test_results_differing_only_in_io_or_tile_are_arms_of_their_own():
    """The report's label of an aihwkit device names a non-default io / tile: results under io=perfect were merged
    with (and hidden behind) the default IO's (review finding)."""
    from nvcim.report.labels import device_description

    base = ai.aihwkit_device("aihwkit:pcm").to_dict()
    names = {device_description({**base, **kw}) for kw in ({}, {"io": "perfect"}, {"tile": "rpucuda"})}
    assert len(names) == 3 and "io perfect" in device_description({**base, "io": "perfect"})
    assert ", io " not in device_description(base) and ", tile " not in device_description(base)


def test_what_aihwkit_cannot_convert_is_said_without_aihwkit():
    """Grouped convolutions are refused by a check that needs no aihwkit, so a device-model matrix says it before its
    first cell (it used to fail after the other columns' cells had run); kept digital, they are fine."""
    ai.check_convertible(create_model("vgg8", 10, 1, width=0.0625))  # fine
    tiny = create_model("tiny", 10, 1)
    with pytest.raises(ai.AihwkitError, match="groups=1"):
        ai.check_convertible(tiny)
    grouped = [n for n, m in tiny.named_modules() if isinstance(m, nn.Conv2d) and m.groups != 1]
    nvcim.keep_digital_(tiny, grouped)
    ai.check_convertible(tiny)


@needs_aihwkit
@pytest.mark.aihwkit
def test_layers_kept_digital_stay_digital_under_aihwkit(tmp_path):
    """A checkpoint trained with its first and last layers digital (common practice) could not be exported or
    evaluated under aihwkit at all: its conversion put every Conv / Linear on a tile. They are excluded from it now,
    exact in both simulators (review finding)."""
    torch.manual_seed(0)
    model = create_model("vgg8", 10, 1, width=0.0625)
    nvcim.keep_digital_(model, ["features.0", "classifier.2"])
    analog = ai.to_analog(model, "aihwkit:pcm")
    kinds = {n: type(m).__name__ for n, m in analog.named_modules()}
    assert kinds["features.0"] == "Conv2d" and kinds["classifier.2"] == "Linear"
    assert kinds["features.3"].startswith("Analog") and kinds["classifier.0"].startswith("Analog")
    ckpt = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, digital_layers=["features.0", "classifier.2"])
    ai.export_analog(ckpt, tmp_path / "a.pt", "aihwkit:pcm")
    ai.import_analog(tmp_path / "a.pt", tmp_path / "back")
    back, config = load_checkpoint(tmp_path / "back")
    assert sorted(config["digital_layer_names"]) == ["classifier.2", "features.0"]
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layer,names,digital", [
    (nn.TransformerEncoderLayer(16, 4, 32), "'1.self_attn' (MultiheadAttention), '1.self_attn.out_proj' "
                                            "(NonDynamicallyQuantizableLinear)", "1.self_attn"),
    (nn.LSTM(16, 16), "'1' (LSTM)", "1"),
    (nn.ConvTranspose1d(16, 16, 1), "'1' (ConvTranspose1d)", "1"),
])
def test_layers_nvcim_varies_and_aihwkit_would_leave_exact_are_refused(layer, names, digital):
    """convert_to_analog maps Linear / Conv1d-3d by exact class: a transformer's attention (in_proj and the Linear
    subclass out_proj), an LSTM, a transposed convolution stayed exact under aihwkit while nvcim varied them, so the
    two columns of a matrix compared unequal chips without a word. Kept digital, both compute them exactly: fine."""
    model = nn.Sequential(nn.Linear(16, 16), layer)
    with pytest.raises(ai.AihwkitError, match=re.escape(f"would leave {names} exact")):
        ai.check_convertible(model)
    nvcim.keep_digital_(model, [digital])  # (the encoder's linear1 / linear2 stay analog in both)
    ai.check_convertible(model)


@needs_aihwkit
@pytest.mark.aihwkit
def test_matrix_refuses_an_aihwkit_column_before_any_cell(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("tiny", 10, 1)  # a grouped convolution
    ckpt = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=nvcim.DeviceConfig(sigma=0.1),
                           data={"name": "mnist5k", "limit": 64})
    rc, out, err = run_cli(["eval", str(ckpt), "--device-models", "gaussian,aihwkit:pcm", "--runs", "2", "--limit",
                            "32", "--out", str(tmp_path / "m.json")], capsys)
    assert rc == 2 and "under aihwkit:pcm" in err and "groups=1" in err and len(err.strip().splitlines()) == 1
    assert "gaussian" not in out and not (tmp_path / "m.json.partial").exists()  # no cell ran


@pytest.mark.parametrize("layer,device,match", [
    (nn.Conv1d(4, 4, 3), "aihwkit:pcm", r"'0' \(Conv1d\): .*torch tile lacks: add tile=rpucuda"),
    (nn.Conv2d(4, 4, 3, padding="same"), "aihwkit:pcm?tile=rpucuda", r"padding='same' is not supported"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "aihwkit:pcm", r"padding_mode='reflect'"),
    (nn.Conv1d(4, 4, 3, dilation=2), "aihwkit:pcm?tile=rpucuda", r"dilation=\(2,\)"),
])
def test_convolutions_aihwkit_cannot_run_are_refused_without_aihwkit(layer, device, match):
    """They passed the check and then failed at the first forward with a traceback (Conv1d on the torch tile, string
    padding) or late with aihwkit's raw message, after a matrix's other columns had run (review finding)."""
    model = nn.Sequential(nn.Conv2d(4, 4, 1) if isinstance(layer, nn.Conv2d) else nn.Conv1d(4, 4, 1), layer)
    with pytest.raises(ai.AihwkitError, match=match) as err:
        ai.check_convertible(model, ai.aihwkit_device(device))
    assert "\n" not in str(err.value)
    if isinstance(layer, nn.Conv1d) and layer.dilation == (1,):
        ai.check_convertible(model, ai.aihwkit_device("aihwkit:pcm?tile=rpucuda"))  # the C++ tile runs it


def test_a_layer_registered_twice_is_refused():
    """convert_to_analog converts it once per name: two independent tiles, two chips' noise for one crossbar."""
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ai.AihwkitError, match=r"layer '0' is also registered as '2'"):
        ai.check_convertible(model)


def test_export_refuses_t_inference_and_overwrites_only_model_files(tmp_path, capsys):
    """--overwrite replaced another checkpoint's model.safetensors and a results JSON (data loss), and a spec's
    t_inference was accepted and dropped (review finding)."""
    ckpt, _ = _checkpoint(tmp_path)
    other, _ = _checkpoint(tmp_path / "other")
    results = tmp_path / "r.json"
    results.write_text("{}")
    state = tmp_path / "run.train-state"  # an interrupted training's state: a torch.save file of nvcim's own
    (state).mkdir()
    torch.save({"w": torch.zeros(2)}, state / "state.pt")
    (state / "state.json").write_text(json.dumps({"format": "nvcim-train-state", "version": 1}))
    for target, match in ((other / "model.safetensors", "a checkpoint or training state"),
                          (state / "state.pt", "a checkpoint or training state"),
                          (results, "not a file torch.save wrote")):
        before = target.read_bytes()
        rc, _, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm", "--out", str(target), "--overwrite"],
                             capsys)
        assert rc == 2 and match in err and target.read_bytes() == before, err
    rc, _, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm", "--out", str(state / "new.pt")], capsys)
    assert rc == 2 and "a checkpoint or training state" in err and not (state / "new.pt").exists()  # a new file too
    if ai.available():
        rc, _, err = run_cli(["export", str(ckpt), "--aihwkit", "aihwkit:pcm?t_inference=3600", "--out",
                              str(tmp_path / "a.pt")], capsys)
        assert rc == 2 and "t_inference=3600 is not part of an analog model" in err
        assert not (tmp_path / "a.pt").exists()


def test_full_spec_round_trips():
    dev = ai.aihwkit_device("aihwkit:pcm?prog_noise_scale=1.5&tile=rpucuda", t_inference=3600)
    assert dev.spec == "aihwkit:pcm?prog_noise_scale=1.5&t_inference=3600&tile=rpucuda&compensation=global&io=default"
    assert ai.aihwkit_device(dev.spec) == dev
    odd = ai.aihwkit_device("aihwkit:pcm?prog_noise_scale=1.23456789", t_inference=1e6)  # ':g' lost both (review)
    assert ai.aihwkit_device(odd.spec) == odd
    assert not dev.reproducible and dev.to_dict()["reproducible_from_seed"] is False
    assert "reproducible_from_seed" not in ai.aihwkit_device("aihwkit:pcm?tile=rpucuda&io=perfect").to_dict()


@needs_aihwkit
@pytest.mark.aihwkit
def test_monte_carlo_leaves_the_callers_random_stream_and_warns_when_not_reproducible():
    model = create_model("vgg8", 10, 1, width=0.0625)
    torch.manual_seed(42)
    state = torch.get_rng_state()
    ai.aihwkit_device("aihwkit:pcm").monte_carlo(model, _data(8), runs=2, seed=3, batch_size=8)
    assert torch.equal(torch.get_rng_state(), state)  # it re-seeded the global generator (review finding)
    with pytest.warns(RuntimeWarning, match="cannot be reproduced from the seed"):
        res = ai.aihwkit_device("aihwkit:pcm?tile=rpucuda").monte_carlo(model, _data(8), runs=1, seed=3, batch_size=8)
    assert res.device_config["reproducible_from_seed"] is False


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x [B, L, 8]
        return self.head(self.enc(x).mean(1))


@needs_aihwkit
@pytest.mark.aihwkit
def test_a_transformer_with_digital_attention_runs_under_aihwkit():
    """Its attention kept digital (as nvcim's refusal advises), the encoder's fused inference path read linear1's
    weight, which aihwkit sets to None: an AttributeError traceback (review finding)."""
    torch.manual_seed(0)
    model = _Encoder().eval()
    nvcim.keep_digital_(model, ["enc.self_attn"])
    x = torch.randn(8, 5, 8)
    res = ai.aihwkit_device("aihwkit:pcm?io=perfect").monte_carlo(model, (x, torch.zeros(8, dtype=torch.long)),
                                                                    runs=1, seed=0, batch_size=8)
    assert res.runs == 1


@needs_aihwkit
@pytest.mark.aihwkit
def test_import_of_a_programmed_model_takes_the_trained_weights(tmp_path, capsys):
    """A model saved after program_analog_weights / drift_analog_weights was imported as that one chip's weights
    (8.7 % off the trained ones), without a word (review finding)."""
    from aihwkit.inference.utils import drift_analog_weights, program_analog_weights

    ckpt, model = _checkpoint(tmp_path)
    analog = ai.to_analog(model, "aihwkit:pcm").eval()
    torch.manual_seed(0)
    program_analog_weights(analog, None)
    drift_analog_weights(analog, 86400)
    torch.save(analog, tmp_path / "programmed.pt")
    with pytest.warns(UserWarning, match=r"analog tile\(s\) were programmed .* importing their reference"):
        ai.import_analog(tmp_path / "programmed.pt", tmp_path / "back")
    back, _ = load_checkpoint(tmp_path / "back")
    for key, value in model.state_dict().items():
        assert torch.allclose(back.state_dict()[key].float(), value.float(), rtol=1e-5, atol=1e-6), key


@needs_aihwkit
@pytest.mark.aihwkit
def test_csv_keeps_the_inference_time_and_chunk_runs_is_refused(tmp_path, capsys, monkeypatch):
    ckpt, _ = _checkpoint(tmp_path)
    rc, _, err = run_cli(["eval", str(ckpt), "--device-model", "aihwkit:pcm", "--chunk-runs", "1", "--runs", "2"],
                         capsys)
    assert rc == 2 and "--chunk-runs" in err
    csv_path = tmp_path / "t.csv"
    rc, _, err = run_cli(["eval", str(ckpt), "--device-model", "aihwkit:pcm", "--time", "3600", "--runs", "2",
                          "--limit", "16", "--csv", str(csv_path)], capsys)
    assert rc == 0, err
    assert "aihwkit:pcm?t_inference=3600&tile=torch" in csv_path.read_text()  # the CSV said aihwkit:pcm alone


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight  # one tensor, two layers

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(1))))


@pytest.fixture
def own_models():
    """_Encoder and _Tied as registered models (a checkpoint rebuilds its model by name), for one test."""
    from nvcim.models import MODELS, register_model

    register_model("_aihw_encoder", replace=True)(lambda num_classes=3, in_channels=1, width=1.0, image_size=8:
                                                   _Encoder())
    register_model("_aihw_tied", replace=True)(lambda num_classes=4, in_channels=1, width=1.0, image_size=2: _Tied())
    yield
    MODELS.unregister("_aihw_encoder")
    MODELS.unregister("_aihw_tied")


@needs_aihwkit
@pytest.mark.aihwkit
def test_tied_weights_trained_apart_in_aihwkit_are_refused_on_import(own_models):
    """aihwkit gives each layer its own copy of a tied weight; the import loaded both into the one tensor and kept the
    last, the other's training lost without a word (review finding)."""
    model = create_model("_aihw_tied")
    analog = ai.to_analog(model, "aihwkit:pcm?io=perfect")
    assert torch.equal(ai.from_analog(analog).a.weight, model.a.weight)  # copies alike: imported
    wa, ba = analog.a.get_weights()
    analog.a.set_weights(wa + 1.0, ba)  # as one aihwkit training step would move one copy only
    with pytest.raises(ai.AihwkitError, match=r"'a.weight' and 'b.weight' are one tied tensor .* two copies that differ"):
        ai.from_analog(analog)


@needs_aihwkit
@pytest.mark.aihwkit
def test_export_then_import_keeps_the_digital_layers_device_and_data(tmp_path, own_models):
    """The re-imported checkpoint lost its digital attention (its chips then varied it: 46.80 % against 45.23 % on the
    same chips), its device (σ 0.3 became the default) and its data (review finding)."""
    torch.manual_seed(0)
    model = create_model("_aihw_encoder")
    nvcim.keep_digital_(model, ["enc.self_attn"])
    ckpt = save_checkpoint(tmp_path / "ck", model, model.nvcim_spec, device=nvcim.DeviceConfig(sigma=0.3, weight_bits=6),
                           data={"name": "mnist5k", "limit": 64}, digital_layers=["enc.self_attn"])
    with pytest.warns(UserWarning, match="fused inference path"):
        ai.export_analog(ckpt, tmp_path / "a.pt", "aihwkit:pcm")
    ai.import_analog(tmp_path / "a.pt", tmp_path / "back")
    (_, want), (back, got) = load_checkpoint(ckpt), load_checkpoint(tmp_path / "back")
    assert want["digital_layer_names"] == ["enc.self_attn", "enc.self_attn.out_proj"]
    assert all(got[k] == want[k] for k in ("device", "data", "digital_layers", "digital_layer_names"))
    assert nvcim.layers.noise.digital_layers(back) == want["digital_layer_names"]


def test_a_number_with_a_plus_sign_is_read_as_written():
    assert ai.aihwkit_device("aihwkit:pcm?t_inference=1e+06").t_inference == 1e6  # was "'1e 06' is not a number"
