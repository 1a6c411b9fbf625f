"""`nvcim sweep SPEC --out DIR`: run a grid of training + Monte Carlo evaluation cells (nvcim.sweep).

    nvcim sweep experiments/cpu/mnist5k.toml --out runs/cpu-mnist5k --workers 2
    nvcim sweep spec.toml --out runs/x --dry-run          # list the cells and their state
    nvcim sweep spec.toml --out runs/x --backend ray --address auto

Rerunning the same command resumes: finished cells are skipped, and a cell interrupted while training takes
its training up after the last finished epoch (kept in DIR/cells/<id>/train_state/; --dry-run shows it; the Ray
backend does so only when its workers share DIR's file system). Exit code 0 when every cell is
done, 1 when some failed (see DIR/cells/<id>/failed.json; --retry-failed reruns them), 2 on a usage
error (bad spec, another spec's DIR, a data set that is missing and cannot be downloaded, missing
Ray), checked before any cell runs and before anything is written.
A dry run downloads nothing: a data set that is not on disk is the run's error, exit code 2.
Warnings (a damaged file not reused, a result recorded but implausible) are shown even with --quiet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    from nvcim.sweep.backends import BACKENDS

    p = sub.add_parser("sweep", help="run a sweep spec (grid of train + Monte Carlo eval cells), resumable",
                       description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep spec file (.toml, .yaml/.yml or .json)")
    p.add_argument("--out", required=True, help="sweep directory (cells/<id>/result.json, checkpoints, spec copy)")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="local",
                   help="; ".join(f"{b.name}: {b.help}" for b in BACKENDS.values()) + " (default: local)")
    p.add_argument("--workers", type=int, default=1,
                   help="cells run at once (the local pool's size; a local Ray instance gets workers x cpus_per_cell "
                        "CPUs; default 1)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells that failed before")
    p.add_argument("--accept-plugin-change", action="store_true",
                   help="count finished cells built by another version of the --plugin code as done (when your edit "
                        "does not touch them: a comment, a new model; a report warns that an arm mixes versions)")
    p.add_argument("--force", action="store_true",
                   help="run into a DIR that holds another spec's cells (its finished cells are kept; "
                   "one whose definition changed is an error)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or per-cell lines (warnings are still shown)")
    p.set_defaults(run=run)


def _say_foreign(out, cells) -> None:
    """A note on stderr naming the results under DIR/cells that are not cells of this spec (the report reads them)."""
    from nvcim.sweep.files import foreign_results

    foreign = foreign_results(out, cells)
    if foreign:
        print(f"nvcim sweep: note: {len(foreign)} result(s) under {out}/cells are not cells of this spec (first: "
              f"{foreign[0]}), e.g. from an earlier version of it; `nvcim report {out}` reads them too: move them "
              "out of the directory to leave them out", file=sys.stderr)


def _warn(message: str) -> None:
    """A sweep warning, on stderr whether --quiet or not (above the progress bar when there is one)."""
    from tqdm.auto import tqdm

    tqdm.write(f"nvcim sweep: warning: {message}", file=sys.stderr)


def run(args) -> int:
    from nvcim.sweep import expand, load_spec, plan, result_problem, run_sweep, stale_cells
    from nvcim.methods import search_symbol, searched_param
    from nvcim.sweep.backends.local import default_threads
    from nvcim.sweep.backends.ray import ray_threads
    from nvcim.sweep.files import failed_differences, partial_progress, partial_work_of_other_threads
    from nvcim.sweep.runner import (UNDEFINED, check_data, check_spec_copy, check_sweep_dir, is_recorded_spec,
                                    needs_local_data)

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} is invalid: use an integer >= 1")
    if args.address and args.backend != "ray":
        raise ValueError("--address is for the ray backend: add --backend ray")
    if args.dry_run:
        cells, todo, done, failed = plan(spec, args.out, retry_failed=args.retry_failed)
        stale = {c.id: keys for c, keys in stale_cells(args.out, done, accept_plugin_change=args.accept_plugin_change)}
        state = {c.id: "done" for c in done} | {c.id: "failed" for c in failed} | {c.id: "pending" for c in todo}
        state |= {cid: "stale" for cid in stale}
        threads = (ray_threads(spec) if args.backend == "ray" else
                   spec.resources.threads_per_cell or default_threads(args.workers))
        other_threads = (dict(partial_work_of_other_threads(Path(args.out), todo, threads))
                         if args.backend in ("local", "ray") else {})
        for c in cells:
            extra = f"  {search_symbol(searched_param(c.method))} search {c.betas}" if c.betas else ""
            if c.id in stale:
                extra += ("  (no readable cell.json: made by an unknown definition)" if stale[c.id] == [UNDEFINED]
                          else "  (trained on another version of the data file)" if stale[c.id] == ["data_file"]
                          else "  (built by another version of the plugins' code)" if stale[c.id] == ["plugin_code"]
                          else f"  (made by another definition: {', '.join(stale[c.id])} differ)")
            if state[c.id] == "pending" and (was := failed_differences(args.out, c)):
                extra += f"  (failed under another definition: {', '.join(was)} differ; runs again)"
            problem = result_problem(args.out, c.id) if state[c.id] == "pending" else None
            extra += f"  ({problem}: runs again)" if problem else ""
            kept = partial_progress(args.out, c, args.accept_plugin_change) if state[c.id] == "pending" else None
            if kept and c.id in other_threads:  # the local backend redoes it: bitwise-reproducible results
                kept = (f"partial work made with {other_threads[c.id]} thread(s) per cell, this run uses {threads}: "
                        "trained from the start")
            extra += f"  ({kept})" if kept else ""
            print(f"{state[c.id]:8s} {c.id}  test σ {c.test_sigmas}{extra}")
        print(f"{len(cells)} cell{'' if len(cells) == 1 else 's'}: {len(done) - len(stale)} done, {len(stale)} stale, "
              f"{len(failed)} failed (not retried), {len(todo)} to run")
        try:  # what the run would refuse before any cell (another spec's DIR without --force, a user's spec file
            check_sweep_dir(spec, args.out, force=args.force)  # where the copy goes), the dry run says
            check_spec_copy(args.out, spec_path.read_text(encoding="utf-8"), spec_path.suffix.lower())
        except ValueError as exc:
            print(f"nvcim sweep: note: the run would stop here: {exc}", file=sys.stderr)
        else:
            if stale:
                print(f"nvcim sweep: note: the run would stop here: {len(stale)} finished cell(s) marked stale were "
                      "made by another or an unknown definition: choose another --out, or delete those cell "
                      "directories to run them again"
                      + (", or pass --accept-plugin-change if your plugin edit does not change them"
                         if any(keys == ["plugin_code"] for keys in stale.values()) else ""), file=sys.stderr)
        _say_foreign(args.out, cells)
        if todo and needs_local_data(args.backend, args.address):  # as the run checks them, without a download
            check_data(todo, download=False)  # DatasetNotFoundError: one line, exit 2
        return 0
    recorded = Path(args.out) / "spec.json"  # the validated spec, written over nvcim's own spec.json only (--force)
    if recorded.is_file() and recorded.resolve() == spec_path.resolve() and not is_recorded_spec(spec, args.out):
        raise ValueError(f"the spec {spec_path} is {recorded}, where the sweep records the validated spec: move the "
                         "spec out of --out, or choose another --out")
    summary = run_sweep(spec, args.out, backend=args.backend, workers=args.workers, address=args.address,
                        retry_failed=args.retry_failed, force=args.force, progress=not args.quiet,
                        accept_plugin_change=args.accept_plugin_change,
                        spec_text=spec_path.read_text(encoding="utf-8"), spec_suffix=spec_path.suffix.lower(),
                        warn=_warn)
    n_failed = len(summary.failed) + len(summary.failed_before)
    print(f"nvcim sweep: {summary.total} cell{'' if summary.total == 1 else 's'}: "
          f"{summary.done_before + len(summary.ok)} done ({len(summary.ok)} this run), {n_failed} failed; {summary.wall_time_s:.1f} s; results in {args.out}",
          file=sys.stderr)
    _say_foreign(args.out, expand(spec))
    if n_failed:
        print(f"nvcim sweep: failed cells: see {args.out}/cells/<id>/failed.json; rerun with --retry-failed",
              file=sys.stderr)
    return summary.exit_code
