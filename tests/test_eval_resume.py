"""An interrupted device-model matrix (`nvcim eval CKPT... --device-models A,B,C --out M.json`) resumes: the cells it
finished are kept in M.json.partial/ (nvcim.evaluate.partial) and taken by the same command run again, which ends with
exactly the results of an uninterrupted run; a piece of another evaluation, a damaged one or a user's file is never
taken, and nothing of the user's is removed."""

from __future__ import annotations

import pytest

import nvcim.evaluate.matrix as matrix
from helpers import Interrupted, run_cli, run_cli_err
from nvcim.cli import main
from nvcim.evaluate.files import read_result_file

SMOKE = ["--preset", "smoke", "--limit", "64", "--quiet", "--num-threads", "1", "--val-runs", "2"]
MODELS = "gaussian,rram4,stuck-chen2015"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    for name, method in (("a", "noise_injection"), ("b", "vanilla")):
        assert main(["train", *SMOKE, "--method", method, "--sigma", "0.2", "--out", str(d / name)]) == 0
    return [str(d / "a"), str(d / "b")]


@pytest.fixture
def same_code(monkeypatch):
    """The code's fingerprint of the test's start throughout (an edit of nvcim's sources meanwhile, in a working tree
    others edit, would make every piece another code's: never taken)."""
    import nvcim.evaluate.partial as partial

    monkeypatch.setattr(partial, "code_fingerprint", lambda fixed=partial.code_fingerprint(): fixed)


def matrix_argv(ckpts, out, runs="4"):
    return ["eval", *ckpts, "--device-models", MODELS, "--sigma", "0.2", "--runs", runs, "--seed", "3", "--out",
            str(out)]


def count_evaluations(monkeypatch, stop_after=None):
    """Count the matrix's Monte Carlo evaluations; with stop_after, stop (as a kill would) after that many."""
    real, calls = matrix.monte_carlo_evaluate, []

    def counted(*a, **k):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupted
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(matrix, "monte_carlo_evaluate", counted)
    return calls


def interrupt_matrix(ckpts, out, capsys, monkeypatch, after):
    """Run the matrix into `out`, stopping (as a kill would) after `after` cells."""
    with monkeypatch.context() as m:
        count_evaluations(m, stop_after=after)
        with pytest.raises(Interrupted):
            run_cli(matrix_argv(ckpts, out), capsys)


def cells(path):
    rec = read_result_file(path)
    return [[(r.per_run_correct, r.mean, r.ekl, r.p5) for r in (rec.result(i, j) for j in range(len(rec.cells[i])))]
            for i in range(len(rec.cells))]


def test_an_interrupted_matrix_resumes_with_its_finished_cells(ckpts, tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref.json"
    assert run_cli(matrix_argv(ckpts, ref), capsys)[0] == 0
    out = tmp_path / "m.json"
    interrupt_matrix(ckpts, out, capsys, monkeypatch, after=4)
    partial = tmp_path / "m.json.partial"
    assert len(list(partial.glob("piece-*.json"))) == 4 and not out.exists()
    with monkeypatch.context() as m:
        calls = count_evaluations(m)
        rc, stdout, err = run_cli(matrix_argv(ckpts, out), capsys)
    assert rc == 0 and len(calls) == 2  # only the two cells the first run did not finish
    kept = [line for line in err.splitlines() if "kept from an interrupted run" in line and "below chance" not in line]
    assert len(kept) == 4 and "4 of 6 cells were kept" in stdout  # (a tiny model's kept cells below chance: warned)
    assert cells(out) == cells(ref) and not partial.exists()


def test_a_damaged_piece_is_redone_and_replaced_and_a_users_file_is_kept(ckpts, tmp_path, capsys, monkeypatch,
        same_code):
    """A piece nvcim wrote that a kill or a full disk cut short is nvcim's own damaged file: one warning, its cell
    runs again, the piece is replaced (a later resume takes it) and removed with the others; the user's files stay."""
    from nvcim.evaluate.partial import PartialResults

    ref = tmp_path / "ref.json"
    assert run_cli(matrix_argv(ckpts, ref), capsys)[0] == 0
    out = tmp_path / "m.json"
    interrupt_matrix(ckpts, out, capsys, monkeypatch, after=3)
    partial = tmp_path / "m.json.partial"
    pieces = sorted(partial.glob("piece-*.json"))
    pieces[0].write_text(pieces[0].read_text()[:100])  # truncated
    (partial / "notes.txt").write_text("mine")  # a user's file
    (partial / "piece-mine.json").write_text("{not json")  # a user's file, not of a piece's name
    with monkeypatch.context() as m:
        calls = count_evaluations(m)
        m.setattr(PartialResults, "remove", lambda self: None)  # to see the piece the run put back
        rc, _, err = run_cli(matrix_argv(ckpts, out), capsys)
    assert rc == 0 and len(calls) == 4  # 6 cells, 2 intact pieces taken
    said = [line for line in err.splitlines() if pieces[0].name in line]
    assert len(said) == 1 and "damaged" in said[0] and "not nvcim's" not in said[0], err
    assert cells(out) == cells(ref)
    assert len(list(partial.glob("piece-????????????????.json"))) == 6  # the 3 kept and the 3 this run finished
    assert pieces[0].read_text().endswith("}\n")  # replaced whole
    with monkeypatch.context() as m:  # the replaced piece is taken like any other
        calls = count_evaluations(m)
        rc, stdout, err = run_cli(matrix_argv(ckpts, out), capsys)
    assert rc == 0 and not calls and "6 of 6 cells were kept" in stdout and "but damaged" not in err
    assert cells(out) == cells(ref)
    # nvcim's pieces are gone; the user's files are kept, untouched
    assert sorted(p.name for p in partial.iterdir()) == ["notes.txt", "piece-mine.json"]
    assert (partial / "piece-mine.json").read_text() == "{not json" and err.count("not nvcim's: left there") == 1
    interrupt_matrix(ckpts, out, capsys, monkeypatch, after=2)  # other chips (--runs 5): those pieces are not taken
    with monkeypatch.context() as m:
        calls = count_evaluations(m)
        rc, _, _ = run_cli(matrix_argv(ckpts, out, runs="5"), capsys)
    assert rc == 0 and len(calls) == 6 and read_result_file(out).runs == 5


def test_a_resumed_matrix_cell_with_impossible_numbers_is_redone_not_printed(ckpts, tmp_path, capsys, monkeypatch,
        same_code):
    """A piece whose mean is 150 % (its chips' accuracies left as they were) is damaged: redone, with one warning."""
    import json

    ref = tmp_path / "ref.json"
    assert run_cli(matrix_argv(ckpts, ref), capsys)[0] == 0
    out = tmp_path / "m.json"
    interrupt_matrix(ckpts, out, capsys, monkeypatch, after=2)
    piece = sorted((tmp_path / "m.json.partial").glob("piece-*.json"))[0]
    d = json.loads(piece.read_text())
    d["result"]["mean"] = 150.0
    piece.write_text(json.dumps(d))
    with monkeypatch.context() as m:
        calls = count_evaluations(m)
        rc, stdout, err = run_cli(matrix_argv(ckpts, out), capsys)
    assert rc == 0 and len(calls) == 5 and "150.00" not in stdout + err and "1 of 6 cells were kept" in stdout
    said = [line for line in err.splitlines() if piece.name in line]
    assert len(said) == 1 and "damaged" in said[0] and "mean 150.0" in said[0], err
    assert cells(out) == cells(ref) and not (tmp_path / "m.json.partial").exists()


def test_a_file_where_the_pieces_go_is_refused_before_any_work(ckpts, tmp_path, capsys, monkeypatch):
    (tmp_path / "m.json.partial").write_text("mine")
    calls = count_evaluations(monkeypatch)
    rc, err = run_cli_err(matrix_argv(ckpts, tmp_path / "m.json"), capsys)
    assert rc == 2 and len(err) == 1 and "m.json.partial is a file" in err[0] and not calls
    assert (tmp_path / "m.json.partial").read_text() == "mine" and not (tmp_path / "m.json").exists()


def test_an_interrupted_sigma_curve_resumes_sigma_by_sigma(ckpts, tmp_path, capsys, monkeypatch):
    """The single-checkpoint command (--sigmas / --curve) keeps each finished σ the same way."""
    import nvcim.evaluate.montecarlo as mc

    argv = ["eval", ckpts[0], "--sigmas", "0.1,0.2,0.3", "--runs", "4", "--seed", "2", "--csv"]
    ref, out = tmp_path / "ref.csv", tmp_path / "c.csv"
    assert run_cli([*argv, str(ref)], capsys)[0] == 0
    real, calls = mc._one_sigma, []

    def stop_at_third(*a, **k):
        if len(calls) == 2:
            raise Interrupted
        calls.append(1)
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(mc, "_one_sigma", stop_at_third)
        with pytest.raises(Interrupted):
            run_cli([*argv, str(out)], capsys)
    assert len(list((tmp_path / "c.csv.partial").glob("piece-*.json"))) == 2
    with monkeypatch.context() as m:
        calls.clear()
        m.setattr(mc, "_one_sigma", lambda *a, **k: calls.append(1) or real(*a, **k))
        rc, stdout, _ = run_cli([*argv, str(out)], capsys)
    assert rc == 0 and len(calls) == 1 and "2 of 3 σ were kept" in stdout
    import csv

    def rows(path):  # every column but the wall time
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(path.open())]

    assert rows(out) == rows(ref) and len(rows(out)) == 3 and not (tmp_path / "c.csv.partial").exists()


def interrupted_curve(argv, capsys, monkeypatch, after=1):
    """Run `nvcim eval` ARGV, stopping (as a kill would) after `after` σ; return the count hook for the rerun."""
    import nvcim.evaluate.montecarlo as mc

    real, calls = mc._one_sigma, []

    def counted(*a, **k):
        if stop[0] is not None and len(calls) == stop[0]:
            raise Interrupted
        calls.append(1)
        return real(*a, **k)

    stop = [after]
    monkeypatch.setattr(mc, "_one_sigma", counted)
    with pytest.raises(Interrupted):
        run_cli(argv, capsys)
    stop[0] = None
    calls.clear()
    return calls


def test_a_changed_data_file_code_or_plugin_is_never_mixed_in(ckpts, tmp_path, capsys, monkeypatch):
    """A piece is taken only for the same data file contents and the same code (nvcim, plugins, torch)."""
    import numpy as np

    import nvcim.evaluate.partial as partial

    def data(seed):
        g = np.random.default_rng(seed)
        np.savez(tmp_path / "d.npz", x_train=g.integers(0, 255, (20, 32, 32)).astype(np.uint8),
                 y_train=np.arange(20) % 10, x_test=g.integers(0, 255, (16, 32, 32)).astype(np.uint8),
                 y_test=np.arange(16) % 10)

    data(0)
    argv = ["eval", ckpts[1], "--dataset", f"npz:{tmp_path / 'd.npz'}", "--sigmas", "0.1,0.2", "--runs", "3",
            "--out", str(tmp_path / "n.json")]
    calls = interrupted_curve(argv, capsys, monkeypatch)
    data(1)  # other images under the same name
    assert run_cli(argv, capsys)[0] == 0 and len(calls) == 2
    calls = interrupted_curve(argv, capsys, monkeypatch)
    monkeypatch.setattr(partial, "code_fingerprint", lambda: "other code")  # an edited nvcim, plugin or torch
    assert run_cli(argv, capsys)[0] == 0 and len(calls) == 2


def test_a_built_in_data_sets_replaced_file_is_never_mixed_in(ckpts, tmp_path, capsys, monkeypatch):
    """A built-in data set is named, not fingerprinted by file: a replaced file under the same --data-root (another
    copy of mnist_5k.csv.gz) gave the same key, and the pieces scored on the old images were taken."""
    import gzip

    from nvcim.data.mnist5k import mnist5k_path

    rows = gzip.open(mnist5k_path(), "rt").read().splitlines()
    (tmp_path / "root" / "mnist5k").mkdir(parents=True)

    def write(rows):
        with gzip.open(tmp_path / "root" / "mnist5k" / "mnist_5k.csv.gz", "wt") as f:
            f.write("\n".join(rows) + "\n")

    write(rows)
    argv = ["eval", ckpts[1], "--data-root", str(tmp_path / "root"), "--sigmas", "0.1,0.2", "--runs", "3",
            "--out", str(tmp_path / "n.json")]
    calls = interrupted_curve(argv, capsys, monkeypatch)
    write(rows[::-1])  # the same digits in another order: other test images
    assert run_cli(argv, capsys)[0] == 0 and len(calls) == 2


def test_identical_checkpoints_in_one_run_are_both_evaluated(ckpts, tmp_path, capsys):
    """Only pieces an earlier run left are taken: a copy of a checkpoint in the same matrix is not "kept"."""
    import shutil

    shutil.copytree(ckpts[1], tmp_path / "copy")
    rc, stdout, err = run_cli(["eval", ckpts[1], str(tmp_path / "copy"), "--device-models", "gaussian", "--sigma",
                               "0.2", "--runs", "3", "--out", str(tmp_path / "m.json")], capsys)
    assert rc == 0 and "kept" not in stdout + err


def test_the_pieces_place_is_checked_first_and_a_failed_write_only_loses_the_resume(ckpts, tmp_path, capsys,
                                                                                     monkeypatch):
    import nvcim.evaluate.partial as partial

    (tmp_path / "m.json.partial").symlink_to(tmp_path / "elsewhere")
    argv = ["eval", ckpts[0], "--sigmas", "0.1,0.2", "--runs", "3", "--out"]
    rc, err = run_cli_err([*argv, str(tmp_path / "m.json")], capsys)
    assert rc == 2 and len(err) == 1 and "is a symlink" in err[0] and not (tmp_path / "elsewhere").exists()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(partial, "write_results_json", full)
    rc, _, err = run_cli([*argv, str(tmp_path / "e.json")], capsys)
    assert rc == 0 and (tmp_path / "e.json").is_file() and err.count("cannot keep finished evaluations") == 1


def test_code_fingerprint_covers_a_plugin_given_by_module_name(tmp_path, monkeypatch):
    """A plugin loaded by module name is keyed by its source, not only its name: editing it invalidates the pieces."""
    import sys

    import nvcim.plugins as plugins
    from nvcim.evaluate.partial import code_fingerprint

    pkg = tmp_path / "my_resume_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ext.py").write_text("from my_resume_plugin.part import X\n")
    (pkg / "part.py").write_text("X = 1\n")
    (pkg / ".#part.py").symlink_to(tmp_path / "gone")  # an editor's lock file: a dangling hidden symlink
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_LOADED", [])
    monkeypatch.setattr(plugins, "_DIGESTS", {})
    try:
        before = code_fingerprint()
        plugins.load_plugin("my_resume_plugin.ext")  # a submodule: its package's sources count
        loaded = code_fingerprint()
        (pkg / "part.py").write_text("X = 2\n")  # an edit in a sibling module
        assert code_fingerprint() == loaded  # this process runs the code it imported
        plugins._DIGESTS.clear()  # ... the next run imports the edited code
        assert len({before, loaded, code_fingerprint()}) == 3
    finally:
        for name in ("my_resume_plugin", "my_resume_plugin.ext", "my_resume_plugin.part"):
            sys.modules.pop(name, None)


def test_a_kept_matrix_cell_with_non_finite_logits_warns_again(tmp_path):
    """A matrix cell taken from a piece holding chips with NaN / inf logits repeats the evaluation's warning (a σ curve
    already warns over all its results, kept or not), so a resumed run does not present that accuracy silently."""
    import dataclasses
    import warnings

    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate
    from nvcim.evaluate.matrix import device_matrix
    from nvcim.evaluate.partial import PartialResults

    torch.manual_seed(0)
    model, data = torch.nn.Linear(4, 3), (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    res = monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.1), runs=3, seed=0)
    for nonfinite, warned in ((0, False), (2, True)):
        key = {"cell": nonfinite}
        PartialResults(tmp_path).put(key, dataclasses.replace(res, nonfinite_runs=nonfinite))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = device_matrix([("ckpt", "data", model, data)], ["gaussian"], lambda i, dm: DeviceConfig(sigma=0.1),
                                runs=3, seed=0, partial=PartialResults(tmp_path), key=lambda i, dm: key)
        assert got.cells[0][0]["result"].nonfinite_runs == nonfinite
        said = [str(w.message) for w in caught if "non-finite" in str(w.message)]
        assert len(said) == int(warned) and (not said or "2 of 3 chips" in said[0])


def test_a_truncated_sigma_piece_is_redone_and_the_folder_cleaned_up(ckpts, tmp_path, capsys, monkeypatch,
        same_code):
    """The σ curve's pieces likewise: a truncated one is said once, redone, and the folder goes with the others."""
    argv = ["eval", ckpts[0], "--sigmas", "0.1,0.2,0.3", "--runs", "3", "--seed", "2", "--out"]
    ref, out = tmp_path / "ref.json", tmp_path / "e.json"
    assert run_cli([*argv, str(ref)], capsys)[0] == 0
    calls = interrupted_curve([*argv, str(out)], capsys, monkeypatch, after=2)
    partial = tmp_path / "e.json.partial"
    pieces = sorted(partial.glob("piece-*.json"))
    assert len(pieces) == 2
    with open(pieces[0], "r+") as f:
        f.truncate(100)
    rc, stdout, err = run_cli([*argv, str(out)], capsys)
    assert rc == 0 and len(calls) == 2 and "1 of 3 σ were kept" in stdout
    warned = [line for line in err.splitlines() if "warning" in line and "below chance" not in line]  # (a tiny model)
    assert len(warned) == 1 and pieces[0].name in warned[0] and "damaged" in warned[0], err
    assert not partial.exists()
    got, want = (read_result_file(p).mc_results() for p in (out, ref))
    assert [(r.sigma, r.per_run_correct, r.mean) for r in got] == [(r.sigma, r.per_run_correct, r.mean) for r in want]


def _piece_result():
    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate

    torch.manual_seed(0)
    model, data = torch.nn.Linear(4, 3), (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    return monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.3), runs=4, seed=0)


@pytest.mark.parametrize("field,value,named", [
    ("mean", 150.0, "mean 150.0 is not an accuracy"), ("mean", None, "mean nan"), ("mean", -1.0, "mean -1.0"),
    ("mean", "shift", "not the mean of its chips' accuracies"), ("per_run_accuracy", 150.0, "per_run_accuracy[0]"),
    ("per_run_correct", 1000, "per_run_accuracy[0]"), ("p5", 101.0, "p5 101.0"), ("clean_accuracy", -3.0, "clean"),
    ("ci95", [-5.0, 3.0], "ci95"), ("runs", 9, "runs 9"), ("key", "other", "another evaluation"),
    ("std", 0.0, "std 0.0 is not that of its chips"), ("p5", 0.5, "p5 0.5 is not that of its chips"),
    ("max", 100.0, "max 100.0 is not"), ("ci95", [0.0, 100.0], "ci95 [0.0, 100.0] is not"),
    ("result", None, "cannot be read"),
    # a statistical review (session 34): these edits were taken
    ("ekl", -1.0, "ekl -1.0 does not go with"), ("ekl", None, "ekl nan does not go with"),
    ("ekl_n", -5, "ekl_n -5 is not a count"), ("nonfinite_runs", -3, "nonfinite_runs -3"),
])
def test_a_piece_with_numbers_no_evaluation_gives_is_damaged(tmp_path, field, value, named):
    """get() checks a piece's numbers before trusting them: an accuracy outside [0, 100] % or not finite, chips'
    accuracies that are not their counts, a mean not that of its chips, a wrong chip count are damage, said in one
    warning; the evaluation is put again over it and taken by the next run."""
    import json
    import warnings

    from nvcim.evaluate.partial import PartialResults, implausible

    res, key = _piece_result(), {"cell": 1}
    assert implausible(res) is None
    PartialResults(tmp_path).put(key, res)
    (path,) = tmp_path.glob("piece-*.json")
    d = json.loads(path.read_text())
    r = d["result"]
    if field == "key":
        d["key"] = {"cell": 2}
    elif field == "result":
        del r["per_run_correct"], r["mean"]
        r["n_samples"] = "x"
    elif value == "shift":
        r["mean"] += 0.5
    elif field in ("per_run_accuracy", "per_run_correct"):
        r[field][0] = value
    else:
        r[field] = value
    path.write_text(json.dumps(d))
    partial = PartialResults(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert partial.get(key) is None
        partial.put(key, res)
    assert len(caught) == 1 and "damaged" in str(caught[0].message) and named in str(caught[0].message), \
        [str(w.message) for w in caught]
    again = PartialResults(tmp_path)
    assert again.get(key).to_dict() == res.to_dict() and again.taken == 1
    again.remove()
    assert not tmp_path.exists()


def test_target_precision_and_single_chip_results_are_plausible(tmp_path):
    """The check accepts what nvcim writes: a target-precision result (its mean over the subset chips) and a single
    chip's (NaN spread and CI)."""
    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate
    from nvcim.evaluate.partial import PartialResults, implausible

    torch.manual_seed(0)
    model, data = torch.nn.Linear(4, 3), (torch.randn(64, 4), torch.randint(0, 3, (64,)))
    adaptive = monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.3), seed=0, target_ci=5.0, images_per_chip=16,
                                    max_chips=200)
    one = monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.3), runs=1, seed=0, baselines=False)
    for i, res in enumerate((adaptive, one)):
        assert implausible(res) is None
        PartialResults(tmp_path).put({"i": i}, res)
        got = PartialResults(tmp_path).get({"i": i})
        assert got is not None and got.mean == res.mean


def test_finishing_one_evaluation_keeps_another_evaluations_resume_points(tmp_path):
    """Two evaluations written to one output: the one that finishes removes its own pieces only; the other's (an
    interrupted run with other flags) stay, said in one note (review finding: they were deleted)."""
    import warnings

    from nvcim.evaluate.partial import PartialResults

    res = _piece_result()
    interrupted = PartialResults(tmp_path)
    interrupted.put({"seed": 0, "sigma": 0.1}, res)  # killed before it finished
    run = PartialResults(tmp_path)
    assert run.get({"seed": 1, "sigma": 0.1}) is None
    run.put({"seed": 1, "sigma": 0.1}, res)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.remove()
    assert len(list(tmp_path.glob("piece-*.json"))) == 1 and "keeps 1 finished piece" in str(caught[0].message)
    resumed = PartialResults(tmp_path)
    assert resumed.get({"seed": 0, "sigma": 0.1}).to_dict() == res.to_dict()
    resumed.remove()
    assert not tmp_path.exists()


def test_target_precision_pieces_and_curves_check_what_they_take(tmp_path):
    """A target-precision piece with an edited CI, images_per_chip or full-set count was taken, and a σ 0.2 piece
    holding a σ 0.6 result came back as the curve's first point (a statistical review, session 34)."""
    import json
    import warnings

    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate, robustness_curve
    from nvcim.evaluate.partial import PartialResults, implausible

    torch.manual_seed(0)
    model, data = torch.nn.Linear(4, 3), (torch.randn(64, 4), torch.randint(0, 3, (64,)))
    adaptive = monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.3), seed=0, target_ci=5.0, images_per_chip=16,
                                    max_chips=200)
    for field, value, named in (("ci95", "[0, 100]", "ci95"), ("images_per_chip", 999999, "images_per_chip"),
                                ("full_set_chips", 5, "full_set_chips")):
        d = adaptive.to_dict()
        d[field] = [0.0, 100.0] if value == "[0, 100]" else value
        from nvcim.evaluate.results import MCResult
        assert named in (implausible(MCResult.from_dict(d)) or ""), field
    key = lambda s: {"sigma": s}  # noqa: E731
    curve = robustness_curve(model, data, DeviceConfig(sigma=0.2), [0.2, 0.4], runs=3, seed=0,
                             partial=PartialResults(tmp_path), key=key)
    for path in tmp_path.glob("piece-*.json"):  # every piece now holds σ 0.6's result
        d = json.loads(path.read_text())
        d["result"] = monte_carlo_evaluate(model, data, DeviceConfig(sigma=0.6), runs=3, seed=0).to_dict()
        path.write_text(json.dumps(d))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = robustness_curve(model, data, DeviceConfig(sigma=0.2), [0.2, 0.4], runs=3, seed=0,
                                 partial=PartialResults(tmp_path), key=key)
    assert [r.sigma for r in again] == [0.2, 0.4] and [r.mean for r in again] == [r.mean for r in curve]
    assert any("holds σ=0.6" in str(w.message) for w in caught)


def test_read_batch_of_a_target_precision_result_is_its_subset_chips(tmp_path):
    import torch

    from nvcim import DeviceConfig
    from nvcim.evaluate import monte_carlo_evaluate

    torch.manual_seed(0)
    model, data = torch.nn.Linear(4, 3), (torch.randn(64, 4), torch.randint(0, 3, (64,)))
    cfg = DeviceConfig(sigma=0.3, read_sigma=0.05)
    r = monte_carlo_evaluate(model, data, cfg, seed=0, target_ci=5.0, images_per_chip=16, max_chips=200,
                             batch_size=1024)
    assert r.read_batch == 16  # (it said 64: the full-set pilot chips', not those the mean is over)
