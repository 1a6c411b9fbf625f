"""Per-cell wall times of one or more sweep directories, as a Markdown table (REPRODUCTION.md).

    python scripts/cell_times.py repro_out/main repro_out/convergence repro_out/ablation
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(dirs: list[str]) -> None:
    print("| cell | status | train s | eval s | total s | test σ: mean % |")
    print("|---|---|---|---|---|---|")
    total = 0.0
    for d in dirs:
        for path in sorted(Path(d).glob("cells/**/result.json")) + sorted(Path(d).glob("cells/**/failed.json")):
            rec = json.loads(path.read_text())
            cell = rec.get("cell", {})
            if rec.get("kind") == "sweep_cell_failed":
                print(f"| {cell.get('id')} | failed: {rec.get('error', '')[:60]} | | | | |")
                continue
            t = cell.get("wall_time_s") or 0.0
            total += t
            accs = ", ".join(f"{r['sigma']:g}: {r['mean']:.1f}" for r in rec["results"])
            print(f"| {cell.get('id')} | {cell.get('train_status', 'ok')} | {cell.get('train_wall_time_s', 0):.0f} "
                  f"| {cell.get('eval_wall_time_s', 0):.0f} | {t:.0f} | {accs} |")
    print(f"\nSum of cell wall times: {total / 60:.1f} min (cells ran two at a time, one torch thread each).")


if __name__ == "__main__":
    args = sys.argv[1:] or ["repro_out"]
    missing = [d for d in args if not (Path(d) / "cells").is_dir()]  # --help, a typo: not an empty table
    if missing:
        print(f"cell_times.py: {missing[0]} is not a sweep directory (no cells/ in it): usage: python "
              "scripts/cell_times.py SWEEP_DIR [SWEEP_DIR ...]", file=sys.stderr)
        sys.exit(2)
    main(args)
