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
