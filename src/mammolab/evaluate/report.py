"""Compare runs: one self-contained HTML report, ``comparison.csv`` and a Markdown table.

A researcher compares many runs and must be able to hand the result on: the report is a single
HTML file with every figure embedded as a ``data:`` URI and all CSS/JS inline, so it opens offline
and survives e-mail. Runs are sorted by AUC (best first); each is tested against the best with
DeLong's paired test on the images both were scored on.

Inputs per run (all written by earlier stages): ``run.json`` (model, regime, parameters, epochs,
time, throughput), ``metrics.csv`` (training curves), ``eval/<split>/`` (``mammolab evaluate``;
computed here when missing), ``eval/<split>/localisation_<method>.json`` (``mammolab explain``)
and, when a tuning study wrote them, ``tune/*.png``.
"""

from __future__ import annotations

import html
import json
import math
import string
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.evaluate import plots
from mammolab.evaluate import report_sections as sections
from mammolab.evaluate.evaluation import eval_dir, load_evaluation
from mammolab.evaluate.metrics import THRESHOLD_METRICS, delong_test, json_safe, summary_row
from mammolab.evaluate.report_sections import RunSummary
from mammolab.evaluate.report_sections import figure_html as _img
from mammolab.infer.runfiles import LOCALISATION_PREFIX
from mammolab.io.atomic import atomic_write_bytes, atomic_write_text
from mammolab.io.csvsafe import to_csv_text
from mammolab.io.lock import locks_output

__all__ = ["RunSummary", "compare_runs", "load_run_summary"]



# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) not in (None, ""):
            return d[k]
    return None


def _run_info(run_dir: Path) -> dict[str, Any]:
    """Normalise ``run.json`` into the fields the table shows (missing ones are ``None``)."""
    path = run_dir / "run.json"
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MammoLabError(f"{path}: corrupt JSON ({exc})") from None
    params = _first(raw, "parameters", "params", "parameter_counts", "n_params")
    total = trainable = None
    if isinstance(params, dict):
        total, trainable = _first(params, "total", "all"), _first(params, "trainable")
    elif params is not None:
        total = params
    total = total if total is not None else _first(raw, "params_total", "total_params")
    trainable = trainable if trainable is not None else _first(raw, "params_trainable", "trainable_params")
    return {
        "model": _first(raw, "model", "model_name", "backbone") or "?",
        "regime": _first(raw, "regime") or "",
        "params": total,
        "trainable_params": trainable,
        "epochs": _first(raw, "epochs", "epochs_run", "epochs_trained", "epochs_completed"),
        "train_time_s": _first(raw, "train_time_seconds", "train_time_s", "train_seconds", "fit_seconds",
                               "training_time_s"),
        "throughput": _first(raw, "throughput", "throughput_img_s", "images_per_second", "train_throughput"),
        "raw": raw,
    }


def _history(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except Exception:  # a half-written or empty log only costs the curves, not the report
        return None
    return df if len(df) else None


def _localisation(run_dir: Path, split: str) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(eval_dir(run_dir, split).glob(f"{LOCALISATION_PREFIX}*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        out[data.get("method") or path.stem[len(LOCALISATION_PREFIX):]] = data
    return out


def load_run_summary(run_dir: str | Path, split: str = "test", *, evaluate_missing: bool = True,
                     label: str | None = None) -> RunSummary:
    """Collect one run's info, evaluation, curves, localisation and tuning figures."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MammoLabError(f"{run_dir}: run folder not found")
    folder = eval_dir(run_dir, split)
    if not (folder / "metrics.json").is_file():
        if not evaluate_missing:
            raise MammoLabError(f"{run_dir}: not evaluated on {split} (run 'mammolab evaluate {run_dir}')")
        from mammolab.evaluate.evaluation import evaluate_run

        evaluate_run(run_dir, split)
    metrics, preds = load_evaluation(run_dir, split)
    tune = sorted((run_dir / "tune").glob("*.png")) if (run_dir / "tune").is_dir() else []
    return RunSummary(run_dir=run_dir, label=label or run_dir.name, info=_run_info(run_dir), metrics=metrics,
                      predictions=preds, history=_history(run_dir), localisation=_localisation(run_dir, split),
                      tune_figures=tune)


def _unique_labels(run_dirs: list[Path]) -> list[str]:
    labels = [p.name for p in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in run_dirs]
    return labels


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------
def _pair_key(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    for key in ("image_id", "path"):
        if key in a and key in b and a[key].notna().all() and b[key].notna().all() \
                and a[key].is_unique and b[key].is_unique:
            return key
    return None


def _delong_vs(best: RunSummary, other: RunSummary) -> dict[str, Any] | None:
    """Paired DeLong test of ``other`` against ``best``; ``None`` unless both scored the same images."""
    a, b = best.predictions, other.predictions
    key = _pair_key(a, b)
    if key is None or set(a[key]) != set(b[key]):
        return None
    merged = a[[key, "target", "prob"]].merge(b[[key, "target", "prob"]], on=key, suffixes=("_best", "_run"))
    if (merged["target_best"] != merged["target_run"]).any():
        return None
    y = merged["target_best"].to_numpy().astype(int)
    if not 0 < y.sum() < len(y):
        return None
    return delong_test(y, merged["prob_run"].to_numpy(float), merged["prob_best"].to_numpy(float))


def _loc_summary(s: RunSummary) -> tuple[str | None, dict[str, Any] | None]:
    if not s.localisation:
        return None, None
    method = "gradcam" if "gradcam" in s.localisation else sorted(s.localisation)[0]
    return method, s.localisation[method]


def _table(summaries: list[RunSummary], points: dict[str, list[dict[str, Any]] | None] | None = None) -> pd.DataFrame:
    rows = []
    points = points or {}
    best = next((s for s in summaries if s.metrics.get("task") == "binary"
                 and s.metrics.get("auc", {}).get("value") is not None), None)
    for rank, s in enumerate(summaries, start=1):
        row: dict[str, Any] = {"rank": rank, "run": s.label, "model": s.info["model"], "regime": s.info["regime"],
                               "params": s.info["params"], "trainable_params": s.info["trainable_params"],
                               "epochs": s.info["epochs"], "train_time_s": s.info["train_time_s"],
                               "throughput_img_s": s.info["throughput"]}
        row.update(summary_row(s.metrics))
        row["tta"] = bool(s.metrics.get("tta", False))
        for op in points.get(s.label) or []:
            col = sections.op_column(op["metric"], op["at"], op["target"])
            row[col], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = op["value"], op["ci_low"], op["ci_high"]
            row[f"{col}_threshold"] = op["threshold"]
        row["warnings"] = "; ".join(sections.run_warnings(s))
        row["delong_p_vs_best"] = row["delong_diff_vs_best"] = None
        if best is not None and s is not best and s.metrics.get("task") == "binary":
            d = _delong_vs(best, s)
            if d is not None:
                row["delong_p_vs_best"], row["delong_diff_vs_best"] = d["p"], d["diff"]
        method, loc = _loc_summary(s)
        row["localisation_method"] = method
        row["localisation_energy"] = loc.get("energy_in_box_mean") if loc else None
        row["pointing_game"] = loc.get("pointing_game_hit_rate") if loc else None
        row["localisation_box_area"] = loc.get("box_area_fraction_mean") if loc else None
        row["localisation_n"] = loc.get("pointing_game_n") if loc else None
        row["run_dir"] = str(s.run_dir)
        rows.append(row)
    return pd.DataFrame(rows)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(v: Any, digits: int = 3) -> str:
    f = _num(v)
    return "n/a" if f is None else f"{f:.{digits}f}"


def _fmt_ci(row: pd.Series, m: str) -> str:
    v, lo, hi = _num(row.get(m)), _num(row.get(f"{m}_ci_low")), _num(row.get(f"{m}_ci_high"))
    if v is None:
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def _fmt_params(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "?"
    return f"{f / 1e6:.2f}M" if f >= 1e5 else f"{f / 1e3:.1f}k"


def _fmt_time(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "?"
    if f < 60:
        return f"{f:.1f} s"
    if f < 3600:
        return f"{int(f // 60)}m {int(f % 60):02d}s"
    return f"{int(f // 3600)}h {int(f % 3600 // 60):02d}m"


def _fmt_p(v: Any, best: bool) -> str:
    if best:
        return "best"
    f = _num(v)
    if f is None:
        return "n/a"
    return "<0.001" if f < 0.001 else f"{f:.3f}"


def _loc_parts(row: pd.Series) -> tuple[str, str] | None:
    """``("energy / pointing", "box area, method, n")`` for a run with a localisation summary, else None."""
    e, h = _num(row.get("localisation_energy")), _num(row.get("pointing_game"))
    if e is None and h is None:
        return None
    area, n = _num(row.get("localisation_box_area")), _num(row.get("localisation_n"))
    detail = [f"box {_fmt(area, 2)}"] if area is not None else []
    detail.append(str(row["localisation_method"]))
    if n is not None:
        detail.append(f"n={int(n)}")
    return f"{_fmt(e, 2)} / {_fmt(h, 2)}", ", ".join(detail)


def _fmt_loc(row: pd.Series) -> str:
    parts = _loc_parts(row)
    return "-" if parts is None else f"{parts[0]} ({parts[1]})"


def _loc_cell(row: pd.Series) -> str:
    parts = _loc_parts(row)
    if parts is None:
        return _cell("-")
    return _cell(f'{html.escape(parts[0])}<br><span class="ci">{html.escape(parts[1])}</span>',
                 row.get("localisation_energy"))


_DISPLAY_METRICS = ("auc",) + THRESHOLD_METRICS + ("brier",)


def _is_best(r: pd.Series) -> bool:
    return bool(r["rank"] == 1 and r["task"] == "binary")


def _resamples(summaries: list[RunSummary]) -> str:
    """How many bootstrap resamples the intervals used, as the runs' metrics record it."""
    counts = sorted({int(n) for s in summaries if (n := _num(s.metrics.get("auc", {}).get("n_boot"))) is not None})
    if not counts:
        return "resamples"
    if len(counts) == 1:
        return f"{counts[0]} resamples"
    return f"{counts[0]}-{counts[-1]} resamples, by run"


def _markdown(table: pd.DataFrame, split: str, with_roc: bool, resamples: str) -> str:
    head = ["#", "run", "model", "regime", "params", "epochs", "train time", "img/s", "n",
            "AUC [95% CI]", "accuracy", "sensitivity", "specificity", "precision", "F1", "Brier",
            "DeLong p vs best", "localisation (energy / pointing)"]
    lines = [f"Runs compared on the {split} split. {RANKING_RULE}. Threshold metrics at the Youden threshold "
             f"chosen on the validation split; 95% CIs by patient-level bootstrap ({resamples}).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for _, r in table.iterrows():
        warn = f" (warning: {r['warnings']})" if isinstance(r.get("warnings"), str) and r["warnings"] else ""
        cells = [str(r["rank"]), str(r["run"]) + warn, str(r["model"]), str(r["regime"] or "-"),
                 _fmt_params(r["params"]),
                 _fmt(r["epochs"], 0), _fmt_time(r["train_time_s"]), _fmt(r["throughput_img_s"], 1), str(r["n"])]
        cells += [_fmt_ci(r, m) for m in _DISPLAY_METRICS]
        cells += [_fmt_p(r["delong_p_vs_best"], _is_best(r)), _fmt_loc(r)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if with_roc:
        lines += ["", "![ROC curves of all runs](roc_overlay.png)"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
def _cell(text: str, value: Any = None, cls: str = "") -> str:
    dv = "" if _num(value) is None else f' data-v="{_num(value)}"'
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{dv}>{text}</td>"


def _metric_cell(r: pd.Series, m: str) -> str:
    v, lo, hi = _num(r.get(m)), _num(r.get(f"{m}_ci_low")), _num(r.get(f"{m}_ci_high"))
    if v is None:
        return _cell("n/a")
    ci = f'<br><span class="ci">[{lo:.3f}, {hi:.3f}]</span>' if lo is not None and hi is not None else ""
    return _cell(f"{v:.3f}{ci}", v)


def _warn_marks(r: pd.Series) -> str:
    text = r.get("warnings")
    if not isinstance(text, str) or not text:
        return ""
    return "".join(f'<br><span class="warn" title="{html.escape(w)}">&#9888; {html.escape(w.split(":")[0])}</span>'
                   for w in text.split("; "))


def _html_table(table: pd.DataFrame) -> str:
    heads = ["#", "run", "model", "regime", "params", "epochs", "train time", "img/s", "n", "AUC [95% CI]",
             "accuracy", "sensitivity", "specificity", "precision", "F1", "Brier", "DeLong p", "localisation"]
    text_cols = {"run", "model", "regime"}
    th = "".join(f'<th class="text">{h}</th>' if h in text_cols else f"<th>{h}</th>" for h in heads)
    body = []
    for _, r in table.iterrows():
        best = _is_best(r)
        cells = [_cell(str(r["rank"]), r["rank"]),
                 _cell(html.escape(str(r["run"])) + _warn_marks(r), cls="text"),
                 _cell(html.escape(str(r["model"])), cls="text"),
                 _cell(html.escape(str(r["regime"] or "-")), cls="text"),
                 _cell(_fmt_params(r["params"]), r["params"]),
                 _cell(_fmt(r["epochs"], 0), r["epochs"]),
                 _cell(_fmt_time(r["train_time_s"]), r["train_time_s"]),
                 _cell(_fmt(r["throughput_img_s"], 1), r["throughput_img_s"]),
                 _cell(str(r["n"]), r["n"])]
        cells += [_metric_cell(r, m) for m in _DISPLAY_METRICS]
        cells.append(_cell(_fmt_p(r["delong_p_vs_best"], best), 0 if best else r["delong_p_vs_best"]))
        cells.append(_loc_cell(r))
        body.append(f'<tr class="{"best" if best else ""}">{"".join(cells)}</tr>')
    return (f'<div class="table-wrap"><table class="sortable" id="comparison"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _overlay_png(summaries: list[RunSummary], split: str) -> bytes | None:
    curves = []
    ns = set()
    for s in summaries:
        m = s.metrics
        if m.get("task") == "binary" and m.get("roc", {}).get("fpr"):
            curves.append({"label": s.label, "fpr": m["roc"]["fpr"], "tpr": m["roc"]["tpr"],
                           "auc": m["auc"]["value"], "ci": (m["auc"]["ci_low"], m["auc"]["ci_high"])})
            ns.add(m["n"])
    if not curves:
        return None
    n = ns.pop() if len(ns) == 1 else "varies"
    return plots.render_png(plots.plot_roc_overlay(curves, split=split, n=n))


def _confusion_png(s: RunSummary) -> bytes:
    m = s.metrics
    if m["task"] == "binary":
        op = m["operating_points"]["youden"]
        sub = f"{s.label}: Youden threshold {op['threshold']:.3f}"
        fig = plots.plot_confusion(op["confusion"], m["classes"], split=m["split"], n=m["n"], subtitle=sub)
    else:
        fig = plots.plot_confusion(m["confusion"], m["classes"], split=m["split"], n=m["n"],
                                   subtitle=f"{s.label}: argmax")
    return plots.render_png(fig)


def _subgroup_html(summaries: list[RunSummary]) -> str:
    cols: dict[str, set[str]] = {}
    for s in summaries:
        for col, groups in (s.metrics.get("subgroups") or {}).items():
            cols.setdefault(col, set()).update(groups)
    if not cols:
        return ""
    parts = ['<h2 id="subgroups">Results per subgroup</h2>',
             '<p class="note">AUC (macro one-vs-rest for 4-class runs) per subgroup, with the number of images; '
             "n/a where a subgroup holds one class only.</p>"]
    for col, values in cols.items():
        vals = sorted(values)
        th = '<th class="text">run</th>' + "".join(f"<th>{html.escape(col)} = {html.escape(v)}</th>" for v in vals)
        rows = []
        for s in summaries:
            groups = (s.metrics.get("subgroups") or {}).get(col, {})
            cells = [_cell(html.escape(s.label), cls="text")]
            for v in vals:
                g = groups.get(v)
                if g is None:
                    cells.append(_cell("-"))
                    continue
                auc = g.get("auc", g.get("auc_macro"))
                cells.append(_cell(f"{_fmt(auc)} <span class=\"ci\">(n={g['n']})</span>", auc))
            rows.append(f"<tr>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(col)}</h3><div class=\"table-wrap compact\"><table class=\"sortable compact\">"
                     f"<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return "\n".join(parts)


def _sizes(s: RunSummary) -> str:
    """``- train n=.., val n=..`` from run.json, so the curves say what they were computed on."""
    n = s.info["raw"].get("n_images") or {}
    parts = [f"{k} split n={n[k]}" for k in ("train", "val") if isinstance(n, dict) and n.get(k) is not None]
    return " - " + ", ".join(parts) if parts else ""


def _build_html(summaries: list[RunSummary], table: pd.DataFrame, split: str, overlay: bytes | None,
                points: dict[str, list[dict[str, Any]] | None] | None = None) -> str:
    n_runs = len(summaries)
    warned = [(r["run"], r["warnings"]) for _, r in table.iterrows() if isinstance(r.get("warnings"), str)
              and r["warnings"]]
    warn_html = ""
    if warned:
        items = "".join(f"<li><b>{html.escape(str(run))}</b>: {html.escape(w)}</li>" for run, w in warned)
        warn_html = f'<ul class="notes warnings">{items}</ul>'
    parts = ['<h2 id="table">Runs</h2>',
             f'<p class="note">{html.escape(RANKING_RULE, quote=False)}; the first is marked best (click a header to '
             "re-sort; the table scrolls sideways inside its box). Accuracy, sensitivity, "
             "specificity, precision and F1 at the Youden threshold chosen on the validation split. 95% confidence "
             f"intervals: percentile bootstrap, {_resamples(summaries)} of patients. DeLong: paired test of each "
             "run's AUC "
             "against the best run on the same images (n/a when the images differ). Localisation: share of heatmap "
             "energy inside the lesion box / pointing-game hit rate, from <code>mammolab explain</code>; below them "
             "the box's share of the image (what a map that ignores the image would score), the method and the "
             "number of images scored.</p>",
             _html_table(table), warn_html,
             sections.settings_html(summaries), sections.data_html(summaries),
             sections.operating_points_html(summaries, points or {})]
    if overlay is not None:
        parts += ['<h2 id="roc">ROC curves</h2>', '<div class="grid">',
                  _img(overlay, "ROC curves of all runs", f"{split} split", width=540), "</div>"]
    parts.append(sections.calibration_html(summaries, split))
    curves = [s for s in summaries if s.history is not None]
    if curves:
        parts += ['<h2 id="curves">Training curves</h2>', '<div class="grid">']
        for s in curves:
            fig = plots.plot_training_curves(s.history, title=f"{s.label} ({s.info['model']}){_sizes(s)}")
            parts.append(_img(plots.render_png(fig), f"training curves of {s.label}", s.label, width=900))
        parts.append("</div>")
    parts += ['<h2 id="confusion">Confusion matrices</h2>', '<div class="grid">']
    parts += [_img(_confusion_png(s), f"confusion matrix of {s.label}", s.label, width=330) for s in summaries]
    parts.append("</div>")
    parts.append(sections.heatmaps_html(summaries))
    parts.append(_subgroup_html(summaries))
    tuned = [s for s in summaries if s.tune_figures]
    if tuned:
        parts.append('<h2 id="tuning">Hyper-parameter search</h2>')
        for s in tuned:
            parts += [f"<h3>{html.escape(s.label)}</h3>", '<div class="grid">']
            parts += [_img(p.read_bytes(), f"{s.label} {p.stem}", p.stem.replace("_", " ")) for p in s.tune_figures]
            parts.append("</div>")
    parts.append(sections.external_html(summaries))
    template = string.Template(resources.files("mammolab").joinpath("resources/report.html").read_text("utf-8"))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{n_runs} run{'s' if n_runs != 1 else ''} compared on the <b>{html.escape(split)}</b> split; "
                f"generated {stamp} by MammoLab.")
    return template.substitute(title="MammoLab run comparison", subtitle=subtitle, body="\n".join(parts))


#: The ranking rule, stated in the report and applied by ``_sort_key``.
RANKING_RULE = ("Sorted by AUC, best first; ties broken by the lower bound of the AUC's 95% interval (higher "
                "first), then by the Brier score (lower first), then by name")


def _sort_key(s: RunSummary) -> tuple[int, float, float, float, str]:
    """Best AUC first; ties (common at 1.000 on easy data) by the interval's lower bound, then the Brier
    score, then the name, so the order never depends on the order the runs were given in."""
    auc = s.metrics.get("auc", {})
    value, low = _num(auc.get("value")), _num(auc.get("ci_low"))
    brier = _num((s.metrics.get("brier") or {}).get("value"))
    return (0 if s.metrics.get("task") == "binary" else 1, -(value if value is not None else -np.inf),
            -(low if low is not None else -np.inf), brier if brier is not None else np.inf, s.label)


@locks_output("out_dir", name="compare")  # one writer per --out, a killed compare's temps removed
def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, *, split: str = "test",
                 evaluate_missing: bool = True) -> dict[str, Path]:
    """Write ``report.html``, ``comparison.csv``, ``comparison.md`` and ``roc_overlay.png`` to ``out_dir``.

    Runs not yet evaluated on ``split`` are evaluated first (unless ``evaluate_missing`` is off).
    Returns the written paths by name.
    """
    if not run_dirs:
        raise MammoLabError("compare: give at least one run folder")
    dirs: list[Path] = []
    for p in map(Path, run_dirs):  # the same run named twice is shown once
        if all(p.resolve() != d.resolve() for d in dirs):
            dirs.append(p)
    labels = _unique_labels(dirs)
    summaries = [load_run_summary(d, split, evaluate_missing=evaluate_missing, label=lab)
                 for d, lab in zip(dirs, labels, strict=True)]

    summaries.sort(key=_sort_key)
    points = {s.label: sections.operating_points(s) for s in summaries}
    table = _table(summaries, points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = _overlay_png(summaries, split)
    paths = {"csv": out_dir / "comparison.csv", "markdown": out_dir / "comparison.md",
             "html": out_dir / "report.html"}
    clean = pd.DataFrame(json_safe(table.to_dict(orient="records")))
    atomic_write_text(paths["csv"], to_csv_text(clean))
    atomic_write_text(paths["markdown"], _markdown(table, split, overlay is not None, _resamples(summaries)))
    if overlay is not None:
        paths["roc"] = out_dir / "roc_overlay.png"
        atomic_write_bytes(paths["roc"], overlay)
    atomic_write_text(paths["html"], _build_html(summaries, table, split, overlay, points))
    return paths
