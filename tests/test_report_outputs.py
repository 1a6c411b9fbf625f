"""Issue 16 in `nvcim report`: files in --out that nvcim report did not write are refused (exit 2, one line),
never overwritten; its own earlier files (those under docs/reproduction included) are replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvcim.cli import main
from test_report import mc_eval, mc_result, write


def _cell(sigma, acc, seed=0):
    return mc_eval("ovf", sigma, seed, [mc_result(sigma, acc)])


@pytest.mark.parametrize("name", ["report.md", "report.html", "summary.csv", "seeds.csv", "paired.csv"])
def test_a_users_file_in_out_is_refused_and_kept(tmp_path, capsys, name):
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("my own notes\n")
    assert main(["report", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / name) in err and "not written by nvcim report" in err
    assert "--out" in err
    assert (out / name).read_text() == "my own notes\n"
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written


def test_a_users_figure_is_refused_and_kept(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out)]) == 0
    fig = sorted((out / "figures").iterdir())[0]
    fig.write_bytes(b"\x89PNG\r\n\x1a\nmy photo")
    capsys.readouterr()
    assert main(["report", str(root), "--out", str(out)]) == 2
    assert str(fig) in capsys.readouterr().err
    assert fig.read_bytes() == b"\x89PNG\r\n\x1a\nmy photo"


def test_nvcim_reports_own_files_are_replaced(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--title", "first"]) == 0
    write(root / "b.json", _cell(0.3, [80.0, 81.0], seed=1))
    assert main(["report", str(root), "--out", str(out), "--title", "second"]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# second\n") and "80.50" in md


def test_committed_reports_are_recognised_as_nvcim_reports():
    """Every report file under docs/reproduction (written by earlier versions, some with older CSV columns)
    stays re-generatable in place."""
    from nvcim.report.owned import _csv_heads, report_wrote

    docs = Path(__file__).resolve().parents[1] / "docs" / "reproduction"
    names = set(_csv_heads()) | {"report.md", "report.html"}
    found = [p for p in docs.rglob("*") if p.is_file() and (p.name in names or (
        p.parent.name == "figures" and p.suffix in (".png", ".svg", ".pdf")))]
    if not found:
        pytest.skip("no committed reports in this checkout")
    assert [p for p in found if not report_wrote(p)] == []


def test_a_checkpoint_directory_is_no_report_directory(tmp_path, capsys):
    """nvcim report wrote its files into a checkpoint (which then held other files: --overwrite refuses such a
    checkpoint)."""
    root = tmp_path / "sweep"
    write(root / "a.json", _cell(0.2, [90.0, 91.0]))
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"nvcim_version": "0.1.0", "model": {"name": "tiny"}}')
    (ckpt / "model.safetensors").write_bytes(b"weights")
    before = sorted(p.name for p in ckpt.iterdir())
    assert main(["report", str(root), "--out", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is an nvcim checkpoint" in err, err
    assert sorted(p.name for p in ckpt.iterdir()) == before
