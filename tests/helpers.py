"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `nvcim ARGV`, argparse's SystemExit included."""
    from nvcim.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(root):
    """Every path under root with its bytes (None for a folder): equal before and after = nothing touched."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def run_cli_err(argv, capsys):
    """(exit code, stderr lines) of `nvcim ARGV`."""
    rc, _, err = run_cli(argv, capsys)
    return rc, err.strip().splitlines()
