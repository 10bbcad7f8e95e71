"""Explain a trained run: heatmap overlays for a split or chosen files, plus localisation scores.

For every image: the run's own validation preprocessing, the model's probability, a heatmap
(Grad-CAM, Grad-CAM++ or occlusion) mapped back onto the saved image, an overlay PNG
(``[plain | heatmap]`` with the manifest's lesion boxes) and, where the image has a box, the
energy-in-box share and the pointing-game hit. Over a whole split the summary is also copied to
``RUN/eval/<split>/localisation_<method>.json`` so ``mammolab compare`` shows it.

Output folder: ``overlays/*.png``, ``localisation.csv`` (one row per image) and
``localisation.json`` (summary). A re-run with the same checkpoint, method and images is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.explain.breast_runner import explain_breasts
from mammolab.explain.cam import METHODS
from mammolab.explain.common import (
    heatmaps_for_arrays,
    output_key,
    resolve_targets,
    row_boxes,
    safe_name,
    to_image_space,
)
from mammolab.explain.localisation import box_mask, energy_in_boxes, pointing_hit, summarise_localisation
from mammolab.explain.overlay import overlay_panel, write_rgb_png
from mammolab.infer.core import decide, positive_probability
from mammolab.infer.predictor import Predictor
from mammolab.infer.runfiles import LOCALISATION_PREFIX, eval_dir
from mammolab.io.atomic import atomic_write_text, read_json, write_json
from mammolab.io.csvsafe import to_csv_text
from mammolab.io.lock import locks_output

__all__ = ["explain_run", "heatmaps_for_arrays", "resolve_targets", "to_image_space"]


def _entries_for_split(run: Any, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The split's images; with ``limit``, that many with the classes interleaved, so a short list shows each class."""
    from mammolab.train.datamodule import MammoDataModule

    if not (run.dataset_dir / "manifest.csv").is_file():
        raise MammoLabError(f"{run.dataset_dir}: the run's dataset is not there any more")
    frame = MammoDataModule(run.dataset_dir, run.config, mean=run.model.mean, std=run.model.std).frames[split]
    if limit:
        frame = frame.sort_values("path")
        frame = (frame.assign(_rank=frame.groupby("label").cumcount()).sort_values(["_rank", "label"])
                 .head(limit).drop(columns="_rank"))
    out = []
    for _, row in frame.iterrows():
        image_id = str(row.get("image_id") or "") or Path(str(row["path"])).stem
        out.append({"file": run.dataset_dir / str(row["path"]), "path": str(row["path"]), "image_id": image_id,
                    "label": str(row["label"]), "boxes": row_boxes(row)})
    return out


def _entries_for_files(run: Any, files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Files given by the user; those that are images of the run's dataset get its label and boxes."""
    known: dict[Path, pd.Series] = {}
    if (run.dataset_dir / "manifest.csv").is_file():
        from mammolab.data.manifest import load_manifest

        for _, row in load_manifest(run.dataset_dir).iterrows():
            known[(run.dataset_dir / str(row["path"])).resolve()] = row
    out = []
    for f in files:
        f = Path(f)
        row = known.get(f.resolve())
        image_id = (str(row.get("image_id") or "") if row is not None else "") or f.stem
        out.append({"file": f, "path": str(f), "image_id": image_id,
                    "label": str(row["label"]) if row is not None else "",
                    "boxes": row_boxes(row) if row is not None else [],
                    # a file from outside the run's dataset has not been through its preprocessing yet
                    "source": row is None})
    return out


@locks_output("out_dir", name="explain")  # one writer per --out, a killed explain's temps removed
def explain_run(run_dir: str | Path, images: Sequence[str | Path] | None = None, *, split: str = "test",
                method: str = "gradcam", out_dir: str | Path, checkpoint: str = "best", grid: int = 8,
                batch_size: int = 16, tolerance: float = 0.0, force: bool = False, target: str = "true",
                layer: str | None = None, limit: int | None = None, tta: bool = False) -> dict[str, Any]:
    """Write heatmap overlays and localisation scores for a split (or ``images``) of a run.

    ``tta`` decides each image's probability (and so its predicted class) from it and its flips.

    ``target`` chooses the class each heatmap explains (``true``: the label, as in the pointing game;
    ``predicted``; or a class name) and
    ``layer`` the CAM layer (default: automatic, see :func:`mammolab.explain.cam.find_target_layer`).
    ``limit`` explains only that many images of the split (classes interleaved); the summary says how many.

    Returns the summary (also written as ``localisation.json``): mean energy-in-box share, its
    area baseline, the pointing-game hit rate, counts and the per-file errors.
    """
    from mammolab.io.images import read_image
    from mammolab.progress import track

    if method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if split not in ("train", "val", "test"):
        raise MammoLabError(f"--split: expected train, val or test, got {split!r}")
    if not (Path(run_dir) / "config.yaml").is_file():  # an exported folder has no dataset or layers to explain
        raise MammoLabError(f"{run_dir}: not a training run (no config.yaml)")
    run = Predictor.load(run_dir, checkpoint=checkpoint)
    if limit is not None and limit < 1:
        raise MammoLabError(f"--limit: expected a positive number of images, got {limit}")
    if str(getattr(run.config, "views", "single")) != "single":  # a two-view breast model: one figure per breast
        if images:
            raise MammoLabError(f"explain: {run_dir} is a two-view (CC + MLO) breast model; explain works on its "
                                "--split (breasts paired as in training); for chosen files use "
                                "'mammolab predict RUN CC_FILE MLO_FILE --file-views cc+mlo --heatmap DIR'")
        return explain_breasts(run, split=split, method=method, out_dir=Path(out_dir), grid=grid,
                               batch_size=batch_size, tolerance=tolerance, force=force, target=target, layer=layer,
                               limit=limit, tta=tta)
    entries = _entries_for_files(run, images) if images else _entries_for_split(run, split, limit)
    if not entries:
        raise MammoLabError(f"{run.dataset_dir}: the {split} split has no images to explain")
    out_dir = Path(out_dir)
    key = output_key(run, entries, method, "files" if images else split, grid, target, layer, tta)
    summary_path = out_dir / "localisation.json"
    old = None if force else read_json(summary_path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    threshold = run.threshold
    batches = [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
    for batch in track(batches, f"explain ({method})"):
        good, arrays = [], []
        for e in batch:
            try:
                arr = read_image(e["file"])
                if e.get("source"):  # a file from outside the manifest enters where predict enters it
                    arr = run.prepare(arr, start=run.start_for(e["file"])).image  # the transform follows
                arrays.append(arr)
                good.append(e)
            except MammoLabError as exc:
                errors.append({"path": e["path"], "error": str(exc)})
        if not good:
            continue
        probs, heats, explained = heatmaps_for_arrays(run, arrays, method, grid=grid, batch_size=batch_size,
                                                      target=target, labels=[e["label"] for e in good], layer=layer,
                                                      threshold=threshold, tta=tta)
        p_pos = positive_probability(probs[:, 1] if probs.shape[1] == 2 else probs, run.classes)
        for e, arr, heat, pr, pp, t in zip(good, arrays, heats, probs, p_pos, explained, strict=True):
            boxes = e["boxes"]
            name = safe_name(e["image_id"])
            while name in used:
                name += "_"
            used.add(name)
            binary = len(run.classes) == 2
            predicted = run.classes[int(decide(pr[None], threshold)[0])]
            at = f" (t={threshold:.2f})" if binary else ""
            caption = (f"{e['image_id']}  true: {e['label'] or '?'}  P(malignant)={pp:.2f}  "
                       f"pred: {predicted}{at}  [{method} of {run.classes[t]}{'' if images else f', {split} split'}]")
            overlay = overlay_dir / f"{name}.png"
            write_rgb_png(overlay, overlay_panel(arr, heat, boxes, caption=caption))
            area = float(box_mask(heat.shape, boxes).mean()) if boxes else None
            records.append({"path": e["path"], "image_id": e["image_id"], "label": e["label"],
                            "prob_malignant": float(pp), "predicted": predicted, "explained": run.classes[t],
                            "has_box": bool(boxes),
                            "energy_in_box": energy_in_boxes(heat, boxes),
                            "box_area_fraction": area, "pointing_hit": pointing_hit(heat, boxes, tolerance),
                            "blank": bool(float(heat.max()) <= 0.0),
                            "overlay": str(overlay.relative_to(out_dir))})
    if not records:
        raise MammoLabError(f"no image could be explained ({len(errors)} unreadable); first: {errors[0]['error']}")
    atomic_write_text(out_dir / "localisation.csv",
                      to_csv_text(pd.DataFrame(records)))
    summary = summarise_localisation(records)
    summary.update({"method": method, "target": target, "split": None if images else split, "limit": limit,
                    "run": str(run.run_dir),
                    "pointing_tolerance_px": tolerance, "errors": errors, "key": key,
                    "overlays": str(overlay_dir)})
    write_json(summary_path, summary)
    if not images:
        write_json(eval_dir(run.run_dir, split) / f"{LOCALISATION_PREFIX}{method}.json", summary)
    return summary
