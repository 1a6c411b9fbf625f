"""The device-model matrix in reports: a table (rows = checkpoints, columns = device models, cells =
mean, 95 % CI of the mean and p5 over chips), a heat map of the means, and a long-form CSV.

    fig_matrix(F, rec, "matrix_1")          # into a report's figures
    write_matrix_png(rec, "m.png")          # standalone (nvcim eval --device-models ... --out m.json)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from nvcim.evaluate.files import DeviceMatrixFile
from nvcim.io.files import atomic_write_bytes
from nvcim.report.figures import Figures, pyplot
from nvcim.report.tables import Table

CSV_COLUMNS = ("checkpoint", "dataset", "device_model", "sigma", "runs", "seed", "mean", "ci95_lo", "ci95_hi", "p5",
               "min", "variation")


def _row_names(rec: DeviceMatrixFile) -> list[str]:
    names = [Path(str(c)).name or str(c) for c in rec.checkpoints]
    return names if len(set(names)) == len(names) else [str(c) for c in rec.checkpoints]


def matrix_table(rec: DeviceMatrixFile, title: str = "Device-model matrix") -> Table:
    rows = []
    for i, name in enumerate(_row_names(rec)):
        cells = []
        for j in range(len(rec.device_models)):
            r = rec.result(i, j)
            cells.append(f"{r.mean:.2f} [{r.ci95[0]:.2f}, {r.ci95[1]:.2f}] p5 {r.p5:.1f}")
        rows.append([name, *cells])
    sigma = "each checkpoint's training σ" if rec.sigma is None else f"σ_d = {rec.sigma:g}"
    note = (f"mean accuracy % [95 % CI of the mean] and 5th percentile over {rec.runs} chips per cell, {sigma}; "
            f"every cell uses the chip seeds from {rec.seed} (common random numbers)")
    return Table(title, ["checkpoint", *rec.device_models], rows, note)


def matrix_csv(rec: DeviceMatrixFile) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, ck in enumerate(rec.checkpoints):
        for j, dm in enumerate(rec.device_models):
            r = rec.result(i, j)
            w.writerow([ck, rec.datasets[i], dm, r.sigma, r.runs, r.seed, r.mean, r.ci95[0], r.ci95[1], r.p5, r.min,
                        rec.cells[i][j]["device_config"].get("variation")])
    return buf.getvalue().encode("utf-8")


def _heatmap(plt, rec: DeviceMatrixFile):
    means = [[rec.result(i, j).mean for j in range(len(rec.device_models))] for i in range(len(rec.checkpoints))]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(rec.device_models), 1.0 + 0.6 * len(rec.checkpoints)))
    im = ax.imshow(means, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(means):
        for j, m in enumerate(row):
            p5 = rec.result(i, j).p5
            ax.text(j, i, f"{m:.1f}\np5 {p5:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if m < 60 else "black")
    ax.set_xticks(range(len(rec.device_models)), rec.device_models, rotation=30, ha="right")
    ax.set_yticks(range(len(rec.checkpoints)), _row_names(rec))
    fig.colorbar(im, ax=ax, label="mean accuracy (%)")
    sigma = "training σ" if rec.sigma is None else f"σ_d = {rec.sigma:g}"
    ax.set_title(f"accuracy under each device model ({sigma}, {rec.runs} chips per cell)")
    return fig


def fig_matrix(F: Figures, rec: DeviceMatrixFile, name: str) -> None:
    F.save(_heatmap(F.plt, rec), name, f"Device-model matrix: mean accuracy (and p5) of {len(rec.checkpoints)} "
                                       f"checkpoints under {len(rec.device_models)} device models")


def write_matrix_png(rec: DeviceMatrixFile, path) -> Path:
    plt = pyplot()
    fig = _heatmap(plt, rec)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
