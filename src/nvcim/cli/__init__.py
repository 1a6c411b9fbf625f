"""The `nvcim` command line: one module per subcommand in this package (train, eval, report, sweep; export
also registers `nvcim import`, its inverse).

Each subcommand module defines `add_parser(subparsers)` and `run(args) -> int`. Errors the user can
fix (bad values, missing files, unknown names) end in one line on stderr and exit code 2; warnings
are one line each too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
import warnings

from nvcim.layers.coverage import CoverageError
from nvcim.plugins import ENV_VAR, PluginError, load_plugins, plugin_args

SUBCOMMANDS = ("train", "eval", "report", "sweep", "export")  # modules


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value as one line (plus a hint), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    """`--plugin MODULE_OR_FILE.py` (repeatable) on a subcommand; `main` imports them before parsing."""
    parser.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE.py",
                        help="import user code that registers models, data sets, methods, variation kinds or "
                             f"backends first (repeatable; also ${ENV_VAR}, comma-separated)")


def build_parser() -> argparse.ArgumentParser:
    from nvcim import __version__

    parser = OneLineParser(
        prog="nvcim",
        description="Device-variation-aware training and evaluation for NVCIM accelerators.",
    )
    parser.add_argument("--version", action="version", version=f"nvcim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"nvcim.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand still being built
            if e.name != f"nvcim.cli.{name}":
                raise
            continue
        before = set(sub.choices)
        module.add_parser(sub)
        for added in set(sub.choices) - before:
            add_plugin_argument(sub.choices[added])
    return parser


def _resume_hint(args) -> str:
    """What an interrupted command kept and how to go on (one clause; empty when it kept nothing)."""
    from nvcim.cli.train import train_state_path

    out = getattr(args, "out", None)
    if args.command == "train" and out and train_state_path(out).is_dir() and _finished(out):
        return f"; the training had finished: its checkpoint {out} is complete"
    if args.command == "train" and out and train_state_path(out).is_dir():
        return (f"; its state after the last finished epoch is kept in {train_state_path(out)}/: the same command "
                "resumes from there")
    if args.command == "sweep":
        return ("; finished cells are kept, and a cell that was training keeps its last finished epoch: the same "
                "command resumes")
    kept = out or getattr(args, "csv", None)
    if args.command == "eval" and kept and Path(f"{kept}.partial").is_dir():
        return f"; finished evaluations are kept in {kept}.partial/: the same command evaluates the rest"
    return ""


def _finished(out) -> bool:
    """Whether `out` holds the finished checkpoint of the training whose state is still beside it (interrupted
    between the checkpoint's write and the state's removal)."""
    from nvcim.cli.train import train_state_path
    from nvcim.train.resume import left_by_finished_run

    try:
        return left_by_finished_run(train_state_path(out), out)
    except Exception:  # noqa: BLE001 (a hint only: never in the way of the exit)
        return False


class _PipeSafe:
    """sys.stdout for one command: once its reader has gone (`nvcim eval ... | head`), what is printed is dropped
    instead of failing the command, so its output files are still written (they were lost, with exit 2)."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `kill`): stopped like Ctrl-C, so that locks and temporaries are cleaned up
    and the command says how to resume (the default action killed the process on the spot)."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = safe = _PipeSafe(stdout)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return _main(argv)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        sys.stdout = stdout
        if safe.broken:  # nothing more to its reader, nor an error at the interpreter's exit
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # before the parser: its choices and method flags come from what the plugins register
        load_plugins(plugin_args(argv))
    except PluginError as e:
        print(f"nvcim: error: {e}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
    except (ValueError, argparse.ArgumentError) as e:  # a plugin method's option clashing with nvcim's own flags
        fix = "" if "rename" in str(e) else ": a plugin's method option clashes with it: rename the option"
        print(f"nvcim: error: {' '.join(str(e).split())}{fix}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand whose flags they are not (argparse would say "nvcim: error")
        print(f"nvcim {args.command}: error: unrecognized arguments: {' '.join(extra)} (see nvcim {args.command} "
              "--help)", file=sys.stderr)
        return 2

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split()).removeprefix("nvcim: ")  # the library's own prefix
        print(f"nvcim {args.command}: warning: {text}", file=file or sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning  # restored on exit
            return int(args.run(args) or 0)
    except KeyboardInterrupt as stop:
        print(f"nvcim {args.command}: {'terminated' if isinstance(stop, _Terminated) else 'interrupted'}"
              f"{_resume_hint(args)}", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    except (UsageError, ValueError, OSError, CoverageError) as e:  # OSError: FileNotFoundError, PermissionError, ...;
        # CoverageError: a model that reads a noisy layer's weights itself (its message names --digital-layers)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"nvcim {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
