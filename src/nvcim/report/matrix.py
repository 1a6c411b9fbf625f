"""The device-model matrix in reports: a table (rows = checkpoints, columns = device models, cells =
mean, 95 % CI of the mean and p5 over chips), a heat map of the means, a long-form CSV, and paired
comparisons by seed between the training methods of its rows, per device model.

    fig_matrix(F, rec, "matrix_1")          # into a report's figures
    write_matrix_png(rec, "m.png")          # standalone (nvcim eval --device-models ... --out m.json)
    is_matrix_png("m.png", beside="m.json") # a heat map nvcim wrote (nvcim eval replaces no other PNG)
    matrix_paired(rec)                      # [{"device_model", "arm_a", "arm_b", "mean", "ci95", "p", ...}]
    matrix_arm_means(rec)                   # [{"device_model", "arm", "n", "mean", "std", "p5"}]: over seeds

Rows are arms by what trained them (the file's "rows": method and its parameters, labelled like the report's
arms, plus the model and data set where the rows hold several, and " (trained σ s)" where one label was trained
at several σ); two arms that differ in one of these only are compared on the seeds they share (≥ 2), A − B with A the later arm in the report's order (e.g. OVF − noise injection), in every
device-model column: all cells use the same chips (common random numbers), so the differences are the
models' (`nvcim.report.paired`). Only cells evaluated at the same σ are compared: a matrix made without --sigma
evaluates each checkpoint at its training σ, so arms trained at different σ are shown with their σ and not paired.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from itertools import combinations

from nvcim.evaluate.files import DeviceMatrixFile
from nvcim.evaluate.stats import ROUGH_PERCENTILE_MARK, ROUGH_PERCENTILE_NOTE, fmt_percentile
from nvcim.io.files import atomic_write_bytes
from nvcim.report.common import fmt_num, fmt_sigma, label_sort_key, method_traits
from nvcim.report.figures import Figures, pyplot
from nvcim.report.flags import Marks
from nvcim.report.labels import PER_METHOD_KEYS, RECIPE_KEYS, base_label, device_description, recipe_words
from nvcim.report.paired import paired_t, reading
from nvcim.report.tables import Table, no_pairs_table

CSV_COLUMNS = ("checkpoint", "dataset", "device_model", "sigma", "runs", "seed", "mean", "ci95_lo", "ci95_hi", "p5",
               "min", "variation", "nonfinite_runs")
ARM_COLUMNS = ("file", "device_model", "sigma", "arm", "n_seeds", "seeds", "mean", "std_over_seeds", "p5_mean")
PAIRED_COLUMNS = ("file", "device_model", "sigma", "arm_a", "arm_b", "n_paired", "seeds", "mean_diff", "ci95_lo",
                  "ci95_hi", "std_diff", "t", "p_paired_t", "n_positive")


def _row_names(rec: DeviceMatrixFile) -> list[str]:
    names = [Path(str(c)).name or str(c) for c in rec.checkpoints]
    return names if len(set(names)) == len(names) else [str(c) for c in rec.checkpoints]


def matrix_table(rec: DeviceMatrixFile, title: str = "Device-model matrix") -> Table:
    rows, marks = [], Marks()  # a mean below chance `*`, chips with non-finite logits `!` (nvcim.report.flags)
    rough = False
    for i, name in enumerate(_row_names(rec)):
        cells = []
        for j, dm in enumerate(rec.device_models):
            r = rec.result(i, j)
            mark = marks.mark(r.mean, r.num_classes, r.nonfinite_runs, r.runs, f"{name} under {dm}")
            p5 = fmt_percentile(r.p5, 5.0, r.percentile_chips, digits=1)  # "~" from fewer than 20 chips
            rough = rough or p5.startswith(ROUGH_PERCENTILE_MARK)
            cells.append(f"{r.mean:.2f} [{r.ci95[0]:.2f}, {r.ci95[1]:.2f}] p5 {p5}{mark}")
        rows.append([name, *cells])
    own = own_sigmas(rec)
    sigma = "each checkpoint's training σ" if rec.sigma is None else f"σ_d = {rec.sigma:g}"
    if own:  # a device file that sets σ: its column is not at the training σ (nor at --sigma)
        sigma += " (" + "; ".join(f"{dm}: σ_d = {s:g}, set by its device model" for dm, s in own.items()) + ")"
    note = (f"mean accuracy % [95 % CI of the mean] and 5th percentile over {rec.runs} chips per cell, {sigma}; "
            f"every cell uses the chip seeds from {rec.seed} (common random numbers: the checkpoints of a column are "
            "scored on the same chips; when a column draws each device's level, as ADC columns do, the plain "
            "Gaussian-kind columns do too, so that they share its chips)")
    named = [f"{dm} = {what}" for j, dm in enumerate(rec.device_models) if rec.cells and (what := device_description(
        rec.cells[0][j].get("device_config") or {}) or "gaussian") != dm]  # what each column's name sets
    if named:
        note += f"; device models: {'; '.join(named)}"
    if rec.adc_calibration:  # columns with a calibrated ADC clip: where each chip's ranges came from
        note += f"; calibrated ADC clips measured on the {rec.adc_calibration.get('split', '?')} split's first images"
    legend = " ".join(x for x in (marks.legend(), ROUGH_PERCENTILE_NOTE if rough else "") if x)
    return Table(title, ["checkpoint", *rec.device_models], rows, note, legend=legend)


def own_sigmas(rec: DeviceMatrixFile) -> dict[str, float]:
    """{column: σ_d} of the columns scored at a σ of their own (a device file's `sigma`): every cell at one σ that is
    not the matrix's σ, or where that is each checkpoint's training σ, not every row's."""
    out = {}
    trained = [(info or {}).get("train_sigma") for info in (rec.rows or [None] * len(rec.checkpoints))]
    for j, dm in enumerate(rec.device_models):
        if any((row[j].get("device_config") or {}).get("aihwkit") for row in rec.cells):
            continue  # aihwkit's device has no σ_d of nvcim's
        sigmas = {round(rec.result(i, j).sigma, 9) for i in range(len(rec.checkpoints))}
        if len(sigmas) != 1:
            continue
        (s,) = sigmas
        if (rec.sigma is not None and abs(s - rec.sigma) > 1e-9) or (
                rec.sigma is None and any(t is not None and abs(s - t) > 1e-9 for t in trained)):
            out[dm] = s
    return out


def matrix_csv(rec: DeviceMatrixFile) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, ck in enumerate(rec.checkpoints):
        for j, dm in enumerate(rec.device_models):
            r = rec.result(i, j)
            cfg = rec.cells[i][j]["device_config"]  # an aihwkit column: its settings (--time's) in place of a variation
            w.writerow([ck, rec.datasets[i], dm, r.sigma, r.runs, r.seed, r.mean, r.ci95[0], r.ci95[1], r.p5, r.min,
                        device_description(cfg) if cfg.get("aihwkit") else cfg.get("variation"),
                        int(r.nonfinite_runs or 0)])
    return buf.getvalue().encode("utf-8")


def _heatmap(plt, rec: DeviceMatrixFile):
    means = [[rec.result(i, j).mean for j in range(len(rec.device_models))] for i in range(len(rec.checkpoints))]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(rec.device_models), 1.0 + 0.6 * len(rec.checkpoints)))
    im = ax.imshow(means, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(means):
        for j, m in enumerate(row):
            r = rec.result(i, j)
            p5 = fmt_percentile(r.p5, 5.0, r.percentile_chips, digits=1)
            ax.text(j, i, f"{m:.1f}\np5 {p5}", ha="center", va="center", fontsize=8,
                    color="white" if m < 60 else "black")
    own = own_sigmas(rec)
    ticks = [f"{dm}\n(σ_d {own[dm]:g})" if dm in own else dm for dm in rec.device_models]
    ax.set_xticks(range(len(rec.device_models)), ticks, rotation=30, ha="right")
    ax.set_yticks(range(len(rec.checkpoints)), _row_names(rec))
    fig.colorbar(im, ax=ax, label="mean accuracy (%)")
    sigma = "training σ" if rec.sigma is None else f"σ_d = {rec.sigma:g}"
    sigma += ", unless a column names its own" if own else ""
    ax.set_title(f"accuracy under each device model ({sigma}, {rec.runs} chips per cell)")
    return fig


def fig_matrix(F: Figures, rec: DeviceMatrixFile, name: str) -> None:
    F.save(_heatmap(F.plt, rec), name, f"Device-model matrix: mean accuracy (and p5) of {len(rec.checkpoints)} "
                                       f"checkpoints under {len(rec.device_models)} device models")


PNG_SOFTWARE = "nvcim device-model matrix"  # the PNG's tEXt "Software" entry: how is_matrix_png knows its own files


def matrix_png(rec: DeviceMatrixFile) -> bytes:
    """The heat map as PNG bytes, marked as nvcim's (tEXt Software = PNG_SOFTWARE)."""
    plt = pyplot()
    fig = _heatmap(plt, rec)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    return buf.getvalue()


def write_matrix_png(rec: DeviceMatrixFile, path) -> Path:
    return atomic_write_bytes(path, matrix_png(rec))


def _png_software(path: Path) -> str | None:
    """The "Software" text entry of a PNG file (Pillow reads the chunks before the image data), None if it has
    none or is no PNG."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            software = im.info.get("Software") if im.format == "PNG" else None
    except OSError:  # not an image (UnidentifiedImageError), unreadable
        return None
    return software if isinstance(software, str) else None


def is_matrix_png(path, beside=None) -> bool:
    """Whether the file `path` is a heat map nvcim wrote (and may replace): marked PNG_SOFTWARE, or, from versions
    before the mark, a matplotlib PNG beside `beside`, the device-matrix JSON written with it."""
    software = _png_software(Path(path))
    if software == PNG_SOFTWARE:
        return True
    if software is None or not software.startswith("Matplotlib") or beside is None:
        return False
    try:
        import json

        return json.loads(Path(beside).read_text(encoding="utf-8")).get("kind") == DeviceMatrixFile.kind
    except (OSError, ValueError, AttributeError):
        return False


def _arm_rows(rec: DeviceMatrixFile) -> list[dict] | None:
    """Per row: its arm's label and what trained it (None when the file does not say). The label is the method's
    (labelled like the report's arms), plus what tells this row's arm from others of that label: the model
    (name, width) and data set where the rows hold several, the training σ, the number of epochs."""
    if rec.rows is None:
        return None
    arms = []
    for i, info in enumerate(rec.rows):
        method = dict(info.get("method") or {})
        name = str(method.pop("name", "?"))
        model = info.get("model") if isinstance(info.get("model"), dict) else {}
        traits = method_traits(name)
        noisy = traits is None or traits.uses_device  # vanilla trains without noise: its σ is no recipe
        arms.append({"label": base_label(name, method), "base": base_label(name, method), "method": name,
                     "seed": str(info.get("seed")), "sigma": info.get("train_sigma") if noisy else None,
                     "epochs": info.get("epochs"), "model": (model.get("name"), model.get("width")),
                     "dataset": rec.datasets[i], "digital": tuple(info.get("digital_layers") or ()),
                     "device": info.get("train_device") if noisy else None,  # vanilla: trained without the device
                     "noisy": noisy,
                     "recipe": info.get("recipe") if isinstance(info.get("recipe"), dict) else {}})
    # several models / widths / data sets / digital layers in one matrix: never one arm (pooled as if seeds)
    many = {k for k in ("model", "dataset", "digital") if len({a[k] for a in arms}) > 1}
    for a in arms:
        what = []
        if "model" in many:
            name, width = a["model"]
            widths = {b["model"][1] for b in arms if b["model"][0] == name}  # shown where one name has several
            what.append(f"{name}" + (f" ×{width:g}" if len(widths) > 1 and isinstance(width, (int, float)) else ""))
        if "dataset" in many:
            what.append(str(a["dataset"]))
        if "digital" in many:
            what.append(f"digital: {', '.join(a['digital'])}" if a["digital"] else "all analog")
        if what:
            a["label"] = f"{a['label']} ({', '.join(what)})"
    names = {}  # a training device by the name a column gives it ("weight_band S=4" -> "rram4"), where one does
    for j, dm in enumerate(rec.device_models):
        names.setdefault(device_description(rec.cells[0][j].get("device_config") or {}) if rec.cells else None, dm)
    for label in {a["label"] for a in arms}:  # one label trained under several devices (said first: it stays said
        if len({a["device"] for a in arms if a["label"] == label}) > 1:
            for a in arms:
                if a["label"] == label:
                    a["label"] = f"{label} (trained on {names.get(a['device'], a['device']) if a['device'] else 'gaussian'})"
    for label in {a["label"] for a in arms}:  # ... where σ or epochs split it further), at several σ: one arm per σ
        if len({a["sigma"] for a in arms if a["label"] == label}) > 1:
            for a in arms:
                if a["label"] == label:
                    a["label"] = f"{label} (trained σ {fmt_num(a['sigma'])})"
    for label in {a["label"] for a in arms}:  # ... or for several numbers of epochs (a training-budget study)
        if len({a["epochs"] for a in arms if a["label"] == label}) > 1:
            for a in arms:
                if a["label"] == label:
                    a["label"] = f"{label} ({recipe_words('epochs', a['epochs'])})"
    for label in {a["label"] for a in arms}:  # ... or by several recipes (learning rate, batch, data seed ...)
        same = [a for a in arms if a["label"] == label]
        keys = _recipe_differences(same)
        for a in same if keys else ():
            a["label"] = f"{label} ({', '.join(recipe_words(k, a['recipe'][k]) for k in keys)})"
    seen: dict[tuple, int] = {}
    for a in arms:  # two rows still in one arm with one seed (trained otherwise): kept apart, never one overwriting
        key = (a["label"], a["method"], a["seed"])
        n = seen[key] = seen.get(key, 0) + 1
        if n > 1:
            a["label"] = f"{a['label']} (#{n})"  # trained otherwise in a way the file does not say: never paired
            a["twin"] = n
    twinned = {a["label"].rsplit(" (#", 1)[0] for a in arms if a.get("twin")}
    for a in arms:  # the first of those too: which of a seed's rows came first is the order given, no recipe
        if a["label"] in twinned:
            a["twin"] = 1
    return arms


def _recipe_differences(arms: list[dict], exclude: tuple[str, ...] = ("epochs",)) -> list[str]:
    """The training-recipe keys (`nvcim.report.records.training_recipe`) whose values differ among `arms`, of those
    every arm records (a file written before a key existed does not differ in it); epochs have their own label."""
    keys = set.intersection(*(set(a["recipe"]) for a in arms)) & set(RECIPE_KEYS) - set(exclude) if arms else set()
    return [k for k in sorted(keys, key=RECIPE_KEYS.index)
            if len({json.dumps(a["recipe"][k], sort_keys=True, default=str) for a in arms}) > 1]


def matrix_arms(rec: DeviceMatrixFile) -> list[tuple[str, str, str]] | None:
    """(label, method, seed) of every row, or None when the file does not say what trained its rows."""
    arms = _arm_rows(rec)
    return None if arms is None else [(a["label"], a["method"], a["seed"]) for a in arms]


_TRAINED_BY = ("base", "sigma", "epochs", "model", "dataset", "digital", "device")  # what an arm's rows share


def _rows_by_arm(rec: DeviceMatrixFile) -> dict[tuple[str, str], dict[str, int]]:
    """{(label, method): {seed: row index}} in the report's order of arms ({} when the rows are unknown)."""
    by_arm: dict[tuple[str, str], dict[str, int]] = {}
    for i, a in enumerate(_arm_rows(rec) or []):
        if a["seed"] != "None":
            by_arm.setdefault((a["label"], a["method"]), {})[a["seed"]] = i
    return {k: by_arm[k] for k in sorted(by_arm, key=lambda lm: label_sort_key(*lm))}


def _one_difference(rec: DeviceMatrixFile, a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two arms (their {seed: row}) differ in exactly one of what trained them (method, training σ,
    epochs, model, data set): a paired difference then measures that one thing."""
    arms = _arm_rows(rec) or []
    ta, tb = (arms[next(iter(x.values()))] for x in (a, b))
    if ta.get("twin") or tb.get("twin"):  # an unexplained duplicate: what differs is unknown
        return False
    # and their recipes (beside another method, only in what splits arms across methods: labels.PER_METHOD_KEYS)
    other_recipe = bool(_recipe_differences([ta, tb], ("epochs",) + (PER_METHOD_KEYS if ta["base"] != tb["base"] else ())))
    # a method trained without noise (vanilla) has no training σ nor device to differ in
    untrained = not (ta["noisy"] and tb["noisy"])
    return other_recipe + sum(ta.get(k) != tb.get(k) and not (k in ("sigma", "device") and untrained)
                              and not (k == "sigma" and None in (ta[k], tb[k])) for k in _TRAINED_BY) == 1


def _cell_sigma(rec: DeviceMatrixFile, rows, col: int) -> float | None:
    """The σ the cells of `rows` in column `col` were evaluated at, or None when they differ (a matrix without
    --sigma evaluates each checkpoint at its own training σ)."""
    sigmas = {round(float(rec.result(i, col).sigma), 9) for i in rows}
    return sigmas.pop() if len(sigmas) == 1 else None


def matrix_arm_means(rec: DeviceMatrixFile) -> list[dict]:
    """Per device model and arm: the mean over its seeds of each model's mean accuracy, their std (ddof 1; None
    for one seed), the mean of the models' p5 and the σ its cells were evaluated at (None: they differ)."""
    out = []
    for j, dm in enumerate(rec.device_models):
        for (label, _), seeds in _rows_by_arm(rec).items():
            order = sorted(seeds, key=lambda s: (len(s), s))
            means = [rec.result(seeds[s], j).mean for s in order]
            n = len(means)
            mu = sum(means) / n
            std = (sum((m - mu) ** 2 for m in means) / (n - 1)) ** 0.5 if n > 1 else None
            out.append({"device_model": dm, "sigma": _cell_sigma(rec, seeds.values(), j), "arm": label,
                        "seeds": order, "n": n, "mean": mu, "std": std,
                        "p5": sum(rec.result(seeds[s], j).p5 for s in order) / n})
    return out


def matrix_arms_table(rows: list[dict], title: str) -> Table | None:
    """Device models (rows) × arms (columns): mean over seeds ± std over seeds; where the arms of a device model
    were evaluated at different σ (each checkpoint's training σ), every cell of that row names its σ."""
    if not rows:
        return None
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    devices = list(dict.fromkeys(r["device_model"] for r in rows))
    cell = {(r["device_model"], r["arm"]): r for r in rows}
    mixed = {dm for dm in devices if len({cell[dm, a]["sigma"] for a in arms if (dm, a) in cell}) > 1}

    def text(dm: str, a: str) -> str:
        if (dm, a) not in cell:
            return ""
        c = cell[dm, a]
        t = f"{c['mean']:.2f}" + (f" ± {c['std']:.2f}" if c["std"] is not None else "")
        return t + (f" (σ {fmt_sigma(c['sigma']) if c['sigma'] is not None else 'mixed'})" if dm in mixed else "")

    body = [[dm, *[text(dm, a) for a in arms]] for dm in devices]
    n = sorted({r["n"] for r in rows})
    note = (f"mean accuracy % over {'/'.join(map(str, n))} seeds ± std over seeds, each seed's model on the same chips"
            if n != [1] else "mean accuracy % over the chips of one model (one seed: no std over seeds)")
    if mixed:
        note += ("; (σ …): the σ a row's arms were evaluated at differ (each checkpoint's training σ), so their "
                 "accuracies are not comparable: give --sigma for one σ")
    return Table(title, ["device model", *arms], body, note)


def matrix_paired(rec: DeviceMatrixFile) -> list[dict]:
    """Paired differences by seed between the arms of the matrix's rows, per device model (module docstring);
    a pair whose cells were evaluated at different σ (a matrix without --sigma: each checkpoint's training σ) is
    left out, as its difference would be mostly the σ's."""
    by_arm = _rows_by_arm(rec)
    order = list(by_arm)
    out = []
    for j, dm in enumerate(rec.device_models):
        for b, a in combinations(order, 2):
            shared = sorted(set(by_arm[a]) & set(by_arm[b]), key=lambda s: (len(s), s))
            if len(shared) < 2 or not _one_difference(rec, by_arm[a], by_arm[b]):
                continue  # too few seeds, or confounded (e.g. another method AND another model)
            sigma = _cell_sigma(rec, [by_arm[x][s] for s in shared for x in (a, b)], j)
            if sigma is None:  # evaluated at different σ (each checkpoint's own): the difference is not the models'
                continue
            diffs = [rec.result(by_arm[a][s], j).mean - rec.result(by_arm[b][s], j).mean for s in shared]
            out.append({"device_model": dm, "sigma": sigma, "arm_a": a[0], "arm_b": b[0], "seeds": shared,
                        "diffs": diffs, "n_positive": sum(d > 0 for d in diffs), **paired_t(diffs)})
    return out


def matrix_paired_table(rows: list[dict], title: str, rec: DeviceMatrixFile | None = None) -> Table | None:
    """The matrix's paired differences; without any, a note saying why when the matrix (rec) has 2 or more arms."""
    headers = ["device model", "A − B", "seeds", "mean difference [95 % CI]", "p", "A ahead", "reading"]
    if not rows:
        arms = {label: sorted(seeds, key=lambda s: (len(s), s)) for (label, _), seeds in
                (_rows_by_arm(rec).items() if rec is not None else [])}
        return no_pairs_table(title, headers, arms, "the arms that share seeds differ in more than one thing, or their "
                              "cells were evaluated at different σ (without --sigma each checkpoint is evaluated at its "
                              "training σ: pass --sigma)")
    body = [[r["device_model"], f"{r['arm_a']} − {r['arm_b']}", r["n"],
             f"{r['mean']:+.2f} [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]", f"{r['p']:.3g}",
             f"{r['n_positive']}/{r['n']}", reading(r)] for r in rows]
    note = ("difference of mean accuracy (points) by seed, A − B, mean [95 % t CI over the seeds both arms have], "
            "two-sided paired t-test p, seeds with A ahead; every cell on the same chips")
    return Table(title, headers, body, note)


def matrix_arms_csv(rows_by_file: list[tuple[str, list[dict]]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ARM_COLUMNS)
    for f, rows in rows_by_file:
        for r in rows:
            w.writerow([f, r["device_model"], r["sigma"], r["arm"], r["n"], " ".join(r["seeds"]), r["mean"], r["std"],
                        r["p5"]])
    return buf.getvalue().encode("utf-8")


def matrix_paired_csv(rows_by_file: list[tuple[str, list[dict]]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIRED_COLUMNS)
    for f, rows in rows_by_file:
        for r in rows:
            w.writerow([f, r["device_model"], r["sigma"], r["arm_a"], r["arm_b"], r["n"], " ".join(r["seeds"]),
                        r["mean"], r["ci95"][0], r["ci95"][1], r["std"], r["t"], r["p"], r["n_positive"]])
    return buf.getvalue().encode("utf-8")
