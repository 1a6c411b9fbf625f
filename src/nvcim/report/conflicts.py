"""What would make the report pool or drop results silently, said instead (each a one-line message for a warning):

    model_conflicts(records)        two different checkpoints counted as one arm's model of one seed (one is left
                                    out), or two evaluations of one model (one is shown)
    verify_conflicts(records)       write-verify files of one curve and seed holding different checkpoints
    split_device_models(records)    one device-model name over different devices: split into arms "NAME: fields"
    data_file_conflicts(records)    models of one npz: data set trained on different versions of its file
    plugin_code_conflicts(records)  an arm whose models were built by different versions of the plugins' code
    evaluated_under_other_code(records)  models evaluated under other plugin code than they were trained with
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from nvcim.report.common import fmt_param, group_key, sigma_key, sigma_specific


def same_model(a: Mapping, b: Mapping) -> bool:
    """Whether two records are of one trained model: the same checkpoint path and, where both files record it, the
    same checkpoint config (results kept without weights all name cells/<id>/checkpoint, found nowhere: the paths
    alone called two sweeps' models one)."""
    prints = a.get("model_print"), b.get("model_print")
    return _same_checkpoint(a["checkpoint_path"], b["checkpoint_path"]) and (None in prints or prints[0] == prints[1])


def _same_checkpoint(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return a == b
    if Path(a).is_absolute() and Path(b).is_absolute():
        return a == b
    a, b = Path(a).as_posix().rstrip("/"), Path(b).as_posix().rstrip("/")
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)  # relative vs absolute spelling


def model_conflicts(records: Sequence[dict]) -> list[str]:
    """Messages for two different checkpoints that would count as the same model of one point (same
    arm, training and test σ, seed): a point keeps one model per seed (the one with the most chips,
    then the last file by name), so the other is left out; say so instead of dropping it silently."""
    seen: dict[tuple, dict] = {}
    msgs, said = [], set()
    for r in sorted(records, key=lambda r: r["file"]):
        if r["seed"] is None:
            continue
        # a point at σ holds the models trained without noise (whatever σ they validated at) and those trained
        # (or, CorrectNet's λ, chosen) at σ: two such models of one seed collide there (a sweep resumed after its
        # CorrectNet cells became λ-searched keeps the old σ-independent cells beside the new per-σ ones)
        in_point = not sigma_specific(r) or sigma_key(r["train_sigma"]) == sigma_key(r["test_sigma"])
        train = "point" if in_point else sigma_key(r["train_sigma"])
        key = (*group_key(r), r["label"], train, sigma_key(r["test_sigma"]), str(r["seed"]))
        first = seen.setdefault(key, r)
        if first is not r and not same_model(first, r):
            msgs.append(f"{first['file']} and {r['file']} hold different checkpoints of the same arm "
                        f"({r['label']}, σ_d {fmt_param(r['test_sigma'])}, seed {r['seed']}): the report keeps "
                        "one model per seed (most chips, then the last file); report them separately")
        elif first is not r and (first["file"], r["file"]) not in said:  # one evaluation of the model is shown
            said.add((first["file"], r["file"]))
            msgs.append(f"{first['file']} and {r['file']} evaluate the same model ({r['label']}, seed {r['seed']}): "
                        "the accuracy tables and figures show one evaluation per model (the one of most chips, then the "
                        "last file); the robustness curves show each file's own")
    return msgs


def verify_conflicts(verify_records: Sequence[dict]) -> list[str]:
    """Messages for write-verify files of one curve and seed that hold different checkpoints: the curve keeps one
    model per seed (the one of the most fractions; points.verify_curves), so the other is left out. Files of one
    model are merged (fractions run in two commands) and need no message."""
    first: dict[tuple, dict] = {}
    msgs = []
    for r in sorted(verify_records, key=lambda r: r["file"]):
        if r["seed"] is None:
            continue
        key = (*group_key(r), r["label"], sigma_key(r["test_sigma"]), sigma_key(r["train_sigma"]), r["verify_by"],
               r["residual_sigma"], str(r["seed"]))
        seen = first.setdefault(key, r)
        if seen["file"] != r["file"] and not same_model(seen, r):
            msgs.append(f"{seen['file']} and {r['file']} hold write-verify points of different checkpoints of one seed "
                        f"({r['label']}, seed {r['seed']}): the curve keeps the one of most fractions; report them "
                        "separately")
    return list(dict.fromkeys(msgs))  # (one message per pair of files, not per fraction)


def name_unnamed_devices(records: Sequence[dict]) -> None:
    """A result that records only what its device sets (written before `nvcim eval` recorded the --device-model
    name, or by the Python API) takes the name the other results give that same device (its fields and bits), where
    they give it one name: one arm, not "[rram4]" beside "[weight_band S=4]"; a training device likewise, "(trained on
    rram4)" beside "[rram4]" (the training device's bits aside: the checkpoint's own)."""
    names: dict[tuple, set] = {}
    key = lambda r: (r["device_detail"], r.get("device_bits"), r.get("quantized"))  # noqa: E731
    for r in records:
        if r.get("device_model") and r.get("device_named"):
            names.setdefault(key(r), set()).add(r["device_model"])
    for r in records:
        if r.get("device_model") and not r.get("device_named"):
            found = names.get(key(r), set())
            if len(found) == 1:
                r["device_model"] = next(iter(found))
    by_detail: dict[str, set] = {}  # a training device ("weight_band S=4") takes the name results give it ("rram4")
    for (detail, _, _), found in names.items():
        by_detail.setdefault(detail, set()).update(found)
    named: dict[str, set] = {}  # a name that names several devices (a file edited between runs) names none
    for detail, found in by_detail.items():
        for n in found:
            named.setdefault(n, set()).add(detail)
    for r in records:
        found = {n for n in by_detail.get(r.get("train_device") or "", set()) if len(named[n]) == 1}
        if len(found) == 1 and r["train_device"] != "gaussian":
            r["train_device"] = next(iter(found))


def split_device_models(records: Sequence[dict]) -> list[str]:
    """Records of one device-model name whose devices differ (two sweeps' files of the same name, e.g. both
    mychip.toml, a file edited between runs, or a preset at other bit widths: a "-level" preset's multipliers
    follow K) become arms of their own, "NAME: what it sets" (with "M=8 K=4" when the bits differ), instead of one
    arm pooling both devices' seeds; a message for each such name."""
    keys: dict[str, dict[tuple, None]] = {}
    for r in records:
        if r.get("device_model"):
            keys.setdefault(r["device_model"], {})[(r["device_detail"], r.get("device_bits"))] = None
    split = {name: list(k) for name, k in keys.items() if len(k) > 1}
    msgs = []
    for name, ks in split.items():
        bits = len({b for _, b in ks}) > 1
        what = {k: k[0] + (f", M={k[1][0]} K={k[1][1]}" if bits and k[1] else "") for k in ks}
        for r in records:
            if r.get("device_model") == name:
                r["device_detail"] = what[(r["device_detail"], r.get("device_bits"))]
                r["device_model"] = f"{name}: {r['device_detail']}"
        fix = "; give different devices different names" if len({d for d, _ in ks}) > 1 else ""
        msgs.append(f"device model {name}: results under {len(ks)} different devices ({'; '.join(what.values())}): "
                    f"reported as separate arms '{name}: …'{fix}")
    return msgs


def _versions(records: Sequence[dict], field: str, key) -> dict[tuple, dict[str, str]]:
    """key(record) -> the distinct values of record[field] (a file's or a code's sha256) -> a results file holding it."""
    found: dict[tuple, dict[str, str]] = {}
    for r in sorted(records, key=lambda r: r["file"]):
        if r.get(field):
            found.setdefault(key(r), {}).setdefault(r[field], r["file"])
    return found


def data_file_conflicts(records: Sequence[dict]) -> list[str]:
    """Messages for a data set name whose models were trained on different versions of its file (an npz: file edited
    between two runs): the report would pool them as one data set, every arm's mean over both."""
    return [f"data set {name}: models trained on {len(shas)} different versions of its file (sha256 "
            f"{', '.join(sha[:12] + '…' for sha in shas)}; e.g. {', '.join(shas.values())}): the report pools them "
            "as one data set; report each version's results separately"
            for (name,), shas in _versions(records, "data_file", lambda r: (r["dataset"],)).items() if len(shas) > 1]


def plugin_code_conflicts(records: Sequence[dict]) -> list[str]:
    """Messages for an arm whose models were built by different versions of the plugins (a plugin model edited
    between two runs): the report would pool two architectures in one mean."""
    arms = _versions(records, "plugin_code", lambda r: (r["model"], r["width"], r["dataset"], r["label"]))
    return [f"{label} ({model} on {dataset}): models built by {len(codes)} different versions of the plugins' code "
            f"(e.g. {', '.join(codes.values())}): the report pools them in one arm; report each version's results "
            "separately" for (model, _, dataset, label), codes in arms.items() if len(codes) > 1]


def evaluated_under_other_code(records: Sequence[dict]) -> list[str]:
    """Messages for models evaluated under other plugin code than they were trained with (a plugin's variation
    kind, method or data set edited between `nvcim train` and `nvcim eval`): the numbers are the edited code's."""
    edited = sorted({r["checkpoint"] or r["label"] for r in records
                     if r.get("eval_plugin_code") and r.get("plugin_code") and r["eval_plugin_code"] != r["plugin_code"]})
    if not edited:
        return []
    return [f"{len(edited)} model(s) evaluated under other code of their plugins than they were trained with (e.g. "
            f"{', '.join(map(str, edited[:3]))}): their results are the edited code's; evaluate with the version "
            "they were trained with, or retrain"]
