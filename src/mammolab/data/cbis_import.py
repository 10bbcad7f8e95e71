"""Organize a raw CBIS-DDSM download (DICOMs and the four case CSVs) into a clean, leak-free dataset folder.

The work is split so that the expensive part is embarrassingly parallel and resumable:

1. *Plan* (cheap, single process): parse the CSVs, index the download by DICOM header, decide for
   every output image its unit of work (one full mammogram with all its abnormalities), its label
   and its split. Splits are decided here, from labels and patients only, so they never depend on
   which files happened to decode.
2. *Process* (parallel): each unit reads its full image once, tells masks from crops by content,
   writes the PNG(s) and masks atomically, and leaves a small JSON record. A re-run with the same
   config reuses the records and skips the pixels.
3. *Collect*: the manifest, the quality report and ``mammolab.json`` are rebuilt from the records,
   sorted, so a re-run gives the same bytes (:mod:`mammolab.data.output`, shared with the manifest import).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd

from mammolab.config import config_hash
from mammolab.data import manifest as mf
from mammolab.data.cbis import DownloadIndex, read_case_csvs
from mammolab.data.options import DatasetOptions, check_background
from mammolab.data.output import (
    WORK_DIR,
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
from mammolab.data.patches import as_depth, bbox, crop_mask, is_binary, roi_patch
from mammolab.data.splits import assign_splits, check_split_classes, drop_test_patients
from mammolab.errors import MammoLabError
from mammolab.io.atomic import write_json
from mammolab.io.images import read_dicom_pixels, write_png
from mammolab.io.memory import retain_freed_memory

__all__ = ["Abnormality", "OrganizeConfig", "Unit", "organize_cbis", "plan_cbis", "process_unit"]


class OrganizeConfig(DatasetOptions):
    """Every option of ``mammolab organize``; :meth:`content_hash` decides what a re-run may reuse."""

    abnormality: Literal["mass", "calc", "all"] = "mass"
    bwc: Literal["benign", "drop"] = "benign"
    kind: Literal["full", "crop", "roi"] = "crop"


@dataclass
class Abnormality:
    """One CSV row: a lesion and where its ROI files are said to be."""

    abnormality_id: str
    label: str
    pathology: str
    abnormality: str
    assessment: str
    subtlety: str
    roi_case_id: str
    roi_files: list[str]
    csv_mask_index: int


@dataclass
class Unit:
    """One full mammogram and everything that is made from it."""

    case_id: str
    split: str
    fold: int | None
    patient_id: str
    side: str
    view: str
    density: str
    image_file: str | None
    full_rows: int
    full_cols: int
    abnormalities: list[Abnormality]
    label: str
    conflict: bool
    source: str
    #: Lesions of the same film (patient, side, view) that make no image here (the other abnormality kind,
    #: rows dropped): background patches must keep away from them too. Filled only for --roi-background.
    others: list[Abnormality] = field(default_factory=list)
    #: Whether this unit cuts its film's background patches: with --abnormality all a film filed under a
    #: Mass- and a Calc- case is two units, and only the first (by case id) cuts them, so none repeats.
    background: bool = True


def _binary_label(pathology: str, bwc: str) -> str | None:
    pathology = pathology.upper()
    if pathology == "MALIGNANT":
        return "malignant"
    if pathology == "BENIGN_WITHOUT_CALLBACK":
        return None if bwc == "drop" else "benign"
    return "benign"


def _class_name(binary: str, abnormality: str, labels: str) -> str:
    return binary if labels == "binary" else f"{binary}_{abnormality}"


def _file_index(name: str) -> int:
    """``000000.dcm``/``1-1.dcm`` -> 0, ``000001.dcm``/``1-2.dcm`` -> 1 (the CSV's and NBIA's naming)."""
    stem = Path(name).stem
    m = re.fullmatch(r"1-(\d+)", stem)
    if m:
        return int(m.group(1)) - 1
    return int(stem) if stem.isdigit() else -1


def _find_full(index: DownloadIndex, case_id: str, series_uid: str) -> str | None:
    files = index.series_files(series_uid)
    if not files:
        # Fallback on folder names: the case folder holds only the full-image series.
        files = [f for f in index.case_files(case_id)
                 if "full" in f.lower() or "full" in str(index.header(f).get("series_description", "")).lower()]
        files = files or index.case_files(case_id)
    return files[0] if len(files) >= 1 else None


def _find_roi(index: DownloadIndex, row: pd.Series) -> list[str]:
    files = set(index.series_files(row["crop_series_uid"])) | set(index.series_files(row["mask_series_uid"]))
    if not files:
        files = set(index.case_files(row["roi_case_id"])) | set(index.case_files(row["mask_case_id"]))
    # A file of the lesion's own folder whose header could not be read (empty, truncated) has no series
    # UID to be found by: keep it, so reading it names the file and why, instead of "no cropped image".
    files |= set(index.unreadable_files(row["roi_case_id"])) | set(index.unreadable_files(row["mask_case_id"]))
    return sorted(files)


def plan_cbis(rows: pd.DataFrame, index: DownloadIndex, cfg: OrganizeConfig) -> tuple[list[Unit], dict[str, Any]]:
    """Group CSV rows into units, label them, split them by patient; report what was found."""
    events: dict[str, Any] = {"files_missing": [], "bwc_relabelled": 0, "bwc_dropped": 0,
                              "dropped_for_patient_overlap": {"patients": [], "rows": 0},
                              "duplicate_rows": list(rows.attrs.get("duplicate_rows", []))}
    rows = rows.copy()
    rows["binary"] = [_binary_label(p, cfg.bwc) for p in rows["pathology"]]
    bwc = rows["pathology"] == "BENIGN_WITHOUT_CALLBACK"
    if cfg.bwc == "drop":
        events["bwc_dropped"] = int(bwc.sum())
        rows = rows[rows["binary"].notna()]
    else:
        events["bwc_relabelled"] = int(bwc.sum())
    rows, patients, n_dropped = drop_test_patients(rows)
    events["dropped_for_patient_overlap"] = {"patients": patients, "rows": n_dropped}

    units: list[Unit] = []
    for (case_id, official), grp in rows.groupby(["case_id", "official_split"], sort=True):
        first = grp.iloc[0]
        full = _find_full(index, case_id, first["image_series_uid"])
        head = index.header(full) if full else {}
        abns = []
        for _, r in grp.sort_values("abnormality_id", key=lambda s: pd.to_numeric(s, errors="coerce")).iterrows():
            roi = _find_roi(index, r)
            if not roi:
                where = f"CSV {r['csv_file']} line {r['csv_row']}"
                events["files_missing"].append(f"{r['roi_case_id']}: ROI files ({where})")
            abns.append(Abnormality(
                abnormality_id=str(r["abnormality_id"]),
                label=_class_name(r["binary"], r["abnormality"], cfg.labels),
                pathology=r["pathology"], abnormality=r["abnormality"], assessment=str(r["assessment"]),
                subtlety=str(r["subtlety"]), roi_case_id=r["roi_case_id"], roi_files=roi,
                csv_mask_index=_file_index(r["mask_file"]),
            ))
        if full is None:
            events["files_missing"].append(f"{case_id}: full mammogram (series {first['image_series_uid']})")
        binaries = {a.label.split("_")[0] for a in abns}
        image_binary = "malignant" if "malignant" in binaries else "benign"
        units.append(Unit(
            case_id=case_id, split=official, fold=None, patient_id=str(first["patient_id"]),
            side=str(first["side"]), view=str(first["view"]), density=str(first["density"]),
            image_file=full, full_rows=int(head.get("rows", 0) or 0), full_cols=int(head.get("columns", 0) or 0),
            abnormalities=abns, label=_class_name(image_binary, str(first["abnormality"]), cfg.labels),
            conflict=len(binaries) > 1, source=f"cbis-ddsm/{case_id}",
        ))
    if not units:
        raise MammoLabError("organize: no images left to organize (check --abnormality and --bwc, "
                            "and that the CSVs list cases)")
    _split_units(units, cfg)
    return units, events


def _split_units(units: list[Unit], cfg: OrganizeConfig) -> None:
    """Assign split and fold per unit (image), grouped by patient, stratified by image label."""
    table = pd.DataFrame({"patient_id": [u.patient_id for u in units], "label": [u.label for u in units],
                          "official_split": [u.split for u in units]})
    table = assign_splits(table, val_fraction=cfg.val_fraction, folds=cfg.folds, seed=cfg.seed)
    for u, split, fold in zip(units, table["split"], table["fold"], strict=True):
        u.split = str(split)
        u.fold = None if pd.isna(fold) else int(fold)


def _attach_other_lesions(units: list[Unit], all_rows: pd.DataFrame, index: DownloadIndex) -> None:
    """Give each unit the lesions of its film that it does not make an image of (see ``Unit.others``).

    A film is a patient's side and view: CBIS-DDSM files a film's masses and calcifications under two
    case folders (two units under --abnormality all, each of which must avoid the other's lesions), and
    --abnormality, --bwc drop and the patient-overlap rule leave some of its rows out.
    """
    by_film: dict[tuple[str, str, str], list[pd.Series]] = {}
    for _, r in all_rows.iterrows():
        by_film.setdefault((str(r["patient_id"]), str(r["side"]), str(r["view"])), []).append(r)
    seen: set[tuple[str, str, str]] = set()
    for u in sorted(units, key=lambda u: u.case_id):
        key = (u.patient_id, u.side, u.view)
        u.background = key not in seen
        seen.add(key)
        if not u.background:
            continue
        own = {a.abnormality_id for a in u.abnormalities}
        for r in by_film.get(key, []):
            if r["case_id"] == u.case_id and str(r["abnormality_id"]) in own:
                continue  # a lesion of this unit: its box is read with it
            u.others.append(Abnormality(
                abnormality_id=str(r["abnormality_id"]), label="", pathology=str(r["pathology"]),
                abnormality=str(r["abnormality"]), assessment=str(r["assessment"]), subtlety=str(r["subtlety"]),
                roi_case_id=str(r["roi_case_id"]), roi_files=_find_roi(index, r),
                csv_mask_index=_file_index(r["mask_file"])))


def _classify_roi(root: Path, files: list[str], full_shape: tuple[int, int] | None,
                  events: list[dict[str, str]], abn: Abnormality) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Read an ROI series and tell mask from crop by content; returns (mask, crop, mask file index)."""
    mask = crop = None
    mask_idx = -1
    for rel in files:
        try:
            arr = read_dicom_pixels(root / rel)
        except MammoLabError as exc:
            events.append({"type": "unreadable", "item": rel, "detail": str(exc)})
            continue
        if is_binary(arr) and (mask is None or (full_shape is not None and arr.shape == full_shape)):
            mask, mask_idx = arr > 0, _file_index(rel)
        elif crop is None:
            crop = arr
    if mask is not None and abn.csv_mask_index >= 0 and mask_idx >= 0 and mask_idx != abn.csv_mask_index:
        events.append({"type": "mask_swapped", "item": abn.roi_case_id,
                       "detail": f"CSV names file {abn.csv_mask_index} as mask; content says {mask_idx}"})
    if mask is not None and full_shape is not None and mask.shape != full_shape:
        events.append({"type": "mask_size_mismatch", "item": abn.roi_case_id,
                       "detail": f"mask {mask.shape[1]}x{mask.shape[0]} vs image {full_shape[1]}x{full_shape[0]}; "
                                 "resized to the image"})
        mask = cv2.resize(mask.astype(np.uint8), (full_shape[1], full_shape[0]),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    if mask is None and files:
        events.append({"type": "mask_missing", "item": abn.roi_case_id, "detail": "no binary mask in the ROI series"})
    return mask, crop, mask_idx


def _crop_missing_detail(abn: Abnormality, events: list[dict[str, str]]) -> str:
    """Why a lesion has no crop: an unreadable file of its series is named (with why), since "no
    cropped image" alone sends the user looking for a file that is there but empty or damaged."""
    bad = [e["detail"] for e in events if e["type"] == "unreadable" and e["item"] in abn.roi_files]
    if bad:
        return (f"no readable cropped image in the ROI series: {bad[0]}; expected a DICOM cropped-lesion image "
                "(copy the file again from the download)")
    return "no cropped image in the ROI series (every file in it is a binary mask)"


@dataclass
class _Job:
    """One unit handed to a worker: plain fields, so it pickles to a forkserver worker."""

    unit: Unit
    root: str
    out: str
    cfg: dict[str, Any]
    cfg_hash: str

    @property
    def job_id(self) -> str:
        return self.unit.case_id


def _base_row(u: Unit) -> dict[str, Any]:
    return {"split": u.split, "fold": u.fold, "patient_id": u.patient_id, "side": u.side, "view": u.view,
            "density": u.density, "source": u.source}


def _row_from(u: Unit, image_id: str, label: str, img: np.ndarray, mask: np.ndarray | None,
              boxes: list[tuple[float, float, float, float]], abns: Sequence[Abnormality], out: Path,
              bit_depth: int, png: str) -> dict[str, Any]:
    rel = rel_path(u.split, label, image_id)
    write_png(out / rel, as_depth(img, bit_depth), mode=png)
    mask_rel = ""
    if mask is not None and mask.any():
        mask_rel = rel_path(u.split, label, image_id, masks=True)
        write_png(out / mask_rel, mask.astype(np.uint8) * 255, mode="rle")
    union = mf.union_box(boxes)
    pathologies = sorted({a.pathology for a in abns})
    return {
        **_base_row(u), "path": rel, "label": label, "image_id": image_id,
        "abnormality": "/".join(sorted({a.abnormality for a in abns})),
        "pathology": "/".join(pathologies),
        "assessment": "/".join(sorted({a.assessment for a in abns})),
        "subtlety": "/".join(sorted({a.subtlety for a in abns})),
        "mask": mask_rel,
        "bbox_x0": union[0] if union else None, "bbox_y0": union[1] if union else None,
        "bbox_x1": union[2] if union else None, "bbox_y1": union[3] if union else None,
        "width": int(img.shape[1]), "height": int(img.shape[0]),
        "n_abnormalities": len(abns), "conflict": len({a.label.split('_')[0] for a in abns}) > 1,
        "boxes": mf.format_boxes(boxes),
    }


def _unit_background(u: Unit, root: Path, img: np.ndarray, rois: list[tuple[Abnormality, Any, Any]],
                     cfg: dict[str, Any], out: Path, bit_depth: int, png: str,
                     events: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Background patches of one CBIS film, away from its lesions of every kind; none when a box is unknown."""
    boxes, unknown = [], []
    for a, mask, _ in rois:
        box = bbox(mask) if mask is not None else None
        (boxes.append(box) if box else unknown.append(a.roi_case_id))
    for a in u.others:
        mask, _, _ = _classify_roi(root, a.roi_files, img.shape, [], a)  # its own quirks are not this dataset's
        box = bbox(mask) if mask is not None else None
        (boxes.append(box) if box else unknown.append(a.roi_case_id))
    if unknown:  # a lesion of the film could be anywhere: no window of it can be called normal
        events.append({"type": "background_short", "item": u.case_id,
                       "detail": f"0 of {cfg['roi_background']} background patches (no readable mask for "
                                 f"{', '.join(sorted(unknown))}, so its lesion could be anywhere)"})
        return []
    return background_rows(img, boxes, u.case_id, _base_row(u), cfg, out, bit_depth, png, events)


def process_unit(job: _Job) -> UnitResult:
    """Read one full mammogram's files once and write every output made from it."""
    retain_freed_memory()  # full-size temporaries reused from image to image, not faulted in anew
    record = unit_record(Path(job.out), job.unit.case_id)
    if (done := reused_result(record, job.cfg_hash, Path(job.out))) is not None:
        return done
    u, root, out = job.unit, Path(job.root), Path(job.out)
    kind, bit_depth, png = job.cfg["kind"], int(job.cfg["bit_depth"]), job.cfg["png"]
    res = UnitResult()
    full_shape = (u.full_rows, u.full_cols) if u.full_rows and u.full_cols else None
    full_img = None
    if kind in ("full", "roi"):
        if u.image_file is None:
            raise MammoLabError(f"{u.case_id}: full mammogram not found in the download")
        full_img = read_dicom_pixels(root / u.image_file)
        full_shape = full_img.shape
    rois = []
    for a in u.abnormalities:
        mask, crop, _ = _classify_roi(root, a.roi_files, full_shape, res.events, a)
        rois.append((a, mask, crop))
    if kind == "full":
        union_mask = np.zeros(full_shape, dtype=bool)
        boxes = []
        for _, mask, _ in rois:
            if mask is not None:
                union_mask |= mask
                box = bbox(mask)
                if box:
                    boxes.append(box)
        res.rows.append(_row_from(u, u.case_id, u.label, full_img, union_mask, boxes, u.abnormalities, out,
                                  bit_depth, png))
    else:
        for a, mask, crop in rois:
            if kind == "crop":
                if crop is None:
                    if a.roi_files:
                        res.events.append({"type": "crop_missing", "item": a.roi_case_id,
                                           "detail": _crop_missing_detail(a, res.events)})
                    continue
                cmask = crop_mask(mask, crop.shape) if mask is not None else None
                box = bbox(cmask) if cmask is not None else None
                res.rows.append(_row_from(u, a.roi_case_id, a.label, crop, cmask, [box] if box else [], [a],
                                          out, bit_depth, png))
            else:
                box = bbox(mask) if mask is not None else None
                if box is None:
                    continue
                patch, pmask, pbox = roi_patch(full_img, mask, box, job.cfg["roi_size"], job.cfg["roi_margin"],
                                               job.cfg.get("roi_film_height"))
                res.rows.append(_row_from(u, a.roi_case_id, a.label, patch, pmask, [pbox], [a], out, bit_depth, png))
        if kind == "roi" and job.cfg.get("roi_background") and u.background:
            res.rows.extend(_unit_background(u, root, full_img, rois, job.cfg, out, bit_depth, png, res.events))
    write_json(record, {"config_hash": job.cfg_hash, "rows": res.rows, "events": res.events})
    return res


def organize_cbis(download: str | Path, csv_dir: str | Path, out: str | Path, config: OrganizeConfig | None = None, *,
                  metadata: str | Path | None = None, workers: int | None = None,
                  overwrite: bool = False) -> OrganizeResult:
    """Organize a CBIS-DDSM download into ``out`` (see the module docstring for the steps)."""
    cfg = config or OrganizeConfig()
    download, csv_dir, out = Path(download), Path(csv_dir), Path(out)
    if not download.is_dir():
        raise MammoLabError(f"DOWNLOAD: {download} is not a folder (expected the CBIS-DDSM download root)")
    check_background(cfg, cfg.kind)
    rows = read_case_csvs(csv_dir, cfg.abnormality)
    cfg_hash = cfg.content_hash("organize")
    prepare_out(out, cfg_hash, overwrite, [download, csv_dir])
    index = DownloadIndex.build(download, cache=out / WORK_DIR / "download_index.csv",
                                workers=workers or 1, metadata=metadata)
    units, plan_events = plan_cbis(rows, index, cfg)
    if cfg.roi_background:
        _attach_other_lesions(units, read_case_csvs(csv_dir, "all"), index)
    if not any(u.image_file for u in units) and not any(a.roi_files for u in units for a in u.abnormalities):
        raise MammoLabError(f"DOWNLOAD: none of the {len(units)} images listed in the CSVs was found under "
                            f"{download} (is it the right root, and the right --csv-dir?)")
    # Checked on the planned images (one per unit for full, one per lesion otherwise), before any pixel.
    planned = [(u.split, u.label, u.patient_id) for u in units] if cfg.kind == "full" else \
        [(u.split, a.label, u.patient_id) for u in units for a in u.abnormalities]
    check_split_classes(pd.DataFrame(planned, columns=["split", "label", "patient_id"]),
                        mf.classes_for(cfg.labels), allow=cfg.allow_degenerate)
    plan_events["content_duplicates"] = content_duplicates(
        [(str(download / u.image_file), u.patient_id, u.split) for u in units if u.image_file]
        + [(str(download / f), u.patient_id, u.split) for u in units for a in u.abnormalities for f in a.roi_files],
        allow=cfg.allow_duplicates, what="organize")
    jobs = [_Job(u, str(download.resolve()), str(out.resolve()), cfg.model_dump(), _unit_hash(cfg_hash, u, index))
            for u in units]
    return collect(out, jobs, plan_events, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                   inputs={"download": str(download.resolve()), "csv_dir": str(csv_dir.resolve()),
                           "metadata": str(Path(metadata).resolve()) if metadata else None},
                   process=process_unit)


def _unit_hash(cfg_hash: str, u: Unit, index: DownloadIndex) -> str:
    """What a unit's finished images depend on: the config and the content of every source file it reads.

    A DICOM replaced in place (same name, other pixels) changes its digest in the download index, so
    the unit is redone instead of its stale images being reused.
    """
    files = sorted({*([u.image_file] if u.image_file else []), *(f for a in u.abnormalities for f in a.roi_files),
                    *(f for a in u.others for f in a.roi_files)})
    return f"{cfg_hash}:{config_hash([[f, index.digest(f)] for f in files])}"

