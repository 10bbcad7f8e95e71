"""``mammolab explain`` of a two-view (CC + MLO) run: one figure per breast, localisation per view.

The same output layout as single-image explain (:mod:`mammolab.explain.runner`), keyed by breast
(``patient_id``, ``side``): ``overlays/<patient>_<side>.png`` (the CC and MLO overlays side by
side, each with its lesion boxes from the manifest, captioned with the breast's probability and
label), ``localisation.csv`` with one row per breast *and view* that has an image (a missing view
has no map, hence no row), and ``localisation.json`` with the summary over all views plus one per
view (``per_view``). Over a split the summary is also stored in the run for ``mammolab compare``.
Breasts are paired exactly as training and evaluation pair them (:func:`mammolab.train.views.pair_views`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.explain.common import output_key, resolve_targets, row_boxes, safe_name, to_image_space
from mammolab.infer.runfiles import LOCALISATION_PREFIX, eval_dir
from mammolab.io.csvsafe import to_csv_text

__all__ = ["explain_breasts"]


def _breast_entries(run: Any, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The split's breasts (as training pairs them); with ``limit``, that many with the classes interleaved."""
    from mammolab.train.datamodule import MammoDataModule
    from mammolab.train.views import VIEWS, pair_views

    if not (run.dataset_dir / "manifest.csv").is_file():
        raise MammoLabError(f"{run.dataset_dir}: the run's dataset is not there any more")
    frame = MammoDataModule(run.dataset_dir, run.config, mean=run.model.mean, std=run.model.std).frames[split]
    breasts, _ = pair_views(frame, run.classes, str(run.dataset_dir / "manifest.csv"))
    if limit and len(breasts):
        breasts = breasts.sort_values("breast_id")
        breasts = (breasts.assign(_rank=breasts.groupby("label").cumcount()).sort_values(["_rank", "label"])
                   .head(limit).drop(columns="_rank"))
    rows = {str(r["path"]): r for _, r in frame.iterrows()}
    out = []
    for _, b in breasts.iterrows():
        paths = {v: str(b[f"{v.lower()}_path"] or "") for v in VIEWS}
        out.append({"breast_id": str(b["breast_id"]), "patient_id": str(b["patient_id"]), "side": str(b["side"]),
                    "label": str(b["label"]), "paths": paths,
                    "boxes": {v: row_boxes(rows[p]) if p in rows else [] for v, p in paths.items()},
                    # what the explain key hashes: the breast's files
                    "file": " + ".join(f"{v}:{p}" for v, p in paths.items())})
    return out


def explain_breasts(run: Any, *, split: str, method: str, out_dir: Path, grid: int, batch_size: int,
                    tolerance: float, force: bool, target: str, layer: str | None,
                    limit: int | None, tta: bool = False) -> dict[str, Any]:
    """What :func:`mammolab.explain.runner.explain_run` does for a loaded two-view ``run`` (module docstring)."""
    import torch

    from mammolab.explain.breast import breast_heatmaps
    from mammolab.explain.localisation import box_mask, energy_in_boxes, pointing_hit, summarise_localisation
    from mammolab.explain.overlay import breast_panel, write_rgb_png
    from mammolab.infer.core import as_class_matrix, decide, positive_probability
    from mammolab.io.atomic import atomic_write_text, read_json, write_json
    from mammolab.io.images import read_image
    from mammolab.progress import track
    from mammolab.train.views import VIEWS

    entries = _breast_entries(run, split, limit)
    if not entries:
        raise MammoLabError(f"{run.dataset_dir}: the {split} split has no breast (CC or MLO image) to explain")
    key = {**output_key(run, entries, method, split, grid, target, layer, tta), "views": "cc+mlo"}
    summary_path = out_dir / "localisation.json"
    old = None if force else read_json(summary_path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    threshold = run.threshold
    binary = len(run.classes) == 2
    mode = getattr(run.config, "resize", "stretch")
    records: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    for batch in track([entries[i:i + batch_size] for i in range(0, len(entries), batch_size)],
                       f"explain breasts ({method})"):
        good, arrays = [], []
        for e in batch:
            try:
                arrays.append({v: read_image(run.dataset_dir / p) for v, p in e["paths"].items() if p})
                good.append(e)
            except MammoLabError as exc:
                errors.append({"path": e["file"], "error": str(exc)})
        if not good:
            continue
        tensors = []
        for arrs in arrays:
            views = [run.model_input(arrs[v]) if v in arrs else None for v in VIEWS]
            fill = next(t for t in views if t is not None)
            tensors.append(np.stack([t if t is not None else fill for t in views]))
        x_np = np.stack(tensors)
        present_np = np.array([[v in arrs for v in VIEWS] for arrs in arrays])
        probs = as_class_matrix(run.breast_probabilities(x_np, present_np, tta=tta))
        targets = resolve_targets(target, run.classes, probs, [e["label"] for e in good], threshold)
        x = torch.from_numpy(x_np).to(run.device)
        present = torch.from_numpy(present_np).to(run.device)
        maps = breast_heatmaps(run.model, x, present, method, targets, grid=grid, batch_size=batch_size, layer=layer)
        p_pos = positive_probability(probs[:, 1] if binary else probs, run.classes)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        for e, arrs, vmaps, pr, pp, t in zip(good, arrays, maps, probs, p_pos, targets, strict=True):
            name = safe_name(f"{e['patient_id']}_{e['side']}")
            while name in used:
                name += "_"
            used.add(name)
            predicted = run.classes[int(decide(pr[None], threshold)[0])]
            heats = {v: to_image_space(m, arrs[v].shape, size, mode) for v, m in zip(VIEWS, vmaps, strict=True)
                     if m is not None}
            missing = [v for v in VIEWS if v not in arrs]
            caption = (f"breast {e['patient_id']} {e['side']}  true: {e['label']}  P(malignant)={pp:.2f}  "
                       f"pred: {predicted}{f' (t={threshold:.2f})' if binary else ''}  "
                       f"[{method} of {run.classes[t]}, {split} split"
                       f"{'; no ' + ' or '.join(missing) + ' view' if missing else ''}]")
            overlay = overlay_dir / f"{name}.png"
            write_rgb_png(overlay, breast_panel([(v, arrs.get(v), heats.get(v), e["boxes"][v]) for v in VIEWS],
                                                caption=caption))
            for v, heat in heats.items():
                boxes = e["boxes"][v]
                records.append({
                    "patient_id": e["patient_id"], "side": e["side"], "view": v, "breast_id": e["breast_id"],
                    "path": e["paths"][v], "label": e["label"], "prob_malignant": float(pp), "predicted": predicted,
                    "explained": run.classes[t], "has_box": bool(boxes), "energy_in_box": energy_in_boxes(heat, boxes),
                    "box_area_fraction": float(box_mask(heat.shape, boxes).mean()) if boxes else None,
                    "pointing_hit": pointing_hit(heat, boxes, tolerance), "blank": bool(float(heat.max()) <= 0.0),
                    "overlay": str(overlay.relative_to(out_dir))})
    if not records:
        raise MammoLabError(f"no breast could be explained ({len(errors)} unreadable); first: {errors[0]['error']}")
    atomic_write_text(out_dir / "localisation.csv", to_csv_text(pd.DataFrame(records)))
    summary = summarise_localisation(records)
    summary.update({
        "n_breasts": len({(r["patient_id"], r["side"]) for r in records}), "views": "cc+mlo",
        "per_view": {v: summarise_localisation([r for r in records if r["view"] == v]) for v in VIEWS},
        "method": method, "target": target, "split": split, "limit": limit, "run": str(run.run_dir),
        "pointing_tolerance_px": tolerance, "errors": errors, "key": key, "overlays": str(overlay_dir)})
    write_json(summary_path, summary)
    write_json(eval_dir(run.run_dir, split) / f"{LOCALISATION_PREFIX}{method}.json", summary)
    return summary
