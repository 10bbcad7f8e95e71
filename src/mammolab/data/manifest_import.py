"""Import any lab's images listed in a CSV (``path, label, patient_id`` [+ split, mask, bbox_*]) as a dataset.

The generic counterpart of :mod:`mammolab.data.cbis_import`: the same options (minus the CBIS-only
ones), the same units of work (one listed file, read once), the same records, manifest and quality
report (:mod:`mammolab.data.output`), the same patch cutting (:mod:`mammolab.data.patches`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
from pydantic import Field

from mammolab.config import config_hash
from mammolab.data import manifest as mf
from mammolab.data.manifest_csv import MANIFEST_HELP, fit_box, image_size, parse_box, read_manifest_csv
from mammolab.data.options import DatasetOptions, check_background
from mammolab.data.output import (
    OrganizeResult,
    UnitResult,
    background_rows,
    collect,
    content_duplicates,
    prepare_out,
    rel_path,
    reused_result,
    unit_record,
)
from mammolab.data.patches import as_depth, bbox, roi_patch
from mammolab.data.splits import assign_splits, check_split_classes
from mammolab.errors import MammoLabError
from mammolab.io.atomic import write_json
from mammolab.io.images import read_image, write_png
from mammolab.io.memory import retain_freed_memory

__all__ = ["ImportConfig", "organize_manifest"]


class ImportConfig(DatasetOptions):
    """Options of ``mammolab organize --manifest``: the CBIS-DDSM options that make sense for any collection.

    ``kind`` means what it means for CBIS-DDSM, except that a manifest has no separate crop files:
    ``crop`` is the lesion box itself, cut from the image.
    """

    kind: Literal["full", "crop", "roi"] = Field(
        "full", description="full: one image per file with all its lesion boxes, malignant if any lesion is; "
        "roi: a square patch around each lesion's box or mask; crop: each lesion's box itself")


_LABEL_ALIASES = {"0": "benign", "1": "malignant", "b": "benign", "m": "malignant", "benign": "benign",
                  "malignant": "malignant", "normal": "benign", "benign_without_callback": "benign",
                  "negative": "benign", "positive": "malignant"}


#: Columns the import computes itself; a manifest's own values for them are not carried over.
_RESERVED = {"path", "mask", "label", "patient_id", "split", "fold", "image_id", "width", "height", "boxes",
             "target", "n_abnormalities", "conflict", *mf.BBOX_COLUMNS}


@dataclass
class _Lesion:
    """One manifest row: a lesion (or a whole-image label) of one file."""

    line: int
    label: str
    box: tuple[float, float, float, float] | None
    mask_src: str
    values: dict[str, str]


@dataclass
class _ImportJob:
    """One file of the manifest and every output made from it (one image, or one patch per lesion)."""

    image_id: str
    src: str
    lesions: list[_Lesion]
    base: dict[str, Any]
    kind: str
    roi_size: int
    roi_margin: float
    out: str
    bit_depth: int
    cfg_hash: str
    png: str = "stored"
    source: str = ""
    roi_film_height: int | None = None
    roi_background: int = 0
    seed: int = 0
    blind: tuple[int, ...] = ()  # CSV lines of this file skipped in the plan (a lesion of unknown place)

    @property
    def job_id(self) -> str:
        return self.image_id


def _resolved(base: Path, p: str) -> str:
    return os.path.normpath(str(p if Path(p).is_absolute() else base / p))


def _conflict_label(labels: Sequence[str]) -> str:
    """CBIS-DDSM's rule for one image listed with several labels: malignant if any of them is."""
    uniq = sorted(set(labels))
    return next((lab for lab in uniq if lab.startswith("malignant")), uniq[0])


def _joined(values: Sequence[str]) -> str:
    return "/".join(sorted({v for v in values if v}))


def _plan_manifest(src: pd.DataFrame, csv_path: Path, cfg: ImportConfig,
                   events: list[dict[str, str]]) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Validate every row and group them by file; returns the files (with their lesions) and the items table.

    The items table has one row per output image (a file under ``full``, a lesion under roi/crop),
    which is what the split is stratified on.
    """
    name = csv_path.name
    base = csv_path.parent
    size_cache: dict[str, tuple[int, int] | None] = {}
    files: dict[str, dict[str, Any]] = {}
    blind: dict[str, list[int]] = {}  # lines of a file skipped here: lesions whose place is unknown
    carried = [c for c in src.columns if c not in _RESERVED and not c.startswith("_")]
    for _, r in src.iterrows():
        line = int(r["_line"])
        path = _resolved(base, r["path"])
        where = f"{r['path']} (line {line})"
        box, problem = parse_box(r)
        if problem is None and box is not None:
            if path not in size_cache:
                size_cache[path] = image_size(path) if Path(path).is_file() else None
            if size_cache[path] is not None:
                box, note = fit_box(box, *size_cache[path])
                if box is None:
                    problem = note
                elif note:
                    events.append({"type": "box_clipped", "item": where, "detail": note})
        if problem is not None:
            events.append({"type": "row_skipped", "item": where, "detail": f"{problem}; row skipped"})
            blind.setdefault(path, []).append(line)
            continue
        mask = str(r.get("mask", "")).strip()
        if cfg.kind != "full" and box is None and not mask:
            events.append({"type": "row_skipped", "item": where,
                           "detail": f"no box and no mask (--kind {cfg.kind} cuts around the lesion); row skipped"})
            blind.setdefault(path, []).append(line)
            continue
        f = files.setdefault(path, {"path": r["path"], "patient": {}, "split": {}, "lesions": []})
        f["patient"].setdefault(r["patient_id"], line)
        f["split"].setdefault(str(r.get("split", "")).strip().lower(), line)
        f["lesions"].append(_Lesion(line=line, label=r["label"], box=box,
                                    mask_src=_resolved(base, mask) if mask else "",
                                    values={c: str(r[c]) for c in carried}))
    for f in files.values():
        if len(f["patient"]) > 1:
            who = ", ".join(f"{p!r} (line {ln})" for p, ln in f["patient"].items())
            raise MammoLabError(f"--manifest: {name}: {f['path']} is listed under several patients: {who}")
        if len(f["split"]) > 1:
            which = ", ".join(f"{s or 'empty'!r} (line {ln})" for s, ln in f["split"].items())
            raise MammoLabError(f"--manifest: {name}: {f['path']} is listed in several splits: {which}")
    missing = sorted(p for p in files if not Path(p).is_file())
    for p in missing:
        events.append({"type": "file_missing", "item": files[p]["path"], "detail": "file not found; skipped"})
    # Stable ids: sorted by path, the file's stem, __2, __3 ... for different files with the same stem.
    planned: list[dict[str, Any]] = []
    seen: Counter[str] = Counter()
    for path in sorted(p for p in files if p not in missing):
        f = files[path]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)
        seen[stem] += 1
        file_id = stem if seen[stem] == 1 else f"{stem}__{seen[stem]}"
        lesions: list[_Lesion] = f["lesions"]
        if cfg.kind == "full":
            items = [(file_id, lesions)]
        else:  # one patch per lesion; rows naming the same box and mask are one lesion
            groups: dict[tuple[Any, str], list[_Lesion]] = {}
            for les in lesions:
                groups.setdefault((les.box, les.mask_src), []).append(les)
            items = [(f"{file_id}_lesion{k}", g) for k, g in enumerate(groups.values(), start=1)]
        for item_id, group in items:
            labels = [les.label for les in group]
            if len(set(labels)) > 1:
                what = ", ".join(f"{les.label} (line {les.line})" for les in group)
                events.append({"type": "conflict", "item": item_id,
                               "detail": f"{f['path']}: {what}; labelled {_conflict_label(labels)} "
                                         "(the CBIS-DDSM rule: malignant if any lesion is)"})
        planned.append({"file_id": file_id, "src": path, "patient_id": next(iter(f["patient"])),
                        "split": next(iter(f["split"])), "items": items, "blind": blind.get(path, [])})
    if not planned:
        raise MammoLabError(f"--manifest: {name}: no usable row (e.g. "
                            f"{'; '.join(e['item'] + ': ' + e['detail'] for e in events[:3])})")
    items_table = pd.DataFrame([
        {"file_id": p["file_id"], "item_id": item_id, "patient_id": p["patient_id"], "official_split": p["split"],
         "label": _conflict_label([les.label for les in group])}
        for p in planned for item_id, group in p["items"]])
    return planned, items_table


def _split_items(items: pd.DataFrame, cfg: ImportConfig) -> pd.DataFrame:
    """Split and fold per item: a complete ``split`` column (with val) is kept as given, else assigned by patient."""
    given = items["official_split"]
    if (given != "").all():
        bad_s = sorted(set(given) - set(mf.SPLITS))
        if bad_s:
            raise MammoLabError(f"--manifest: column 'split' has {bad_s}; expected train, val or test")
        if (given == "val").any():
            return items.assign(split=given, fold=pd.NA)
        return assign_splits(items, val_fraction=cfg.val_fraction, folds=cfg.folds, seed=cfg.seed)
    return assign_splits(items, official_col="_none_", val_fraction=cfg.val_fraction, folds=cfg.folds,
                         seed=cfg.seed)


def _import_row(job: _ImportJob, item_id: str, lesions: Sequence[_Lesion], img: np.ndarray,
                mask: np.ndarray | None, boxes: list[tuple[float, float, float, float]],
                out: Path) -> dict[str, Any]:
    label = _conflict_label([les.label for les in lesions])
    rel = rel_path(job.base["split"], label, item_id)
    write_png(out / rel, as_depth(img, job.bit_depth), mode=job.png)
    mask_rel = ""
    if mask is not None and mask.any():
        mask_rel = rel_path(job.base["split"], label, item_id, masks=True)
        write_png(out / mask_rel, mask.astype(np.uint8) * 255, mode="rle")
    union = mf.union_box(boxes)
    row: dict[str, Any] = {k: _joined([les.values.get(k, "") for les in lesions])
                           for k in lesions[0].values}
    row.update(job.base)
    row["source"] = row.get("source") or job.source
    row.update({
        "path": rel, "label": label, "image_id": item_id, "mask": mask_rel,
        **dict(zip(mf.BBOX_COLUMNS, union or (None,) * 4, strict=True)),
        "width": int(img.shape[1]), "height": int(img.shape[0]), "n_abnormalities": len(lesions),
        "conflict": len({les.label for les in lesions}) > 1, "boxes": mf.format_boxes(boxes),
    })
    return row


def _import_one(job: _ImportJob) -> UnitResult:
    """Read one listed file once and write its image (``full``) or one patch per lesion (roi, crop)."""
    retain_freed_memory()
    out = Path(job.out)
    record = unit_record(out, job.image_id)
    if (done := reused_result(record, job.cfg_hash, out)) is not None:
        return done
    img = read_image(job.src)
    if img.size == 0 or int(img.max()) == 0:
        raise MammoLabError(f"{job.src}: image is empty or all black")
    h, w = img.shape
    res = UnitResult()
    kept: list[tuple[_Lesion, tuple[float, float, float, float] | None, np.ndarray | None]] = []
    for les in job.lesions:
        where = f"{Path(job.src).name} (line {les.line})"
        box = les.box
        if box is not None:  # checked in the plan when the header told the size; again here in case it did not
            box, note = fit_box(box, w, h)
            if box is None:
                res.events.append({"type": "row_skipped", "item": where, "detail": f"{note}; row skipped"})
                continue
        mask = None
        if les.mask_src:
            try:
                mask = read_image(les.mask_src) > 0
            except MammoLabError as exc:
                res.events.append({"type": "unreadable", "item": where, "detail": f"mask: {exc}"})
            if mask is not None and mask.shape != img.shape:
                res.events.append({"type": "mask_size_mismatch", "item": where,
                                   "detail": f"mask {mask.shape[1]}x{mask.shape[0]} vs image {w}x{h}; resized"})
                mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            if mask is not None and not mask.any():
                res.events.append({"type": "mask_missing", "item": where, "detail": "mask is empty"})
                mask = None
            if box is None and mask is not None:
                box = bbox(mask)
        if job.kind != "full" and box is None:
            res.events.append({"type": "row_skipped", "item": where,
                               "detail": f"no usable box or mask (--kind {job.kind}); row skipped"})
            continue
        kept.append((les, box, mask))
    if job.kind == "full":
        if kept:
            masks = [m for _, _, m in kept if m is not None]
            union_mask = np.logical_or.reduce(masks) if masks else None
            boxes = [b for _, b, _ in kept if b is not None]
            res.rows.append(_import_row(job, job.image_id, [les for les, _, _ in kept], img, union_mask, boxes, out))
    else:
        items: dict[tuple[Any, str], list[tuple[_Lesion, Any, Any]]] = {}
        for k in kept:
            items.setdefault((k[0].box, k[0].mask_src), []).append(k)
        ids = {key: f"{job.image_id}_lesion{n}" for n, key in
               enumerate(dict.fromkeys((les.box, les.mask_src) for les in job.lesions), start=1)}
        for key, group in items.items():
            lesions = [g[0] for g in group]
            _, box, mask = group[0]
            full_mask = mask if mask is not None else np.zeros(img.shape, dtype=bool)
            if job.kind == "roi":
                patch, pmask, pbox = roi_patch(img, full_mask, box, job.roi_size, job.roi_margin,
                                               job.roi_film_height)
            else:
                x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
                x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
                patch, pmask = img[y0:y1, x0:x1], full_mask[y0:y1, x0:x1]
                pbox = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
            res.rows.append(_import_row(job, ids[key], lesions, patch, pmask if mask is not None else None,
                                        [pbox], out))
        if job.kind == "roi" and job.roi_background:
            res.rows.extend(_import_background(job, img, kept, out, res.events))
    write_json(record, {"config_hash": job.cfg_hash, "rows": res.rows, "events": res.events})
    return res


def _import_background(job: _ImportJob, img: np.ndarray, kept: Sequence[tuple[_Lesion, Any, Any]], out: Path,
                       events: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Background patches of one listed file, away from every lesion row of that file.

    A row of the file without a usable box or mask (skipped in the plan or when reading) leaves its
    lesion's place unknown, so such a file gets no background patch (counted in the quality report).
    """
    located = {id(les) for les, box, _ in kept if box is not None}
    blind = sorted({*job.blind, *(les.line for les in job.lesions if id(les) not in located)})
    if blind:  # a lesion of the file could be anywhere: no window of it can be called normal
        events.append({"type": "background_short", "item": job.image_id,
                       "detail": f"0 of {job.roi_background} background patches (line(s) "
                                 f"{', '.join(map(str, blind))} give no usable box or mask, so a lesion could "
                                 "be anywhere)"})
        return []
    boxes = [box for _, box, _ in kept if box is not None]
    # Columns every row of the file agrees on (side, view, ...) describe the film, and so the patch.
    shared = {k: v for k, v in job.lesions[0].values.items() if all(les.values.get(k) == v for les in job.lesions)}
    base = {**shared, **job.base, "source": job.source}
    cfg = {"roi_background": job.roi_background, "roi_size": job.roi_size, "roi_film_height": job.roi_film_height,
           "seed": job.seed}
    return background_rows(img, boxes, job.image_id, base, cfg, out, job.bit_depth, job.png, events)


def _job_digest(src: str, lesions: Sequence[_Lesion], base: dict[str, Any]) -> str:
    """What a re-run must redo when it changed: the file (size, time), its rows and its split."""
    st = Path(src).stat()
    return config_hash({"src": src, "size": st.st_size, "mtime": st.st_mtime_ns, "base": base,
                        "lesions": [[les.label, les.box, les.mask_src, les.values] for les in lesions]})


def organize_manifest(csv_path: str | Path, out: str | Path, config: ImportConfig | None = None, *,
                      workers: int | None = None, overwrite: bool = False) -> OrganizeResult:
    """Import any dataset listed in a CSV (``path, label, patient_id`` [+ split, mask, bbox_*]).

    A file may have several rows (one per lesion). Everything is validated and split before any
    pixel is written, so a bad manifest never leaves a half-written dataset.
    """
    cfg = config or ImportConfig()
    check_background(cfg, cfg.kind)
    csv_path, out = Path(csv_path), Path(out)
    if csv_path.is_dir():
        raise MammoLabError(f"--manifest: {csv_path} is a folder; expected a CSV file listing the images "
                            "(columns path, label, patient_id)")
    if not csv_path.is_file():
        raise MammoLabError(f"--manifest: {csv_path} not found; expected a CSV file listing the images "
                            "(columns path, label, patient_id)")
    src = read_manifest_csv(csv_path)
    for col in ("path", "label", "patient_id"):
        if col not in src.columns:
            raise MammoLabError(f"--manifest: {csv_path} has no column {col!r} ({MANIFEST_HELP})")
    if src.empty:
        raise MammoLabError(f"--manifest: {csv_path} lists no image")
    for col, why in (("path", "which file"), ("patient_id", "whose image: splits are by patient")):
        empty = src.loc[src[col] == "", "_line"].tolist()
        if empty:
            lines = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            raise MammoLabError(f"--manifest: {csv_path}: empty {col} on line(s) {lines} (every row needs {why})")
    classes = mf.classes_for(cfg.labels)
    labels = src["label"].str.lower().map(lambda s: _LABEL_ALIASES.get(s, s) if cfg.labels == "binary" else s)
    bad = sorted(set(labels) - set(classes))
    if bad:
        raise MammoLabError(f"--manifest: column 'label' has {bad[:5]}; expected one of {list(classes)}"
                            + (" (or 0/1, B/M for binary)" if cfg.labels == "binary" else ""))
    src["label"] = labels
    events: list[dict[str, str]] = []
    planned, items = _plan_manifest(src, csv_path, cfg, events)
    items = _split_items(items, cfg)
    check_split_classes(items, classes, allow=cfg.allow_degenerate)
    split_of = dict(zip(items["file_id"], items["split"], strict=True))
    duplicates = content_duplicates([(p["src"], p["patient_id"], split_of[p["file_id"]]) for p in planned],
                                    allow=cfg.allow_duplicates, what=f"--manifest: {csv_path.name}")
    fold_of = dict(zip(items["file_id"], items["fold"], strict=True))
    inputs = [csv_path, *(Path(p["src"]) for p in planned),
              *(Path(les.mask_src) for p in planned for _, g in p["items"] for les in g if les.mask_src)]
    cfg_hash = cfg.content_hash("organize-manifest")
    prepare_out(out, cfg_hash, overwrite, inputs)
    jobs = []
    for p in planned:
        fold = fold_of[p["file_id"]]
        base = {"split": split_of[p["file_id"]], "fold": None if pd.isna(fold) else int(fold),
                "patient_id": p["patient_id"]}
        lesions = [les for _, g in p["items"] for les in g]
        jobs.append(_ImportJob(p["file_id"], p["src"], lesions, base, cfg.kind, cfg.roi_size, cfg.roi_margin,
                               str(out.resolve()), cfg.bit_depth,
                               f"{cfg_hash}:{_job_digest(p['src'], lesions, base)}"
                               + (f":{p['blind']}" if cfg.roi_background and p["blind"] else ""), cfg.png,
                               csv_path.name,
                               cfg.roi_film_height, cfg.roi_background, cfg.seed,
                               tuple(p["blind"]) if cfg.roi_background else ()))
    plan = {"files_missing": [f"{e['item']}: {e['detail']}" for e in events if e["type"] == "file_missing"],
            "events": [e for e in events if e["type"] != "file_missing"], "content_duplicates": duplicates}
    return collect(out, jobs, plan, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                   inputs={"manifest": str(csv_path.resolve())}, process=_import_one, source="manifest")

