"""Users extend the CLI without forking: --plugin / NVCIM_PLUGINS, a model of their own, their own data as NPZ."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nvcim import plugins
from nvcim.cli import main

PLUGIN = textwrap.dedent('''
    """A user's module: an MLP for 8x8 images, registered under a name nvcim has never seen."""
    from torch import nn
    from nvcim.models import register_model

    @register_model("plug_mlp_test")
    def plug_mlp(num_classes=3, in_channels=1, width=1.0, image_size=8):
        hidden = max(1, int(32 * width))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))
''')


def _npz(path: Path, seed: int = 0) -> Path:
    g = np.random.default_rng(seed)
    y_train, y_test = g.integers(0, 3, 96), g.integers(0, 3, 48)
    x_train = (g.random((96, 8, 8)) * 60 + y_train[:, None, None] * 60).astype(np.uint8)  # class = brightness
    x_test = (g.random((48, 8, 8)) * 60 + y_test[:, None, None] * 60).astype(np.uint8)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _run(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "nvcim", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("plug")
    plugin = d / "my_models.py"
    plugin.write_text(PLUGIN)
    data = _npz(d / "my_data.npz")
    ckpt = d / "ckpt"
    rc = main(["train", "--plugin", str(plugin), "--model", "plug_mlp_test", "--dataset", f"npz:{data}",
               "--method", "noise_injection", "--sigma", "0.1", "--epochs", "2", "--batch-size", "16",
               "--val-runs", "2", "--quiet", "--num-threads", "1", "--out", str(ckpt)])
    assert rc == 0
    return plugin, data, ckpt


def test_plugin_model_trains_on_npz_data_and_the_checkpoint_says_so(trained):
    plugin, data, ckpt = trained
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["name"] == "plug_mlp_test" and config["model"]["image_size"] == 8
    assert config["plugins"] == [str(plugin.resolve())]
    assert config["data"]["name"] == f"npz:{data}"
    assert config["data"]["file"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_plugin_model_evaluates_and_the_help_lists_it(trained, tmp_path, capsys):
    plugin, _, ckpt = trained
    out = tmp_path / "mc.json"
    assert main(["eval", str(ckpt), "--plugin", str(plugin), "--runs", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["runs"] == 4 and res["n_samples"] == 48
    r = _run(["train", "--plugin", str(plugin), "--help"])  # the README: plugin names appear in --help
    assert r.returncode == 0 and "plug_mlp_test" in " ".join(r.stdout.split()), r.stdout
    pct = tmp_path / "pct.py"  # a name holding '%' (argparse's format character) must not break --help
    pct.write_text("import torch.nn as nn\nfrom nvcim.models import register_model\n\n\n@register_model('net_100%')\n"
                   "def net(num_classes=10, in_channels=1, image_size=32):\n    return nn.Flatten()\n")
    r = _run(["train", "--plugin", str(pct), "--help"])
    assert r.returncode == 0 and "net_100%," in r.stdout, r.stderr


def test_missing_plugin_is_named_and_env_var_loads_it(trained):
    plugin, _, ckpt = trained
    r = _run(["eval", str(ckpt), "--runs", "2"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--plugin {plugin.resolve()}" in r.stderr and plugins.ENV_VAR in r.stderr
    r = _run(["eval", str(ckpt), "--runs", "2"], {plugins.ENV_VAR: str(plugin)})
    assert r.returncode == 0, r.stderr


def test_a_different_file_under_the_same_name_is_refused(trained, tmp_path):
    plugin, data, ckpt = trained
    copy = tmp_path / "ckpt"
    import shutil

    shutil.copytree(ckpt, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data"]["file"]["sha256"] = "0" * 64  # as if trained on another file of that name
    (copy / "config.json").write_text(json.dumps(cfg))
    r = _run(["eval", str(copy), "--plugin", str(plugin), "--runs", "2"])
    assert r.returncode == 2 and "the file changed since checkpoint" in r.stderr, r.stderr


def test_bad_plugins_are_one_line_errors(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    for spec, text in ((str(tmp_path / "nope.py"), "does not exist"), (str(bad), "RuntimeError: boom"),
                       ("no_such_module_xyz", "ModuleNotFoundError")):
        r = _run(["train", "--plugin", spec, "--help"])
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr


def test_plugin_model_in_a_process_pool_sweep(trained, tmp_path):
    """Spawned sweep workers import the parent's plugins before running a cell."""
    plugin, data, _ = trained
    spec = tmp_path / "spec.toml"
    spec.write_text(f'''
name = "plugged"
models = ["plug_mlp_test"]
datasets = ["npz:{data}"]
methods = ["noise_injection"]
sigmas = [0.1]
seeds = [0, 1]
[train]
epochs = 1
batch_size = 16
val_runs = 2
[eval]
runs = 2
val_runs = 2
''')
    rc = main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--workers", "2", "--quiet", "--plugin", str(plugin)])
    assert rc == 0
    assert len(list((tmp_path / "sw").rglob("result.json"))) == 2


def test_a_sweep_cell_trained_on_another_version_of_its_npz_file_is_stale(trained, tmp_path, capsys):
    """A finished cell keeps the sha256 of its npz: file; after the file changes it is stale (dry run says so, the run
    refuses before any work), as it is for a cell defined before cells recorded the file (judged by its result)."""
    plugin, _, _ = trained
    data = _npz(tmp_path / "d.npz")
    spec = tmp_path / "spec.toml"
    spec.write_text(f'models = ["plug_mlp_test"]\ndatasets = ["npz:{data}"]\nmethods = ["vanilla"]\nsigmas = [0.1]\n'
                    'seeds = [0]\n[train]\nepochs = 1\nbatch_size = 16\nval_runs = 2\n[eval]\nruns = 2\nval_runs = 2\n')
    out = tmp_path / "sw"
    sweep_args = ["sweep", str(spec), "--out", str(out), "--workers", "1", "--quiet", "--plugin", str(plugin)]
    assert main(sweep_args) == 0
    (cell_json,) = out.rglob("cell.json")
    assert json.loads(cell_json.read_text())["data_file"] == hashlib.sha256(data.read_bytes()).hexdigest()
    original = data.read_bytes()
    _npz(data, seed=1)  # another version of the file under the same name
    capsys.readouterr()
    assert main([*sweep_args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "stale " in printed and "another version of the data file" in printed, printed
    r = _run(sweep_args[:-2] + ["--plugin", str(plugin)])
    assert r.returncode == 2 and f"trained on another version of {data}" in r.stderr, r.stderr
    # a cell.json written before cells recorded the file: its result's checkpoint record decides
    old = json.loads(cell_json.read_text())
    del old["data_file"]
    cell_json.write_text(json.dumps(old))
    r = _run(sweep_args[:-2] + ["--plugin", str(plugin), "--dry-run"])
    assert r.returncode == 0 and "stale " in r.stdout and "another version of the data file" in r.stdout, r.stdout
    data.write_bytes(original)
    r = _run(sweep_args[:-2] + ["--plugin", str(plugin), "--dry-run"])
    assert r.returncode == 0 and "1 done, 0 stale" in r.stdout, r.stdout
    # such a cell's partial work (no result yet), trained on this file, is resumed, not removed as another definition's
    from nvcim.sweep import expand, load_spec
    from nvcim.sweep import cell_run
    from nvcim.sweep.cell_run import run_cell
    from nvcim.sweep.files import prepare_cell_dir

    (cell_json.parent / "result.json").unlink()
    (cell,) = expand(load_spec(spec))
    prepare_cell_dir(out, cell, old["threads"])
    assert (cell_json.parent / "checkpoint" / "model.safetensors").is_file()
    # a file edited while the sweep runs: the cell fails instead of training on another version than its definition's
    _npz(data, seed=2)
    cell_run._SPLITS_CACHE.clear()  # as in a fresh worker process (a worker's cached splits are the version it read)
    summary = run_cell(cell, out, 1)
    assert summary["status"] == "failed" and "is not the one the sweep was started with" in summary["error"], summary


def test_the_device_matrix_refuses_a_column_the_model_cannot_run_before_any_cell(tmp_path, capsys, monkeypatch):
    """A user's model with a transposed convolution under a device with ADCs: one line naming the checkpoint, the
    column and the layer, before the other columns' cells ran (it stopped at that column, after printing the first
    cells, and wrote nothing)."""
    import nvcim.cli.eval_matrix

    plugin = tmp_path / "conv1d_models.py"
    plugin.write_text(textwrap.dedent('''
        from torch import nn
        from nvcim.models import register_model

        @register_model("plug_conv1d_test")
        def plug_conv1d(num_classes=3, in_channels=1, width=1.0, image_size=8):
            return nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(in_channels, 4, 3), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * (image_size * image_size + 2), num_classes))
    '''))
    data = _npz(tmp_path / "d.npz")
    ckpt = tmp_path / "ck"
    assert main(["train", "--plugin", str(plugin), "--model", "plug_conv1d_test", "--dataset", f"npz:{data}",
                 "--method", "vanilla", "--epochs", "1", "--batch-size", "16", "--val-runs", "2", "--quiet",
                 "--num-threads", "1", "--out", str(ckpt)]) == 0
    (tmp_path / "adc.toml").write_text("adc_bits = 6\n")

    def no_cells(*a, **k):
        raise AssertionError("a cell ran")

    monkeypatch.setattr(nvcim.cli.eval_matrix, "device_matrix", no_cells)
    capsys.readouterr()
    rc = main(["eval", str(ckpt), "--plugin", str(plugin), "--device-models", f"gaussian,{tmp_path / 'adc.toml'}",
               "--runs", "2", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"checkpoint {ckpt} under {tmp_path / 'adc.toml'}: layer '1' (ConvTranspose1d) cannot run the ADC" in err[0]
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("body, text", [
    ("return (self.net(x), x)", "returns a tuple, not a tensor of logits"),
    ("return self.net(x)[:, :2]", "returns shape [2, 2] for 2 images"),
    ("return (self.net(x), x) if self.training else self.net(x)",
     "returns a tuple in training mode (e.g. auxiliary outputs), not a tensor of logits"),
])
def test_a_model_whose_output_is_no_logits_is_one_line_before_training(tmp_path, body, text):
    """A user's forward returning a tuple, or fewer classes than the data set has, crashed inside the loss (IndexError /
    TypeError traceback, exit 1)."""
    plugin = tmp_path / "odd.py"
    plugin.write_text(textwrap.dedent(f'''
        from torch import nn
        from nvcim.models import register_model

        class Odd(nn.Module):
            def __init__(self, num_classes, image_size):
                super().__init__()
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, num_classes))

            def forward(self, x):
                {body}

        @register_model("odd_out_test")
        def odd(num_classes=3, in_channels=1, width=1.0, image_size=8):
            return Odd(num_classes, image_size)
    '''))
    data = _npz(tmp_path / "d.npz")
    r = _run(["train", "--plugin", str(plugin), "--model", "odd_out_test", "--dataset", f"npz:{data}", "--method",
              "noise_injection", "--epochs", "1", "--quiet", "--out", str(tmp_path / "ck")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr
    assert not (tmp_path / "ck").exists()


def test_a_plugin_edited_between_runs_makes_its_cells_stale_and_the_report_warns(trained, tmp_path, capsys):
    """A sweep cell and a checkpoint record the plugins' code (nvcim.plugins.fingerprint) when a plugin builds the
    model: after the plugin file changes, the finished cell is stale (a new user's trial pooled two architectures in
    one report arm), and `nvcim report` names an arm whose models come from two versions of the code."""
    _, data, _ = trained
    plugin = tmp_path / "my_models.py"
    plugin.write_text(PLUGIN)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'models = ["plug_mlp_test"]\ndatasets = ["npz:{data}"]\nmethods = ["vanilla"]\nsigmas = [0.1]\n'
                    'seeds = [0]\n[train]\nepochs = 1\nbatch_size = 16\nval_runs = 2\n[eval]\nruns = 2\nval_runs = 2\n')
    out = tmp_path / "sw"
    sweep_args = ["sweep", str(spec), "--out", str(out), "--workers", "1", "--quiet", "--plugin", str(plugin)]
    r = _run(sweep_args)
    assert r.returncode == 0, r.stderr
    (cell_json,) = out.rglob("cell.json")
    code = json.loads(cell_json.read_text())["plugin_code"]
    assert code and json.loads((cell_json.parent / "checkpoint" / "config.json").read_text())["plugins_sha256"] == code
    plugin.write_text(PLUGIN.replace("32 * width", "48 * width"))  # another architecture under the same name
    r = _run([*sweep_args, "--dry-run"])
    assert r.returncode == 0 and "built by another version of the plugins' code" in r.stdout, r.stdout
    r = _run(sweep_args)
    assert r.returncode == 2 and "built by another version of the plugins' code" in r.stderr, r.stderr
    assert "--accept-plugin-change" in r.stderr
    # the user vouches that the edit does not touch the cell (a new user's trial: a comment made all 20 cells stale,
    # with no way on but deleting them): it counts as done, and keeps what it was built by
    r = _run([*sweep_args, "--accept-plugin-change", "--dry-run"])
    assert r.returncode == 0 and "1 done, 0 stale" in r.stdout, r.stdout
    r = _run([*sweep_args, "--accept-plugin-change"])
    assert r.returncode == 0 and "1 done (0 this run)" in r.stdout + r.stderr, r.stdout + r.stderr
    assert json.loads((cell_json.parent / "checkpoint" / "config.json").read_text())["plugins_sha256"] == code
    # two checkpoints of one arm built by the two versions: the report says it pools them
    r = _run(["sweep", str(spec), "--out", str(tmp_path / "sw2"), "--workers", "1", "--quiet", "--plugin", str(plugin)])
    assert r.returncode == 0, r.stderr
    r = _run(["report", str(out), str(tmp_path / "sw2"), "--out", str(tmp_path / "rep"), "--plugin", str(plugin)])
    assert r.returncode == 0 and "2 different versions of the plugins' code" in r.stderr, r.stderr
    # nvcim's own models are not tied to a plugin loaded beside them
    from nvcim.sweep.cells import _plugin_code

    assert _plugin_code("vgg8", "ovf", "mnist5k", "gaussian") is None


def test_a_plugin_file_imports_a_module_beside_it(tmp_path):
    # `from tfplug import ...` in a plugin failed with ModuleNotFoundError unless PYTHONPATH held its directory
    d = tmp_path / "mine"
    d.mkdir()
    (d / "helper_blocks_x.py").write_text("from torch import nn\n\n\ndef block(n):\n    return nn.Linear(n, 3)\n")
    (d / "entry.py").write_text(textwrap.dedent('''
        from torch import nn
        from helper_blocks_x import block
        from nvcim.models import register_model

        @register_model("plug_sibling_test")
        def net(num_classes=3, in_channels=1, width=1.0, image_size=8):
            return nn.Sequential(nn.Flatten(), block(in_channels * image_size * image_size))
    '''))
    r = _run(["train", "--plugin", str(d / "entry.py"), "--help"])
    assert r.returncode == 0 and "plug_sibling_test" in r.stdout, r.stderr


def test_plugin_fingerprint_is_the_code_not_its_place_and_covers_data_sets_built_from_nvcims_readers(tmp_path,
                                                                                                     monkeypatch):
    """The same plugin file in two directories has one fingerprint (a moved checkout keeps its cells), and a data set a
    plugin registers with nvcim's own reader and locator is the plugin's (its cells record the plugins' code)."""
    from nvcim.data.registry import REGISTRY, DatasetInfo, register_dataset
    from nvcim.sweep.cells import _plugin_code

    prints = []
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "same.py").write_text("X = 1\n")
        monkeypatch.setattr(plugins, "_LOADED", [str(tmp_path / where / "same.py")])
        prints.append(plugins.fingerprint())
    assert prints[0] == prints[1]
    (tmp_path / "b" / "same.py").write_text("X = 2\n")
    assert plugins.fingerprint() != prints[0]
    before = {kind: set(reg.names()) for kind, reg in plugins._registries().items()}
    monkeypatch.setattr(plugins, "_NVCIM_NAMES", before)
    mnist = REGISTRY.get("mnist5k")
    register_dataset(DatasetInfo(**{**mnist.info.__dict__, "name": "plug_kmnist_test"}), read=mnist.read,
                     locate=mnist.locate)  # nvcim's own reader and locator, registered by a plugin
    try:
        assert _plugin_code("vgg8", "ovf", "plug_kmnist_test", "gaussian") == plugins.fingerprint()
        assert _plugin_code("vgg8", "ovf", "mnist5k", "gaussian") is None
    finally:
        REGISTRY.unregister("plug_kmnist_test")


def test_plugin_fingerprint_covers_the_modules_beside_a_plugin_file_that_it_imports(tmp_path, monkeypatch):
    """Editing a helper module, package or namespace package that a plugin file imports from beside it changes the
    fingerprint (a sweep cell built by the old helper is stale); a module beside it that the plugin did not import
    does not, even when this process imported it first (the fingerprint is the plugin's, not the process's)."""
    d = tmp_path / "mine"
    for sub in ("helper_pkg_fp", "helper_ns_fp"):
        (d / sub).mkdir(parents=True)
    (d / "helper_mod_fp.py").write_text("WIDTH = 3\n")
    (d / "helper_pkg_fp" / "__init__.py").write_text("from .blocks import DEPTH\n")
    (d / "helper_pkg_fp" / "blocks.py").write_text("DEPTH = 2\n")
    (d / "helper_ns_fp" / "util.py").write_text("KIND = 1\n")  # no __init__.py: a namespace package
    (d / "unused_fp.py").write_text("X = 1\n")
    (d / "entry_fp.py").write_text("import helper_mod_fp\nimport helper_pkg_fp\nfrom helper_ns_fp import util\n")
    monkeypatch.setattr(plugins, "_LOADED", [])
    monkeypatch.setattr(plugins, "_DIGESTS", {})
    monkeypatch.setattr(plugins, "_BESIDE", {})
    monkeypatch.setattr(sys, "path", [*sys.path, str(d)])
    names = ("helper_mod_fp", "helper_pkg_fp", "helper_pkg_fp.blocks", "helper_ns_fp", "helper_ns_fp.util", "unused_fp")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import helper_mod_fp  # noqa: F401  imported before the plugin: still the plugin's, through its globals
    import unused_fp  # noqa: F401  beside it, imported by this process, not by the plugin

    name = plugins.load_plugin(str(d / "entry_fp.py"))
    try:
        assert [n for n, _ in plugins.sources(name)] == [
            "entry_fp.py", "helper_mod_fp.py", "helper_ns_fp/util.py", "helper_pkg_fp/__init__.py",
            "helper_pkg_fp/blocks.py"]
        prints = [plugins.fingerprint()]
        (d / "unused_fp.py").write_text("X = 2\n")
        assert plugins.fingerprint() == prints[0]
        for f, text in (("helper_pkg_fp/blocks.py", "DEPTH = 3\n"), ("helper_mod_fp.py", "WIDTH = 4\n"),
                        ("helper_ns_fp/util.py", "KIND = 2\n")):
            (d / f).write_text(text)
            assert plugins.fingerprint() == prints[-1]  # this process imported the old code: its fingerprint stays
            plugins._DIGESTS[name] = plugins._digest(name)  # ... a new process imports the edited code
            prints.append(plugins.fingerprint())
        assert len(set(prints)) == 4
    finally:
        for mod in [m for m in sys.modules if m.split(".")[0] in names or
                    str(getattr(sys.modules[m], "__file__", "") or "").startswith(str(d))]:
            sys.modules.pop(mod, None)


def test_another_npz_file_is_normalized_with_the_checkpoints_training_statistics(trained, tmp_path, capsys):
    # eval on another npz file with the same test images but a different x_train normalized them with that file's
    # x_train statistics: clean accuracy moved (100 % -> 38.75 % in a user's trial), nothing said
    plugin, data, ckpt = trained
    config = json.loads((ckpt / "config.json").read_text())
    assert len(config["data"]["normalization"]["mean"]) == 1  # recorded at training, per channel
    arrays = dict(np.load(data))
    arrays["x_train"] = (arrays["x_train"] * 0.3).astype(np.uint8)  # other training images, the same test set
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    results = []
    for extra in ([], ["--dataset", f"npz:{other}"]):
        out = tmp_path / f"e{len(extra)}.json"
        assert main(["eval", str(ckpt), "--plugin", str(plugin), "--runs", "2", "--out", str(out), *extra]) == 0
        results.append(json.loads(out.read_text())["results"][0])
    assert results[1]["clean_accuracy"] == results[0]["clean_accuracy"]
    assert results[1]["per_run_correct"] == results[0]["per_run_correct"]
    assert "normalizing npz:" in capsys.readouterr().err


def test_eval_of_a_checkpoint_under_edited_plugin_code_warns_and_a_shape_change_names_the_edit(tmp_path):
    """A new user changed one activation in their plugin: `nvcim eval` printed 41.5 % (70.8 % before) without a word,
    although the checkpoint records the plugins' code; a changed layer size was "config.json and model.safetensors
    come from different models"."""
    plugin = tmp_path / "my_models.py"
    plugin.write_text(PLUGIN)
    data = _npz(tmp_path / "d.npz")
    ck = tmp_path / "ck"
    r = _run(["train", "--plugin", str(plugin), "--model", "plug_mlp_test", "--dataset", f"npz:{data}", "--method",
              "noise_injection", "--sigma", "0.1", "--epochs", "1", "--batch-size", "16", "--val-runs", "2",
              "--quiet", "--out", str(ck)])
    assert r.returncode == 0, r.stderr
    evaluate = ["eval", str(ck), "--plugin", str(plugin), "--runs", "2"]
    r = _run(evaluate)
    assert r.returncode == 0 and "other code of its plugin" not in r.stderr, r.stderr
    assert _run([*evaluate, "--out", str(tmp_path / "same.json")]).returncode == 0
    plugin.write_text(PLUGIN.replace("nn.ReLU()", "nn.Tanh()"))
    r = _run([*evaluate, "--out", str(tmp_path / "edited.json")])
    assert r.returncode == 0 and "saved under other code of its plugin(s)" in r.stderr, r.stderr
    # the result file says which code evaluated it, and a report of it says that it is not the trained one
    from nvcim.report import scan_results

    codes = {f: json.loads((tmp_path / f).read_text()).get("plugins_sha256") for f in ("same.json", "edited.json")}
    assert None not in codes.values() and codes["same.json"] != codes["edited.json"]
    assert codes["same.json"] == json.loads((ck / "config.json").read_text())["plugins_sha256"]
    (tmp_path / "one").mkdir()
    (tmp_path / "edited.json").rename(tmp_path / "one" / "edited.json")
    notes = scan_results(tmp_path / "one").notes
    assert any(n.startswith("1 model(s) evaluated under other code of their plugins than they were trained with")
               for n in notes), notes
    plugin.write_text(PLUGIN.replace("32 * width", "48 * width"))
    r = _run(evaluate)
    assert r.returncode == 2 and "the plugins' code that builds it changed since it was saved" in r.stderr, r.stderr


def test_a_checkpoint_whose_variation_a_missing_plugin_registers_names_the_plugin(tmp_path):
    """Was "variation='laplace' is unknown ...: fix config.json": the file is right, the plugin is missing."""
    from nvcim.io.checkpoint import CheckpointError, read_checkpoint_config

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model": {"name": "tiny"}, "device": {"sigma": 0.2,
                                                "variation": "laplace_gone"}, "plugins": ["/elsewhere/p2.py"]}))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint_config(ck)
    msg = str(e.value)
    assert "variation='laplace_gone' is unknown" in msg and "fix config.json" not in msg
    assert "it was saved with plugin(s) ['/elsewhere/p2.py'], not loaded now: pass --plugin /elsewhere/p2.py" in msg


def test_abbreviated_plugin_flags_are_loaded_too():
    """argparse takes --plug as --plugin, but the plugins were read before parsing by the full name only: a plugin
    given as --plug was never loaded and nvcim's own model of that name trained (a plugin review, session 34)."""
    assert plugins.plugin_args(["train", "--plug", "a.py", "--plu=b.py", "--plugin", "c.py", "--pl", "x"]) == \
        ["a.py", "b.py", "c.py"]


def test_the_fingerprint_is_the_code_imported_not_the_file_edited_since(tmp_path, monkeypatch):
    """A plugin edited while a training ran: the checkpoint recorded the edited file's digest, so the new code
    evaluated it without a word."""
    monkeypatch.setattr(plugins, "_LOADED", [])
    monkeypatch.setattr(plugins, "_DIGESTS", {})
    f = tmp_path / "edited_later.py"
    f.write_text("X = 1\n")
    plugins.load_plugin(str(f))
    imported = plugins.fingerprint()
    f.write_text("X = 2\n")
    assert plugins.fingerprint() == imported


def test_a_checkpoint_saved_with_a_plugin_not_loaded_now_warns_even_when_it_builds(tmp_path):
    """A plugin that replaced the built-in `tiny` (or another copy of the plugin) left out at eval: 73 % became 35 %
    without a word, because the recorded plugins were read only when the model failed to build."""
    from nvcim.io.checkpoint import load_checkpoint, save_checkpoint
    from nvcim.models import create_model

    ck = save_checkpoint(tmp_path / "ck", create_model("tiny", 10, 1), {"name": "tiny", "num_classes": 10,
                                                                        "in_channels": 1})
    config = json.loads((ck / "config.json").read_text())
    config["plugins"] = ["/elsewhere/shadow_tiny.py"]
    (ck / "config.json").write_text(json.dumps(config))
    with pytest.warns(RuntimeWarning, match=r"may now come from other code.*shadow_tiny.py'\], not loaded now"):
        load_checkpoint(ck)


_METHOD_PLUGIN = '''
from dataclasses import dataclass
import torch.nn.functional as F
from nvcim.methods.base import Method, Option, TrainingTask, register_method


@dataclass(frozen=True)
class Cfg:
    name = "plug_{name}"
    {option}: float = 0.1


class Task(TrainingTask):
    def __init__(self, model, device_cfg, method_cfg):
        super().__init__(model, device_cfg, method_cfg)
        self._apply_variation()

    def forward(self, x, y):
        out = self.model(x)
        return F.cross_entropy(out, y), out


@register_method
class M(Method):
    name = "plug_{name}"
    label = "plug"
    options = (Option("{option}", {type}, 0.1, "a plugin option"),)
    config = Cfg
    task = Task
'''


@pytest.mark.parametrize("option,type_,ok", [("lr", '"float"', False), ("alpha_x", "float", True)])
def test_a_plugin_methods_option_is_one_line_or_works(tmp_path, option, type_, ok):
    """An option named like nvcim train's own flag (--lr) crashed every command with an argparse traceback, and the
    docstring's template Option("alpha", float, ...) (a Python type) crashed with a KeyError (a plugin review)."""
    f = tmp_path / f"m_{option}.py"
    f.write_text(_METHOD_PLUGIN.format(name=option, option=option, type=type_))
    r = _run(["train", "--help", "--plugin", str(f)])
    if ok:
        assert r.returncode == 0 and "--alpha-x" in r.stdout, r.stderr
    else:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--lr" in r.stderr, r.stderr


def test_a_plugin_variation_named_like_a_preset_is_refused_where_it_is_ambiguous(tmp_path):
    f = tmp_path / "v_rram4.py"
    f.write_text("import torch\nfrom nvcim import register_variation\nfrom nvcim.core.variation import Variation\n\n\n"
                 "@register_variation('rram4')\nclass Mine(Variation):\n    fast_path_exact = False\n\n"
                 "    def sample(self, levels, sigma, cfg, generator):\n"
                 "        z = torch.randn(levels.shape, generator=generator, dtype=levels.dtype, device=levels.device)\n"
                 "        return z * sigma * cfg.device_levels\n")
    r = _run(["eval", "--list-device-models", "--device-model", "rram4", "--plugin", str(f)])
    assert r.returncode == 2 and "both one of nvcim's and a variation kind a plugin registers" in r.stderr, r.stderr


def test_a_search_is_labelled_by_the_parameter_its_result_records():
    """Without the plugin loaded, a plugin method's alpha search was labelled β (its result records "alpha")."""
    from nvcim.report.tables import _searched

    assert _searched({"method": "plug_smooth", "beta_search": {"parameter": "alpha"}}) == "alpha"
    assert _searched({"method": "ovf", "beta_search": {"chosen_beta": 1e-3}}) == "beta"


def test_a_plugin_that_fails_half_way_leaves_no_registration_behind(tmp_path, monkeypatch):
    """Its first registration stayed: the fixed file then failed with "already registered" in the same process."""
    from nvcim.models import MODELS

    monkeypatch.setattr(plugins, "_LOADED", [])
    f = tmp_path / "half.py"
    f.write_text("from nvcim.models import register_model\n\n\n@register_model('half_way_net')\n"
                 "def build(num_classes=10, in_channels=1, width=1.0, image_size=32):\n    raise NotImplementedError\n\n\n"
                 "raise RuntimeError('later bug')\n")
    with pytest.raises(plugins.PluginError, match="later bug"):
        plugins.load_plugin(str(f))
    assert "half_way_net" not in MODELS
    f.write_text(f.read_text().replace("raise RuntimeError('later bug')", "FIXED = True"))
    try:
        plugins.load_plugin(str(f))
        assert "half_way_net" in MODELS
    finally:
        MODELS.unregister("half_way_net")


def test_register_variation_misused_says_how_to_use_it():
    from nvcim.core.variation import register_variation

    with pytest.raises(TypeError, match="decorates a subclass of nvcim.core.variation.Variation"):
        register_variation("not_a_class_kind")(lambda: 1)
    with pytest.raises(TypeError, match=r'takes the kind.s name: write @register_variation\("my_kind"\)'):
        register_variation(type("Bare", (), {}))


def test_a_method_whose_task_forgets_the_device_model_is_refused(tmp_path, monkeypatch):
    """It trained noise-free while the summary showed the training σ (a plugin review, session 34)."""
    from nvcim.methods import METHODS, create_task
    from nvcim.models import create_model

    monkeypatch.setattr(plugins, "_LOADED", [])
    f = tmp_path / "m_forgot.py"
    f.write_text(_METHOD_PLUGIN.format(name="forgot", option="gamma_f", type='"float"')
                 .replace("        self._apply_variation()\n", ""))
    plugins.load_plugin(str(f))
    try:
        with pytest.raises(TypeError, match=r"put no device model on the network: call self._apply_variation\(\)"):
            create_task("plug_forgot", create_model("tiny", 10, 1), __import__("nvcim").DeviceConfig(sigma=0.2))
    finally:
        METHODS.unregister("plug_forgot")
