"""The comparison report's sections beyond the runs table: settings, data, operating points,
calibration, heatmap galleries, warnings and external validation.

Each ``*_html`` function takes the runs' :class:`RunSummary` objects (defined here, loaded by
:mod:`mammolab.evaluate.report`) and
returns an HTML fragment (empty when there is nothing to show) headed by an ``<h2>`` with a fixed
``id``, so a reader (or a test) can link to ``report.html#operating-points``. The numbers behind a
fragment come from plain functions (``settings_table``, ``data_summary``, ``operating_points``,
``gallery``, ``external_evaluations``) that tests check against direct computations.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.evaluate import plots
from mammolab.evaluate.evaluation import EVAL_DIRNAME, METRICS_NAME, VAL_PREDICTIONS_NAME
from mammolab.evaluate.metrics import fixed_rate_operating_points
from mammolab.io.csvsafe import read_csv as read_safe_csv


@dataclass
class RunSummary:
    """Everything the report shows about one run."""

    run_dir: Path
    label: str
    info: dict[str, Any]
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    history: pd.DataFrame | None = None
    localisation: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune_figures: list[Path] = field(default_factory=list)


__all__ = [
    "GALLERY_KINDS",
    "MIN_SPLIT_IMAGES",
    "calibration_html",
    "data_html",
    "data_summary",
    "external_evaluations",
    "external_html",
    "gallery",
    "heatmaps_html",
    "operating_points",
    "operating_points_html",
    "run_warnings",
    "settings_html",
    "settings_table",
]

#: Below this many images a split's metrics are too uncertain to rank runs by; the table says so.
MIN_SPLIT_IMAGES = 30
#: The four kinds of the heatmap gallery, in display order: (key, title, true class positive?, called positive?).
GALLERY_KINDS: tuple[tuple[str, str, bool, bool], ...] = (
    ("tp", "true positives", True, True),
    ("fp", "false positives", False, True),
    ("fn", "false negatives", True, False),
    ("tn", "true negatives", False, False),
)


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _f3(v: Any) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{f:.3f}"


def _with_ci(v: Any, lo: Any, hi: Any) -> str:
    if _num(v) is None:
        return "n/a"
    if _num(lo) is None or _num(hi) is None:
        return _f3(v)
    return f'{_f3(v)}<br><span class="ci">[{_f3(lo)}, {_f3(hi)}]</span>'


def figure_html(png: bytes, alt: str, caption: str = "", width: int | None = None) -> str:
    """A PNG as an inline ``<figure>`` (base64), its caption escaped: the report is one self-contained file."""
    data = base64.b64encode(png).decode("ascii")
    style = f' style="width:{width}px"' if width else ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{style}>{cap}</figure>'


def _img(png: bytes, alt: str, caption: str = "", width: int | None = None, caption_html: bool = False) -> str:
    if not caption_html:
        return figure_html(png, alt, caption, width)
    fig = figure_html(png, alt, "", width)
    return fig.replace("</figure>", f"<figcaption>{caption}</figcaption></figure>")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], text_cols: int = 1, cls: str = "compact",
           table_id: str = "") -> str:
    ths = "".join(f'<th class="text">{h}</th>' if i < text_cols else f"<th>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="text">{c}</td>' if i < text_cols else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    tid = f' id="{table_id}"' if table_id else ""
    return (f'<div class="table-wrap {cls}"><table class="sortable {cls}"{tid}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _run_config(s: RunSummary) -> dict[str, Any]:
    """A run's resolved training options (``config.yaml``), flattened with dotted keys; run.json as a fallback."""
    path = s.run_dir / "config.yaml"
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            return _flatten(data)
    raw = s.info.get("raw") or {}
    return {k: raw[k] for k in ("model", "preset", "regime", "seed", "fold", "subset") if raw.get(k) is not None}


def _show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def settings_table(summaries: Sequence[RunSummary]) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """``(keys that differ, {run: values of those keys}, {key: value} shared by every run)``.

    A key missing from a run's config counts as a difference (shown as ``-``).
    """
    configs = [_run_config(s) for s in summaries]
    keys = sorted(set().union(*configs)) if configs else []
    differ, shared = [], {}
    for k in keys:
        vals = {_show(c.get(k)) if k in c else "-" for c in configs}
        if len(vals) == 1 and all(k in c for c in configs):
            shared[k] = vals.pop()
        else:
            differ.append(k)
    per_run = {s.label: [_show(c[k]) if k in c else "-" for k in differ] for s, c in zip(summaries, configs,
                                                                                          strict=True)}
    return differ, per_run, shared


def settings_html(summaries: Sequence[RunSummary]) -> str:
    differ, per_run, shared = settings_table(summaries)
    if not differ and not shared:
        return ""
    parts = ['<h2 id="settings">Settings</h2>',
             '<p class="note">Each run\'s resolved training options (its <code>config.yaml</code>): first those that '
             "differ between the runs, then, once, those they share.</p>"]
    if differ:
        rows = [[_esc(label)] + [_esc(v) for v in vals] for label, vals in per_run.items()]
        parts.append(_table(["run"] + [_esc(k) for k in differ], rows, table_id="settings-differ"))
    if shared:
        items = "".join(f"<li><code>{_esc(k)}</code>: {_esc(v)}</li>" for k, v in shared.items())
        parts.append(f'<h3>Shared by every run</h3><ul class="settings-shared">{items}</ul>')
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def data_summary(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """One entry per dataset the runs were trained on: its path, hashes, source, and per split the counts.

    Counts come from the dataset's ``manifest.csv`` when it is still there (images, patients, images per
    class); otherwise from what the runs recorded (``run.json``'s images per split, the evaluation's
    classes and patients).
    """
    from mammolab.data.manifest import read_info

    groups: dict[tuple[str, str], list[RunSummary]] = {}
    for s in summaries:
        raw = s.info.get("raw") or {}
        key = (str(raw.get("dataset") or "?"), str(raw.get("manifest_hash") or "?"))
        groups.setdefault(key, []).append(s)
    out = []
    for (path, mhash), runs in groups.items():
        raw = runs[0].info.get("raw") or {}
        entry: dict[str, Any] = {"dataset": path, "manifest_hash": mhash,
                                 "config_hash": raw.get("dataset_config_hash"), "runs": [s.label for s in runs],
                                 "splits": {}, "source": None, "from_manifest": False}
        folder = Path(path)
        manifest = folder / "manifest.csv"
        if path != "?" and manifest.is_file():
            info = read_info(folder)
            src = info.get("source") or info.get("input")
            if isinstance(src, dict):  # the upstream dataset's record: its folder, stage and hashes
                bits = [str(src.get("dataset") or src.get("path") or "?")]
                bits += [f"{k.replace('_', ' ')} {src[k]}" for k in ("stage", "config_hash", "manifest_hash")
                         if src.get(k)]
                src = f"{bits[0]} ({', '.join(bits[1:])})" if len(bits) > 1 else bits[0]
            entry["source"] = str(src) if src else None
            entry["stage"] = info.get("stage")
            df = read_safe_csv(manifest, dtype=str, keep_default_na=False)
            entry["from_manifest"] = True
            for split, sub in df.groupby("split", sort=False):
                entry["splits"][str(split)] = {
                    "images": int(len(sub)),
                    "patients": int(sub["patient_id"].nunique()) if "patient_id" in sub else None,
                    "classes": {str(k): int(v) for k, v in sub["label"].value_counts().sort_index().items()},
                }
        else:
            n = raw.get("n_images") or {}
            for split, count in (n.items() if isinstance(n, dict) else []):
                entry["splits"][str(split)] = {"images": int(count), "patients": None, "classes": {}}
            m = runs[0].metrics
            if m.get("split"):
                entry["splits"][m["split"]] = {"images": m.get("n"), "patients": m.get("n_patients"),
                                               "classes": dict(m.get("class_counts") or {})}
        order = {"train": 0, "val": 1, "test": 2}
        entry["splits"] = dict(sorted(entry["splits"].items(), key=lambda kv: (order.get(kv[0], 9), kv[0])))
        used = {s.label: (s.info.get("raw") or {}).get("n_images") for s in runs}
        entry["used"] = {k: v for k, v in used.items() if isinstance(v, dict)}
        out.append(entry)
    return out


def data_html(summaries: Sequence[RunSummary]) -> str:
    entries = data_summary(summaries)
    if not entries:
        return ""
    parts = ['<h2 id="data">Data</h2>']
    for e in entries:
        classes = sorted({c for sp in e["splits"].values() for c in sp["classes"]})
        head = ["split", "images", "patients"] + [_esc(c) for c in classes]
        rows = []
        for split, sp in e["splits"].items():
            rows.append([_esc(split), str(sp["images"]), "?" if sp["patients"] is None else str(sp["patients"])]
                        + [str(sp["classes"].get(c, 0)) for c in classes])
        where = "its manifest" if e["from_manifest"] else "the runs' records (the dataset folder is not there)"
        meta = [f"dataset <code>{_esc(e['dataset'])}</code>", f"manifest hash <code>{_esc(e['manifest_hash'])}</code>"]
        if e.get("config_hash"):
            meta.append(f"config hash <code>{_esc(e['config_hash'])}</code>")
        if e.get("source"):
            meta.append(f"made{' by ' + _esc(e['stage']) if e.get('stage') else ''} from <code>{_esc(e['source'])}"
                        "</code>")
        parts.append(f'<p class="note">{"; ".join(meta)}. Runs: {_esc(", ".join(e["runs"]))}. Counts from {where}.'
                     "</p>")
        parts.append(_table(head, rows))
        differs = {r: n for r, n in e["used"].items()
                   if any(n.get(k) != sp["images"] for k, sp in e["splits"].items() if k in n)}
        if differs and e["from_manifest"]:
            txt = "; ".join(f"{_esc(r)}: " + ", ".join(f"{k} {v}" for k, v in n.items()) for r, n in differs.items())
            parts.append(f'<p class="note">Images the runs actually used (a fold or <code>subset</code>): {txt}.</p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# warnings
# --------------------------------------------------------------------------------------------
def _split_problems(name: str, n: int | None, counts: dict[str, int]) -> list[str]:
    out = []
    if n is not None and n < MIN_SPLIT_IMAGES:
        out.append(f"{name} split has {n} images (< {MIN_SPLIT_IMAGES}): wide intervals, unstable ranking")
    missing = [c for c, k in counts.items() if not k]
    if missing:
        out.append(f"{name} split has no {', '.join(missing)} images: AUC and the threshold are undefined")
    return out


def run_warnings(s: RunSummary) -> list[str]:
    """Reasons to distrust a run's row: a small evaluated or validation split, or one lacking a class."""
    m = s.metrics
    classes = list(m.get("classes") or [])
    counts = {c: int((m.get("class_counts") or {}).get(c, 0)) for c in classes}
    out = _split_problems(str(m.get("split", "test")), m.get("n"), counts)
    folder = s.run_dir / EVAL_DIRNAME / str(m.get("split", "test"))
    val_path = folder / VAL_PREDICTIONS_NAME
    if m.get("split") != "val" and val_path.is_file():
        try:
            val = pd.read_csv(val_path, usecols=["target"])
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            val = None
        if val is not None:
            t = val["target"].to_numpy()
            vcounts = {c: int(np.sum(t == k)) for k, c in enumerate(classes)}
            out += [w.replace(" AUC and the threshold are", " the chosen threshold is")
                    for w in _split_problems("val", len(val), vcounts)]
    return out


# --------------------------------------------------------------------------------------------
# operating points
# --------------------------------------------------------------------------------------------
_OP_COLUMNS = (("sensitivity", "specificity", 0.90), ("sensitivity", "specificity", 0.95),
               ("specificity", "sensitivity", 0.90), ("specificity", "sensitivity", 0.95))


def op_column(metric: str, at: str, target: float) -> str:
    """Column name in ``comparison.csv``: ``sens_at_spec90``, ``spec_at_sens95``..."""
    return f"{metric[:4]}_at_{at[:4]}{round(target * 100)}"


def operating_points(s: RunSummary, *, seed: int = 0) -> list[dict[str, Any]] | None:
    """Sensitivity at 90/95% specificity and the reverse, with patient-bootstrap CIs (None for 4-class runs).

    Uses the evaluation's own resample count, so these intervals match the AUC's in precision.
    """
    m = s.metrics
    if m.get("task") != "binary":
        return None
    p = s.predictions
    y = p["target"].to_numpy().astype(int)
    if not 0 < y.sum() < len(y):
        return None
    groups = p["patient_id"].astype(str).to_numpy() if "patient_id" in p else None
    n_boot = int(_num((m.get("auc") or {}).get("n_boot")) or 2000)
    return fixed_rate_operating_points(y, p["prob"].to_numpy(float), groups, n_boot=n_boot, seed=seed)


def operating_points_html(summaries: Sequence[RunSummary], points: dict[str, list[dict[str, Any]] | None]) -> str:
    rows = []
    for s in summaries:
        ops = points.get(s.label)
        if not ops:
            continue
        cells = [_esc(s.label)]
        for op in ops:
            thr = "" if op["threshold"] is None else f' <span class="ci">(t={op["threshold"]:.3f})</span>'
            cells.append(_with_ci(op["value"], op["ci_low"], op["ci_high"]) + thr)
        y = s.metrics["operating_points"]["youden"]
        lo_se, hi_se = y["ci"]["sensitivity"]
        lo_sp, hi_sp = y["ci"]["specificity"]
        src = y.get("source", "val")
        cells += [f'{y["threshold"]:.3f}<br><span class="ci">{_esc(src)}</span>',
                  _with_ci(y["sensitivity"], lo_se, hi_se), _with_ci(y["specificity"], lo_sp, hi_sp)]
        rows.append(cells)
    if not rows:
        return ""
    head = ["run", "sensitivity at 90% specificity", "sensitivity at 95% specificity",
            "specificity at 90% sensitivity", "specificity at 95% sensitivity",
            "validation-chosen threshold", "sensitivity there", "specificity there"]
    return "\n".join([
        '<h2 id="operating-points">Operating points</h2>',
        '<p class="note">How each run reads at the working points a radiologist uses. "Sensitivity at 90% '
        'specificity" is the highest sensitivity among thresholds whose specificity on these images is at least '
        "90% (t = that threshold on P(malignant)); the reverse for specificity at a sensitivity. 95% intervals: "
        "the same quantity re-read on each patient bootstrap resample, so they include where the threshold "
        "falls. The last three columns use the Youden threshold chosen on the validation split, the threshold "
        "a study fixes before seeing the test set.</p>",
        _table(head, rows, table_id="operating-points-table")])


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def calibration_html(summaries: Sequence[RunSummary], split: str) -> str:
    binary = [s for s in summaries if s.metrics.get("task") == "binary"]
    if not binary:
        return ""
    ns = {s.metrics.get("n") for s in binary}
    n: int | str = ns.pop() if len(ns) == 1 else "varies"
    rel = [{"label": s.label, "bins": (s.metrics.get("calibration") or {}).get("bins") or [],
            "brier": (s.metrics.get("brier") or {}).get("value"),
            "ece": (s.metrics.get("calibration") or {}).get("ece")} for s in binary]
    pr = [{"label": s.label, "precision": (s.metrics.get("pr") or {}).get("precision") or [],
           "recall": (s.metrics.get("pr") or {}).get("recall") or [],
           "ap": (s.metrics.get("pr") or {}).get("average_precision"),
           "prevalence": (s.metrics.get("pr") or {}).get("prevalence")} for s in binary]
    pr = [c for c in pr if c["precision"]]
    figs = [_img(plots.render_png(plots.plot_reliability_overlay(rel, split=split, n=n)),
                 "reliability diagram of all runs", f"reliability, {split} split", width=540)]
    if pr:
        figs.append(_img(plots.render_png(plots.plot_pr_overlay(pr, split=split, n=n)),
                         "precision-recall curves of all runs", f"precision-recall, {split} split", width=540))
    rows = []
    for s in binary:
        b, cal, prm = s.metrics.get("brier") or {}, s.metrics.get("calibration") or {}, s.metrics.get("pr") or {}
        rows.append([_esc(s.label), _with_ci(b.get("value"), b.get("ci_low"), b.get("ci_high")), _f3(cal.get("ece")),
                     _f3(prm.get("average_precision"))])
    return "\n".join([
        '<h2 id="calibration">Calibration and precision-recall</h2>',
        '<p class="note">Reliability: mean predicted P(malignant) per tenth of the probability range against the '
        "observed share of malignant images (marker area ~ images in the bin); on the diagonal, the probabilities "
        "can be read as risks. Brier score (lower is better, 0.25 = always 0.5) with its patient-bootstrap "
        "interval; ECE = images-weighted mean gap between the two. Precision-recall curves matter when malignant "
        "cases are rare.</p>",
        '<div class="grid">', *figs, "</div>",
        _table(["run", "Brier [95% CI]", "ECE", "average precision"], rows, table_id="calibration-table")])


# --------------------------------------------------------------------------------------------
# heatmap galleries
# --------------------------------------------------------------------------------------------
def _explain_records(s: RunSummary) -> tuple[str, dict[str, Any], pd.DataFrame] | None:
    """The method, summary and per-image table of the run's explanation of its evaluated split, if any."""
    if not s.localisation:
        return None
    method = "gradcam" if "gradcam" in s.localisation else sorted(s.localisation)[0]
    summary = s.localisation[method]
    overlays = summary.get("overlays")
    if not overlays:
        return None
    folder = Path(overlays).parent
    if not folder.is_absolute() and not folder.is_dir():
        folder = s.run_dir / folder
    csv = folder / "localisation.csv"
    if not csv.is_file():
        return None
    try:
        df = read_safe_csv(csv, dtype={"image_id": str, "path": str, "label": str}, keep_default_na=False,
                         na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not {"label", "prob_malignant", "overlay"} <= set(df.columns) or not len(df):
        return None
    df = df.copy()
    df["overlay_file"] = [folder / str(o) for o in df["overlay"]]
    return method, summary, df


def gallery(records: pd.DataFrame, threshold: float, positive: str, per_kind: int = 2) -> dict[str, pd.DataFrame]:
    """The most confident cases of each kind among explained images, called positive when ``p >= threshold``.

    True and false positives: the highest P(malignant) first; false and true negatives: the lowest
    first (the model's most confident calls either way). Ties by image id, so the choice is stable.
    """
    p = records["prob_malignant"].astype(float)
    pos = records["label"].astype(str) == positive
    called = p >= threshold
    key = records["image_id"].astype(str) if "image_id" in records else records.index.astype(str)
    out = {}
    for kind, _, truth, call in GALLERY_KINDS:
        mask = ((pos == truth) & (called == call)).to_numpy()
        sel = records[mask].assign(_p=p.to_numpy()[mask], _k=np.asarray(key)[mask])
        out[kind] = sel.sort_values(["_p", "_k"], ascending=[not call, True]).head(per_kind).drop(columns=["_p", "_k"])
    return out


def _tile_png(path: Path, max_height: int = 300) -> bytes | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    if img.shape[0] > max_height:
        scale = max_height / img.shape[0]
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max_height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes() if ok else None


def _gallery_figure(png: bytes, r: pd.Series, kind: str, title: str, rank: int, call: bool, t: float, positive: str,
                    method: str, explained: str, label: str) -> str:
    """One gallery tile: the overlay (image | heatmap with the box | colour bar) and a caption saying it all."""
    pval = float(r["prob_malignant"])
    rel = "&ge;" if call else "&lt;"
    loc = []
    if _num(r.get("energy_in_box")) is not None:
        area = _num(r.get("box_area_fraction"))
        loc.append(f"energy in box {float(r['energy_in_box']):.2f}"
                   + (f" (box {area:.2f} of the image)" if area is not None else ""))
    if str(r.get("pointing_hit")) in ("True", "False"):
        loc.append("pointing hit" if str(r["pointing_hit"]) == "True" else "pointing miss")
    cap = (f"<b>{title[:-1].capitalize()} #{rank}</b>: {_esc(r.get('image_id', ''))}, true {_esc(r['label'])}, "
           f"P({_esc(positive)}) = {pval:.3f} {rel} {t:.3f}; {_esc(method)} of {_esc(r.get('explained', explained))}"
           + (f"; {', '.join(loc)}" if loc else "") + ".")
    fig = _img(png, f"{label} {title[:-1]} {r.get('image_id', '')}", cap, caption_html=True)
    return fig.replace("<figure>", f'<figure class="gallery" data-kind="{kind}" '
                                   f'data-image="{_esc(r.get("image_id", ""))}">', 1)


def heatmaps_html(summaries: Sequence[RunSummary], per_kind: int = 2) -> str:
    parts: list[str] = []
    for s in summaries:
        m = s.metrics
        if m.get("task") != "binary":
            continue
        found = _explain_records(s)
        if found is None:
            continue
        method, summary, records = found
        op = m["operating_points"]["youden"]
        t, positive = float(op["threshold"]), str(m["classes"][1])
        chosen = gallery(records, t, positive, per_kind)
        explained = records["explained"].iloc[0] if "explained" in records and len(records) else "?"
        parts.append(f"<h3>{_esc(s.label)}</h3>")
        parts.append(f'<p class="note">{_esc(method)} of each image\'s {_esc(summary.get("target") or "true")} class '
                     f"among the {len(records)} explained {_esc(m.get('split', 'test'))} images; an image is "
                     f"called {_esc(positive)} when P({_esc(positive)}) &ge; {t:.3f} (the Youden threshold chosen on "
                     f"{_esc(op.get('source', 'val'))}). Green: the lesion box; colour bar: the map's share of its "
                     "strongest response.</p>")
        columns = []
        for kind, title, _truth, call in GALLERY_KINDS:
            rows = chosen[kind]
            tiles = [f"<h4>{title.capitalize()}</h4>"]
            if not len(rows):
                tiles.append(f'<p class="note gallery-none">None at this threshold among the {len(records)} '
                             "explained images.</p>")
            for rank, (_, r) in enumerate(rows.iterrows(), start=1):
                png = _tile_png(Path(r["overlay_file"]))
                if png is None:
                    continue
                tiles.append(_gallery_figure(png, r, kind, title, rank, call, t, positive, method, explained, s.label))
            columns.append(f'<div class="gallery-kind" data-kind="{kind}">{"".join(tiles)}</div>')
        parts.append(f'<div class="gallery-run">{"".join(columns)}</div>')
    if not parts:
        return ""
    return "\n".join(['<h2 id="heatmaps">Heatmaps</h2>',
                      '<p class="note">Per run, the most confident true positives, false positives, false negatives '
                      "and true negatives (from <code>mammolab explain</code>): each the image beside its heatmap, "
                      "the lesion box on both.</p>", *parts])


# --------------------------------------------------------------------------------------------
# external validation
# --------------------------------------------------------------------------------------------
def external_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``RUN/eval/*/metrics.json`` marked ``external: true`` (``mammolab evaluate RUN --dataset OTHER``).

    Each entry: ``{"name", "dataset", "split", "folder", "metrics"}``; ``name`` is the folder's name.
    """
    root = Path(run_dir) / EVAL_DIRNAME
    out = []
    for path in sorted(root.glob(f"*/{METRICS_NAME}")) if root.is_dir() else []:
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(m, dict) or m.get("external") is not True:
            continue
        ds = m.get("dataset")
        info = ds if isinstance(ds, dict) else {"name": m.get("dataset_name") or (Path(str(ds)).name if ds else None),
                                               "path": ds}
        out.append({"name": path.parent.name, "dataset": str(info.get("name") or path.parent.name),
                    "dataset_path": str(info.get("path") or ""), "manifest_hash": info.get("manifest_hash"),
                    "split": str(m.get("eval_split") or m.get("split", "")), "folder": path.parent, "metrics": m})
    return out


def external_html(summaries: Sequence[RunSummary]) -> str:
    groups: dict[tuple[str, str], list[tuple[RunSummary, dict[str, Any]]]] = {}
    for s in summaries:
        for e in external_evaluations(s.run_dir):
            groups.setdefault((e["dataset"], e["split"]), []).append((s, e))
    if not groups:
        return ""
    parts = ['<h2 id="external">External validation</h2>',
             '<p class="note">Runs evaluated on datasets they were not trained on (<code>mammolab evaluate RUN '
             "--dataset OTHER</code>), kept apart from the internal results above. Threshold metrics at each "
             "run's own validation-chosen threshold, carried over unchanged.</p>"]
    for (dataset, split), items in sorted(groups.items()):
        rows, curves = [], []
        for s, e in sorted(items, key=lambda it: -(_num((it[1]["metrics"].get("auc") or {}).get("value")) or -1)):
            m = e["metrics"]
            auc = m.get("auc") or {}
            cells = [_esc(s.label), str(m.get("n", "?")), str(m.get("n_patients", "?")),
                     _with_ci(auc.get("value"), auc.get("ci_low"), auc.get("ci_high"))]
            op = (m.get("operating_points") or {}).get("youden")
            if m.get("task") == "binary" and op:
                cells += [f"{_num(op.get('threshold')) or 0:.3f}",
                          _with_ci(op.get("sensitivity"), *(op.get("ci", {}).get("sensitivity") or (None, None))),
                          _with_ci(op.get("specificity"), *(op.get("ci", {}).get("specificity") or (None, None)))]
                b = m.get("brier") or {}
                cells.append(_with_ci(b.get("value"), b.get("ci_low"), b.get("ci_high")))
                if (m.get("roc") or {}).get("fpr"):
                    curves.append({"label": s.label, "fpr": m["roc"]["fpr"], "tpr": m["roc"]["tpr"],
                                   "auc": auc.get("value"), "ci": (auc.get("ci_low"), auc.get("ci_high"))})
            else:
                cells += ["-", "-", "-", "-"]
            warn = _split_problems(split or "external", m.get("n"),
                                   {c: int(v) for c, v in (m.get("class_counts") or {}).items()})
            cells.append("<br>".join(f'<span class="warn">&#9888; {_esc(w)}</span>' for w in warn) or "-")
            rows.append(cells)
        parts.append(f"<h3>{_esc(dataset)} ({_esc(split)} split)</h3>")
        first = items[0][1]
        where = [f"<code>{_esc(first['dataset_path'])}</code>"] if first["dataset_path"] else []
        if first.get("manifest_hash"):
            where.append(f"manifest hash <code>{_esc(first['manifest_hash'])}</code>")
        if where:
            parts.append(f'<p class="note">{"; ".join(where)}</p>')
        parts.append(_table(["run", "n", "patients", "AUC [95% CI]", "threshold", "sensitivity", "specificity",
                             "Brier", "warnings"], rows, table_id=f"external-{_esc(dataset)}-{_esc(split)}"))
        if curves:
            ns = {e["metrics"].get("n") for _, e in items}
            fig = plots.plot_roc_overlay(curves, split=f"{dataset} {split}", n=ns.pop() if len(ns) == 1 else "varies")
            parts += ['<div class="grid">', _img(plots.render_png(fig), f"ROC curves on {dataset}",
                                                 f"{dataset}, {split} split (external)", width=520), "</div>"]
    return "\n".join(parts)
