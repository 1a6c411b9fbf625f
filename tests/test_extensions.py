"""Every extension point is one class (or function) plus a registration, reachable from the API, the CLI,
sweeps and reports with no other edit: a method, a variation kind, a data set and a sweep backend, all
registered here inside the test and used end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvcim.cli import main
from nvcim.data import DatasetInfo, register_dataset
from nvcim.data.registry import REGISTRY
from nvcim.methods import METHODS, Method, Option, TrainingTask, register_method
from nvcim.sweep import load_spec, run_sweep
from nvcim.sweep.backends.registry import BACKENDS, register_backend
from nvcim.sweep.cell_run import run_cell
from nvcim.train import TrainConfig, train
from nvcim.core.variation import VARIATIONS, Variation, register_variation


# ---- the user's extensions -------------------------------------------------------------------------
@dataclass(frozen=True)
class CoolConfig:
    name = "cool_test"
    temperature: float = 0.5

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"cool_test temperature={self.temperature!r} is invalid: use a number > 0")


class CoolTask(TrainingTask):
    """Noise injection with the logits divided by a temperature."""

    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, device_cfg, method_cfg)
        self._apply_variation()

    def forward(self, x, y):
        out = self.model(x) / self.method_cfg.temperature  # [B, classes]
        return F.cross_entropy(out, y), out


class Cool(Method):
    name = "cool_test"
    label = "cool"
    options = (Option("temperature", "float", 0.5, "cool_test: logits ÷ T (default: 0.5)"),)
    config = CoolConfig
    task = CoolTask


class Uniform(Variation):
    """Δg ~ U(-√3 σ, √3 σ)(2^K - 1): the same std as Gaussian, bounded."""

    def sample(self, levels, sigma, cfg, generator):
        u = torch.rand(levels.shape, generator=generator, dtype=levels.dtype, device=levels.device)
        return (u * 2 - 1).mul_(3 ** 0.5 * sigma * cfg.device_levels)


class Stripes:
    """Locator of a data set made in memory: nothing to find on disk."""

    what = "nothing (made in memory)"

    def find(self, name, root):
        return "memory"


def read_stripes(_found):
    """3 classes of 8x8 images: a bright row band at the top, middle or bottom."""
    g = np.random.default_rng(0)

    def make(n):
        y = g.integers(0, 3, n)
        x = (g.random((n, 8, 8)) * 40).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 1 + 2 * c: 3 + 2 * c] += 200
        return x, y

    x_train, y_train = make(120)
    x_test, y_test = make(60)
    return x_train, y_train, x_test, y_test


def run_in_order(cells, out, spec, on_done, say, *, workers, address):
    """A backend: the cells one after another, newest first (order must not matter)."""
    for cell in reversed(list(cells)):
        on_done(run_cell(cell, out, 1))


@pytest.fixture(scope="module", autouse=True)
def extensions():
    register_method(Cool)
    register_variation("uniform_test")(Uniform)
    register_dataset(DatasetInfo("stripes_test", 3, 1, 8, (0.5,), (0.5,), augment=False), read=read_stripes,
                     locate=Stripes())
    register_backend("reversed_test", help="cells newest first")(run_in_order)
    yield
    METHODS.unregister("cool_test")
    VARIATIONS.unregister("uniform_test")
    REGISTRY.pop("stripes_test", None)
    BACKENDS.unregister("reversed_test")


COMMON = ["--model", "tiny", "--dataset", "stripes_test", "--epochs", "2", "--batch-size", "16", "--val-runs", "2",
          "--quiet", "--num-threads", "1"]


def test_api_trains_the_new_method_on_the_new_data_under_the_new_variation():
    cfg = TrainConfig(model="tiny", dataset="stripes_test", method="cool_test", method_params={"temperature": 0.25},
                      device_config={"sigma": 0.1, "variation": "uniform_test"}, epochs=1, batch_size=16,
                      val_runs=2, progress=False, num_threads=1)
    res = train(cfg)
    assert res.status == "ok" and res.metrics["test_noisy_runs"] == 2


def test_cli_trains_and_evaluates_with_the_new_flag_variation_and_data(tmp_path):
    ckpt = tmp_path / "ck"
    assert main(["train", *COMMON, "--method", "cool_test", "--temperature", "0.3", "--sigma", "0.1",
                 "--variation", "uniform_test", "--out", str(ckpt)]) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["method"] == {"name": "cool_test", "temperature": 0.3}
    assert config["device"]["variation"] == "uniform_test" and config["data"]["name"] == "stripes_test"
    out = tmp_path / "mc.json"
    assert main(["eval", str(ckpt), "--runs", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["device_config"]["variation"] == "uniform_test" and res["n_samples"] == 60


def test_sweep_on_the_new_backend_then_report(tmp_path):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('''
name = "extensions"
models = ["tiny"]
datasets = ["stripes_test"]
methods = ["vanilla", "cool_test"]
sigmas = [0.1]
seeds = [0, 1]
[method_params.cool_test]
temperature = 0.3
[train]
epochs = 1
batch_size = 16
val_runs = 2
device_config = {variation = "uniform_test"}
[eval]
runs = 3
val_runs = 2
''')
    spec = load_spec(spec_file)
    summary = run_sweep(spec, tmp_path / "sweep", backend="reversed_test", progress=False)
    assert summary.exit_code == 0
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "sweep"), "--backend", "reversed_test",
                 "--quiet"]) == 0  # resumes: nothing left to run
    results = sorted((tmp_path / "sweep").rglob("result.json"))
    assert len(results) == 4
    for r in results:
        payload = json.loads(r.read_text())
        assert payload["device_config"]["variation"] == "uniform_test"
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "summary.csv").open()))
    assert {"cool [uniform_test]", "vanilla [uniform_test]"} <= {r["label"] for r in rows}, rows  # device named
    assert "cool" in (tmp_path / "report" / "report.md").read_text()


# ---- an extension author's mistakes: one line naming the extension, before any work ---------------------------
def test_a_gaussian_subclass_with_its_own_sample_must_say_it_is_not_gaussian():
    """It inherited fast_path_exact = True: under sampling="auto" one Gaussian draw per weight replaced its own
    sample(), every number Gaussian's while reports named the new kind (a new user's trial)."""
    from nvcim.core.variation import Gaussian

    class Heavy(Gaussian):
        def sample(self, levels, sigma, cfg, generator):
            return 3 * super().sample(levels, sigma, cfg, generator)

    with pytest.raises(TypeError, match=r"variation 'heavy_test' \(Heavy\) overrides sample\(\) but inherits "
                                        r"fast_path_exact = True from Gaussian.*set fast_path_exact = False"):
        register_variation("heavy_test")(Heavy)
    assert "heavy_test" not in VARIATIONS

    class HeavyDeclared(Heavy):
        fast_path_exact = False

    register_variation("heavy_test")(HeavyDeclared)
    try:
        w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
        from nvcim.core import device as dm
        from nvcim.core.config import DeviceConfig

        cfg = DeviceConfig(sigma=0.1, variation="heavy_test")
        err = (dm.program(w, cfg, torch.Generator().manual_seed(1)) - dm.quantize(w, cfg)).std()
        plain = (dm.program(w, cfg.replace(variation="gaussian"), torch.Generator().manual_seed(1))
                 - dm.quantize(w, cfg)).std()
        assert float(err / plain) == pytest.approx(3.0, rel=0.05)  # its own draws, 3x wider
    finally:
        VARIATIONS.unregister("heavy_test")


class _Shape(Variation):
    def sample(self, levels, sigma, cfg, generator):
        return torch.zeros(levels.shape[1:])


class _NaN(Variation):
    def sample(self, levels, sigma, cfg, generator):
        return torch.full_like(levels, float("nan"))


class _NoGenerator(Variation):
    def sample(self, levels, sigma, cfg, generator):
        return torch.randn(levels.shape)  # the global RNG: chips not reproducible from their seed


@pytest.mark.parametrize("cls, words", [
    (_Shape, r"returned \[3, 2\] for levels of shape \[4, 3, 2\]: return a float tensor"),
    (_NaN, r"returned a non-finite Δg \(NaN or inf\)"),
    (_NoGenerator, r"drew differently from two generators of one seed: draw with the `generator`"),
])
def test_a_variation_kind_that_breaks_its_contract_is_refused_on_first_use(cls, words, tmp_path, capsys):
    from nvcim.core.config import DeviceConfig

    register_variation("broken_test")(cls)
    try:
        with pytest.raises(ValueError, match=rf"variation 'broken_test' \({cls.__name__}.sample\) {words}"):
            DeviceConfig(sigma=0.2, variation="broken_test")
        (tmp_path / "dev.toml").write_text('variation = "broken_test"\n')
        assert main(["train", *COMMON, "--method", "noise_injection", "--sigma", "0.1", "--variation",
                     "broken_test", "--out", str(tmp_path / "ck")]) == 2
        assert not (tmp_path / "ck").exists()
    finally:
        VARIATIONS.unregister("broken_test")


def test_a_method_config_must_carry_its_methods_name():
    @dataclass(frozen=True)
    class Nameless:
        temperature: float = 0.5

    class Bad(Method):
        name, label, config, task = "nameless_test", "nameless", Nameless, CoolTask

    with pytest.raises(TypeError, match=r"config Nameless has name = None: give it the class attribute name = "
                                        r"'nameless_test'"):
        register_method(Bad)  # was "unknown method None" at training time
    assert "nameless_test" not in METHODS


def test_a_method_whose_loss_is_no_scalar_is_named(tmp_path, capsys):
    class VectorTask(CoolTask):
        def forward(self, x, y):
            out = self.model(x)  # [B, classes]
            return F.cross_entropy(out, y, reduction="none"), out  # [B]: no scalar

    @dataclass(frozen=True)
    class VecConfig:
        name = "vecloss_test"

    class Vec(Method):
        name, label, config, task = "vecloss_test", "vec", VecConfig, VectorTask

    register_method(Vec)
    try:
        assert main(["train", *COMMON, "--method", "vecloss_test", "--sigma", "0.1", "--out", str(tmp_path / "v")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].endswith("method 'vecloss_test': its training task returned loss [16] and logits [16, 3] for "
                                "16 images: return (a scalar loss, logits [batch, classes])"), err
    finally:
        METHODS.unregister("vecloss_test")


def test_a_reader_returning_other_than_four_arrays_is_named(tmp_path, capsys):
    register_dataset(DatasetInfo("three_test", 3, 1, 8, (0.5,), (0.5,), augment=False),
                     read=lambda found: read_stripes(found)[:3], locate=Stripes())
    try:
        assert main(["train", *COMMON[:2], "--dataset", "three_test", *COMMON[4:], "--method", "vanilla",
                     "--out", str(tmp_path / "t")]) == 2
        assert "dataset 'three_test': its reader returned 3 values: return (x_train, y_train, x_test, y_test)" \
            in capsys.readouterr().err
    finally:
        REGISTRY.pop("three_test", None)


def test_register_functions_take_replace_as_the_duplicate_message_says():
    from nvcim.models import MODELS, register_model

    with pytest.raises(ValueError, match=r"variation 'gaussian' is already registered: choose another name \(or "
                                         r"pass replace=True to register_variation"):
        register_variation("gaussian")(Uniform)
    tiny = MODELS["tiny"]
    try:
        register_model("tiny", replace=True)(lambda **kw: None)
        assert MODELS["tiny"] is not tiny
    finally:
        MODELS.register("tiny", tiny, replace=True)


def test_a_variation_kind_is_a_device_model_by_its_name(tmp_path):
    from nvcim.io.device_models import device_model, list_device_models

    assert device_model("uniform_test", {"sigma": 0.2}).variation == "uniform_test"
    assert "uniform_test" in dict(list_device_models())
    assert "level_dependent" not in dict(list_device_models())  # no device without its multipliers


def test_a_registered_data_set_whose_files_changed_since_training_is_said(tmp_path, capsys):
    """A plugin's data set reads the user's files, which no sha256 of nvcim's guards (npz: files are refused when
    they change): evaluating after they changed went on silently; the held-out split's sha256 now says so."""
    seed = {"value": 0}

    def read(_found):
        g = np.random.default_rng(seed["value"])
        x = (g.random((180, 8, 8)) * 255).astype(np.uint8)
        y = g.integers(0, 3, 180)
        return x[:120], y[:120], x[120:], y[120:]

    register_dataset(DatasetInfo("shifting_test", 3, 1, 8, (0.5,), (0.5,), augment=False), read=read,
                     locate=Stripes())
    try:
        ck = tmp_path / "ck"
        assert main(["train", *COMMON[:2], "--dataset", "shifting_test", *COMMON[4:], "--method", "vanilla",
                     "--out", str(ck)]) == 0
        capsys.readouterr()
        assert main(["eval", str(ck), "--runs", "2", "--sigma", "0.1"]) == 0
        assert "drawn now is not the one" not in capsys.readouterr().err
        seed["value"] = 1  # other files under the same name
        assert main(["eval", str(ck), "--runs", "2", "--sigma", "0.1"]) == 0
        assert "the val split of shifting_test drawn now is not the one checkpoint" in capsys.readouterr().err
    finally:
        REGISTRY.pop("shifting_test", None)


def test_a_plugin_kind_with_nested_options_is_probed_once_and_works():
    """The first-use probe keyed its cache on the options: a per-level table (a list of lists) raised a bare
    "unhashable type: 'list'" in DeviceConfig (a review)."""
    from nvcim.core.config import DeviceConfig

    class Tabled(Uniform):
        options = {"table": None}

    register_variation("tabled_test")(Tabled)
    try:
        for _ in range(2):
            cfg = DeviceConfig(sigma=0.1, variation="tabled_test", variation_options={"table": [[1, 2], [3, 4]]})
        assert cfg.variation == "tabled_test" and DeviceConfig.from_dict(cfg.to_dict()) == cfg
    finally:
        VARIATIONS.unregister("tabled_test")
