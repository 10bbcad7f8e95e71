"""Turn a raw CBIS-DDSM download (or any lab's image list) into a clean, leak-free dataset folder.

The work is split so that the expensive part is embarrassingly parallel and resumable:

1. *Plan* (cheap, single process): parse the CSVs, index the download by DICOM header, decide for
   every output image its unit of work (one full mammogram with all its abnormalities), its label
   and its split. Splits are decided here, from labels and patients only, so they never depend on
   which files happened to decode.
2. *Process* (parallel): each unit reads its full image once, tells masks from crops by content,
   writes the PNG(s) and masks atomically, and leaves a small JSON record. A re-run with the same
   config reuses the records and skips the pixels.
3. *Collect*: the manifest, the quality report and ``mammolab.json`` are rebuilt from the records,
   sorted, so a re-run gives the same bytes.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
from pydantic import Field

from mammolab.config import StrictModel, config_hash, load_config
from mammolab.data import manifest as mf
from mammolab.data.cbis import DownloadIndex, read_case_csvs
from mammolab.data.splits import assign_splits, drop_test_patients, patient_overlap
from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text, read_json, write_json
from mammolab.io.images import read_dicom_pixels, read_image, to_uint8, write_png
from mammolab.io.memory import retain_freed_memory
from mammolab.progress import parallel_map
from mammolab.reporting import markdown_list_sections

WORK_DIR = ".mammolab"


class _DatasetOptions(StrictModel):
    """Options both ways of organizing share: labels, splits and how the images are written."""

    labels: Literal["binary", "4class"] = "binary"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    folds: int = Field(5, ge=2, le=20)
    bit_depth: Literal[8, 16] = 16
    seed: int = 0
    png: Literal["stored", "fast"] = Field(
        "stored", description="PNG encoding of the images: stored (uncompressed: the size of the DICOM pixels, "
        "about 5x faster to read in every later pass) or fast (compressed, ~20% smaller on noisy 16-bit films). "
        "Pixels are the same either way, so it is not part of the config hash. Masks are always run-length coded.")

    def content_hash(self, stage: str) -> str:
        """The hash that decides what a re-run may reuse: every option that changes pixels, labels or splits."""
        return config_hash({"stage": stage, **self.model_dump(exclude={"png"})})


class OrganizeConfig(_DatasetOptions):
    """Every option of ``mammolab organize``; :meth:`content_hash` decides what a re-run may reuse."""

    abnormality: Literal["mass", "calc", "all"] = "mass"
    bwc: Literal["benign", "drop"] = "benign"
    kind: Literal["full", "crop", "roi"] = "crop"
    roi_size: int = Field(512, ge=16, le=8192)
    roi_margin: float = Field(0.5, ge=0.0, le=5.0)


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


@dataclass
class UnitResult:
    """What processing one unit produced: manifest rows and quality events."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False


@dataclass
class OrganizeResult:
    """Where the dataset is and what went into it."""

    out: Path
    manifest: pd.DataFrame
    quality: dict[str, Any]
    skipped_units: int
    processed_units: int


# --------------------------------------------------------------------------------------------- labels

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


# ----------------------------------------------------------------------------------------------- plan

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
    return sorted(files)


def plan_cbis(rows: pd.DataFrame, index: DownloadIndex, cfg: OrganizeConfig) -> tuple[list[Unit], dict[str, Any]]:
    """Group CSV rows into units, label them, split them by patient; report what was found."""
    events: dict[str, Any] = {"files_missing": [], "bwc_relabelled": 0, "bwc_dropped": 0,
                              "dropped_for_patient_overlap": {"patients": [], "rows": 0}}
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


# -------------------------------------------------------------------------------------------- process

def _is_binary(arr: np.ndarray) -> bool:
    top = arr.max()
    return bool(top > 0 and np.count_nonzero((arr != 0) & (arr != top)) == 0)


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel box ``x0, y0, x1, y1`` with exclusive right/bottom edges, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


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
        if _is_binary(arr) and (mask is None or (full_shape is not None and arr.shape == full_shape)):
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


def _as_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 8:
        return to_uint8(img)
    if img.dtype == np.uint8:
        return img.astype(np.uint16) * 257
    return img


def _roi_patch(img: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float], size: int,
               margin: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """A square patch around ``box`` with ``margin`` context per side, zero-padded, resized to ``size``."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(side, 8)
    sx, sy = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = img.shape
    pad = [(max(0, -sy), max(0, sy + side - h)), (max(0, -sx), max(0, sx + side - w))]
    src_img = np.pad(img, pad) if any(p for pp in pad for p in pp) else img
    src_mask = np.pad(mask, pad) if any(p for pp in pad for p in pp) else mask
    oy, ox = sy + pad[0][0], sx + pad[1][0]
    patch = src_img[oy:oy + side, ox:ox + side]
    mpatch = src_mask[oy:oy + side, ox:ox + side]
    scale = size / side
    patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mpatch = cv2.resize(mpatch.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    nb = ((x0 - sx) * scale, (y0 - sy) * scale, (x1 - sx) * scale, (y1 - sy) * scale)
    nb = (max(0.0, nb[0]), max(0.0, nb[1]), min(float(size), nb[2]), min(float(size), nb[3]))
    return patch, mpatch, nb


def _crop_mask(mask: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """The lesion mask in the CBIS crop's pixels, assuming the crop is centred on the lesion box."""
    box = _bbox(mask)
    out = np.zeros(crop_shape, dtype=bool)
    if box is None:
        return out
    x0, y0, x1, y1 = (int(v) for v in box)
    ch, cw = crop_shape
    ox = int(round((x0 + x1) / 2 - cw / 2))
    oy = int(round((y0 + y1) / 2 - ch / 2))
    sy0, sx0 = max(0, oy), max(0, ox)
    sy1, sx1 = min(mask.shape[0], oy + ch), min(mask.shape[1], ox + cw)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox] = mask[sy0:sy1, sx0:sx1]
    return out


@dataclass
class _Job:
    unit: Unit
    root: str
    out: str
    cfg: dict[str, Any]
    cfg_hash: str


def _rel(split: str, label: str, image_id: str, masks: bool = False) -> str:
    base = f"{split}/{label}/{image_id}.png"
    return f"masks/{base}" if masks else base


def _base_row(u: Unit) -> dict[str, Any]:
    return {"split": u.split, "fold": u.fold, "patient_id": u.patient_id, "side": u.side, "view": u.view,
            "density": u.density, "source": u.source}


def _row_from(u: Unit, image_id: str, label: str, img: np.ndarray, mask: np.ndarray | None,
              boxes: list[tuple[float, float, float, float]], abns: Sequence[Abnormality], out: Path,
              bit_depth: int, png: str) -> dict[str, Any]:
    rel = _rel(u.split, label, image_id)
    write_png(out / rel, _as_depth(img, bit_depth), mode=png)
    mask_rel = ""
    if mask is not None and mask.any():
        mask_rel = _rel(u.split, label, image_id, masks=True)
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


def _outputs_exist(out: Path, rows: list[dict[str, Any]]) -> bool:
    return all((out / r["path"]).is_file() and (not r.get("mask") or (out / r["mask"]).is_file()) for r in rows)


def _unit_record(out: Path, unit_id: str) -> Path:
    return out / WORK_DIR / "units" / f"{unit_id}.json"


def _reused(record: Path, cfg_hash: str, out: Path) -> UnitResult | None:
    """The earlier result of a unit when its record matches this config and its outputs are all there."""
    data = read_json(record)
    with contextlib.suppress(KeyError, TypeError, AttributeError):  # a record of another shape: redo
        if data.get("config_hash") == cfg_hash and _outputs_exist(out, data["rows"]):
            return UnitResult(rows=data["rows"], events=data["events"], reused=True)
    return None


def process_unit(job: _Job) -> UnitResult:
    """Read one full mammogram's files once and write every output made from it."""
    retain_freed_memory()  # full-size temporaries reused from image to image, not faulted in anew
    record = _unit_record(Path(job.out), job.unit.case_id)
    if (done := _reused(record, job.cfg_hash, Path(job.out))) is not None:
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
                box = _bbox(mask)
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
                                           "detail": "no cropped image in the ROI series"})
                    continue
                cmask = _crop_mask(mask, crop.shape) if mask is not None else None
                box = _bbox(cmask) if cmask is not None else None
                res.rows.append(_row_from(u, a.roi_case_id, a.label, crop, cmask, [box] if box else [], [a],
                                          out, bit_depth, png))
            else:
                box = _bbox(mask) if mask is not None else None
                if box is None:
                    continue
                patch, pmask, pbox = _roi_patch(full_img, mask, box, job.cfg["roi_size"], job.cfg["roi_margin"])
                res.rows.append(_row_from(u, a.roi_case_id, a.label, patch, pmask, [pbox], [a], out, bit_depth, png))
    write_json(record, {"config_hash": job.cfg_hash, "rows": res.rows, "events": res.events})
    return res


# ---------------------------------------------------------------------------------------- public API

def _prepare_out(out: Path, cfg_hash: str, overwrite: bool, inputs: Sequence[Path]) -> None:
    out = out.resolve()
    for src in inputs:
        src = Path(src).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise MammoLabError(f"--out: {out} overlaps the input {src}; choose a folder outside the input")
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise MammoLabError(f"--out: {out} exists and is not a folder")
    info = mf.read_info(out)
    if not any(out.iterdir()):
        return
    if not info and not (out / WORK_DIR).is_dir():
        if not overwrite:
            raise MammoLabError(f"--out: {out} is not empty and is not a MammoLab dataset; "
                                "choose an empty folder (or pass --overwrite to replace it)")
    elif info.get("config_hash") not in (None, cfg_hash) and not overwrite:
        raise MammoLabError(f"--out: {out} was organized with other options (config {info.get('config_hash')}); "
                            "pass --overwrite to redo it, or choose another folder")
    if overwrite:
        _clear_outputs(out)


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier run wrote (only our own files; other files are left alone)."""
    old = out / mf.MANIFEST_NAME
    if old.is_file():
        try:
            prev = pd.read_csv(old, dtype=str, keep_default_na=False)
            for col in ("path", "mask"):
                for rel in prev.get(col, []):
                    if rel:
                        (out / rel).unlink(missing_ok=True)
        except Exception:
            pass
    for name in (mf.MANIFEST_NAME, mf.QUALITY_JSON, mf.QUALITY_MD, mf.INFO_NAME):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / WORK_DIR / "units", ignore_errors=True)


def organize_cbis(download: str | Path, csv_dir: str | Path, out: str | Path, config: OrganizeConfig | None = None, *,
                  metadata: str | Path | None = None, workers: int | None = None,
                  overwrite: bool = False) -> OrganizeResult:
    """Organize a CBIS-DDSM download into ``out`` (see the module docstring for the steps)."""
    cfg = config or OrganizeConfig()
    download, csv_dir, out = Path(download), Path(csv_dir), Path(out)
    if not download.is_dir():
        raise MammoLabError(f"DOWNLOAD: {download} is not a folder (expected the CBIS-DDSM download root)")
    rows = read_case_csvs(csv_dir, cfg.abnormality)
    cfg_hash = cfg.content_hash("organize")
    _prepare_out(out, cfg_hash, overwrite, [download, csv_dir])
    index = DownloadIndex.build(download, cache=out / WORK_DIR / "download_index.csv",
                                workers=workers or 1, metadata=metadata)
    units, plan_events = plan_cbis(rows, index, cfg)
    if not any(u.image_file for u in units) and not any(a.roi_files for u in units for a in u.abnormalities):
        raise MammoLabError(f"DOWNLOAD: none of the {len(units)} images listed in the CSVs was found under "
                            f"{download} (is it the right root, and the right --csv-dir?)")
    jobs = [_Job(u, str(download.resolve()), str(out.resolve()), cfg.model_dump(), cfg_hash) for u in units]
    return _collect(out, jobs, plan_events, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                    inputs={"download": str(download.resolve()), "csv_dir": str(csv_dir.resolve()),
                            "metadata": str(Path(metadata).resolve()) if metadata else None})


def _collect(out: Path, jobs: list[Any], plan_events: dict[str, Any], cfg: dict[str, Any], cfg_hash: str,
             labels: str, workers: int | None, inputs: dict[str, Any],
             process: Any = None) -> OrganizeResult:
    process = process or process_unit
    results, errors = parallel_map(process, jobs, workers=workers, description="organizing images")
    events: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    for res in results:
        if res is not None:
            rows.extend(res.rows)
            events.extend(res.events)
    already = sum(1 for r in results if r is not None and r.reused)
    for i, msg in errors:
        events.append({"type": "unreadable", "item": _job_id(jobs[i]), "detail": msg})
    if not rows:
        detail = f" (first error: {errors[0][1]})" if errors else ""
        raise MammoLabError(f"organize: no image could be written{detail}")
    classes = mf.classes_for(labels)
    df = pd.DataFrame(rows)
    df["target"] = df["label"].map({c: i for i, c in enumerate(classes)})
    df = df[df["target"].notna()] if labels == "binary" else df
    overlap = patient_overlap(df)
    if any(overlap.values()):
        raise MammoLabError(f"organize: patient overlap between splits {overlap}; this is a bug, please report it")
    mf.write_manifest(df, out)
    quality = _quality(df, events, plan_events, overlap, classes)
    write_json(out / mf.QUALITY_JSON, quality)
    atomic_write_text(out / mf.QUALITY_MD, quality_markdown(quality))
    mf.write_info(out, {"stage": "organize", "config": cfg, "config_hash": cfg_hash, "classes": list(classes),
                        "labels": labels, "inputs": inputs, "manifest_hash": mf.manifest_hash(out)})
    return OrganizeResult(out=out, manifest=mf.load_manifest(out), quality=quality,
                          skipped_units=already, processed_units=len(jobs) - already)


def _job_id(job: Any) -> str:
    return job.unit.case_id if isinstance(job, _Job) else job.image_id


def _quality(df: pd.DataFrame, events: list[dict[str, str]], plan: dict[str, Any], overlap: dict[str, list[str]],
             classes: Sequence[str]) -> dict[str, Any]:
    by_type: dict[str, list[str]] = {}
    for e in sorted(events, key=lambda e: (e["type"], e["item"])):
        by_type.setdefault(e["type"], []).append(f"{e['item']}: {e['detail']}")
    counts = {s: {c: int(((df["split"] == s) & (df["label"] == c)).sum()) for c in classes} for s in mf.SPLITS}
    patients = {s: int(df.loc[df["split"] == s, "patient_id"].nunique()) for s in mf.SPLITS}
    conflicting = sorted(df.loc[df["conflict"].astype(bool), "image_id"].astype(str)) if "conflict" in df else []
    return {
        "images": int(len(df)),
        "counts": counts,
        "patients": patients,
        "patient_overlap": {k: len(v) for k, v in overlap.items()},
        "patient_overlap_total": int(sum(len(v) for v in overlap.values())),
        "files_missing": plan.get("files_missing", []),
        "masks_swapped": by_type.get("mask_swapped", []),
        "mask_size_mismatch": by_type.get("mask_size_mismatch", []),
        "masks_missing": by_type.get("mask_missing", []),
        "crops_missing": by_type.get("crop_missing", []),
        "unreadable": by_type.get("unreadable", []),
        "conflicting_labels": conflicting,
        "bwc_relabelled_benign": plan.get("bwc_relabelled", 0),
        "bwc_dropped": plan.get("bwc_dropped", 0),
        "dropped_for_patient_overlap": plan.get("dropped_for_patient_overlap", {"patients": [], "rows": 0}),
    }


def quality_markdown(q: dict[str, Any]) -> str:
    """The quality report as a page a person reads first."""
    classes = list(next(iter(q["counts"].values())).keys())
    lines = ["# Quality report", "", f"Images written: **{q['images']}**; patient overlap between splits: "
             f"**{q['patient_overlap_total']}** (must be 0).", "",
             "| split | patients | " + " | ".join(classes) + " | total |",
             "|---|---|" + "---|" * len(classes) + "---|"]
    for s, row in q["counts"].items():
        lines.append(f"| {s} | {q['patients'][s]} | " + " | ".join(str(v) for v in row.values())
                     + f" | {sum(row.values())} |")
    lines.append("")
    sections = [("Files missing", "files_missing"), ("Masks found swapped (told apart by content)", "masks_swapped"),
                ("Mask/image size mismatches (mask resized)", "mask_size_mismatch"),
                ("Masks missing", "masks_missing"), ("Crops missing", "crops_missing"),
                ("Unreadable files (skipped)", "unreadable"),
                ("Images with conflicting labels (labelled malignant)", "conflicting_labels")]
    lines.extend(markdown_list_sections(q, sections))
    lines.append(f"BENIGN_WITHOUT_CALLBACK rows labelled benign: {q.get('bwc_relabelled_benign', 0)}; "
                 f"dropped: {q.get('bwc_dropped', 0)}.")
    d = q.get("dropped_for_patient_overlap", {})
    if d.get("rows"):
        lines.append(f"Training rows dropped because their patient is in the official test split: {d['rows']} "
                     f"({len(d['patients'])} patients).")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- generic manifest import

class ImportConfig(_DatasetOptions):
    """Options of ``mammolab organize --manifest``."""


_LABEL_ALIASES = {"0": "benign", "1": "malignant", "b": "benign", "m": "malignant", "benign": "benign",
                  "malignant": "malignant", "normal": "benign", "benign_without_callback": "benign",
                  "negative": "benign", "positive": "malignant"}


@dataclass
class _ImportJob:
    image_id: str
    src: str
    mask_src: str
    row: dict[str, Any]
    out: str
    bit_depth: int
    cfg_hash: str
    png: str = "stored"


def _import_one(job: _ImportJob) -> UnitResult:
    retain_freed_memory()
    out = Path(job.out)
    record = _unit_record(out, job.image_id)
    if (done := _reused(record, job.cfg_hash, out)) is not None:
        return done
    img = read_image(job.src)
    if img.size == 0 or int(img.max()) == 0:
        raise MammoLabError(f"{job.src}: image is empty or all black")
    row = dict(job.row)
    rel = _rel(row["split"], row["label"], job.image_id)
    write_png(out / rel, _as_depth(img, job.bit_depth), mode=job.png)
    row.update(path=rel, image_id=job.image_id, width=int(img.shape[1]), height=int(img.shape[0]))
    boxes: list[tuple[float, float, float, float]] = []
    if all(pd.notna(row.get(c)) and str(row.get(c)) != "" for c in mf.BBOX_COLUMNS):
        boxes.append(tuple(float(row[c]) for c in mf.BBOX_COLUMNS))
    row["mask"] = ""
    if job.mask_src:
        mask = read_image(job.mask_src) > 0
        if mask.shape != img.shape:
            mask = cv2.resize(mask.astype(np.uint8), (img.shape[1], img.shape[0]),
                              interpolation=cv2.INTER_NEAREST).astype(bool)
        mrel = _rel(row["split"], row["label"], job.image_id, masks=True)
        write_png(out / mrel, mask.astype(np.uint8) * 255, mode="rle")
        row["mask"] = mrel
        if not boxes:
            box = _bbox(mask)
            boxes = [box] if box else []
    union = mf.union_box(boxes)
    for c, v in zip(mf.BBOX_COLUMNS, union or (None,) * 4, strict=True):
        row[c] = v
    row["boxes"] = mf.format_boxes(boxes)
    res = UnitResult(rows=[row])
    write_json(record, {"config_hash": job.cfg_hash, "rows": res.rows, "events": res.events})
    return res


def organize_manifest(csv_path: str | Path, out: str | Path, config: ImportConfig | None = None, *,
                      workers: int | None = None, overwrite: bool = False) -> OrganizeResult:
    """Import any dataset listed in a CSV (``path, label, patient_id`` [+ split, mask, bbox_*])."""
    cfg = config or ImportConfig()
    csv_path, out = Path(csv_path), Path(out)
    if not csv_path.is_file():
        raise MammoLabError(f"--manifest: {csv_path} not found")
    src = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    src.columns = [c.strip() for c in src.columns]
    for col in ("path", "label", "patient_id"):
        if col not in src.columns:
            raise MammoLabError(f"--manifest: {csv_path} has no column {col!r} "
                                "(expected at least path, label, patient_id; optional split, mask, bbox_x0..bbox_y1)")
    if src.empty:
        raise MammoLabError(f"--manifest: {csv_path} lists no image")
    classes = mf.classes_for(cfg.labels)
    labels = src["label"].str.strip().str.lower().map(lambda s: _LABEL_ALIASES.get(s, s))
    bad = sorted(set(labels) - set(classes))
    if bad:
        raise MammoLabError(f"--manifest: column 'label' has {bad[:5]}; expected one of {list(classes)} "
                            "(or 0/1, B/M for binary)")
    src["label"] = labels
    base = csv_path.parent
    src["src"] = [str(p if Path(p).is_absolute() else base / p) for p in src["path"]]
    missing = [p for p in src["src"] if not Path(p).is_file()]
    if "split" in src.columns and (src["split"].str.strip() != "").all():
        splits = src["split"].str.strip().str.lower()
        bad_s = sorted(set(splits) - set(mf.SPLITS))
        if bad_s:
            raise MammoLabError(f"--manifest: column 'split' has {bad_s}; expected train, val or test")
        if (splits == "val").any():
            src["split"] = splits
            src["fold"] = pd.NA
        else:
            tmp = assign_splits(src.assign(official_split=splits), val_fraction=cfg.val_fraction,
                                folds=cfg.folds, seed=cfg.seed)
            src["split"], src["fold"] = tmp["split"], tmp["fold"]
    else:
        tmp = assign_splits(src.drop(columns=[c for c in ("split",) if c in src]), official_col="_none_",
                            val_fraction=cfg.val_fraction, folds=cfg.folds, seed=cfg.seed)
        src["split"], src["fold"] = tmp["split"], tmp["fold"]
    cfg_hash = cfg.content_hash("organize-manifest")
    _prepare_out(out, cfg_hash, overwrite, [csv_path.parent])
    ids = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(p).stem) for p in src["path"]]
    seen: Counter[str] = Counter()
    uniq = []
    for i in ids:
        seen[i] += 1
        uniq.append(i if seen[i] == 1 else f"{i}__{seen[i]}")
    keep_cols = [c for c in src.columns if c not in ("path", "src", "mask")]
    jobs = []
    for image_id, (_, r) in zip(uniq, src.iterrows(), strict=True):
        row = {c: r[c] for c in keep_cols}
        row.setdefault("source", str(csv_path.name))
        row["target"] = classes.index(r["label"])
        mask = r.get("mask", "")
        mask_src = str(mask if not mask or Path(mask).is_absolute() else base / mask) if mask else ""
        jobs.append(_ImportJob(image_id, r["src"], mask_src, row, str(out.resolve()), cfg.bit_depth, cfg_hash,
                                   cfg.png))
    plan = {"files_missing": missing}
    return _collect(out, jobs, plan, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                    inputs={"manifest": str(csv_path.resolve())}, process=_import_one)


def organize(download: str | Path | None = None, *, out: str | Path, csv_dir: str | Path | None = None,
             manifest: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
             metadata: str | Path | None = None, workers: int | None = None, overwrite: bool = False,
             **options: Any) -> OrganizeResult:
    """One entry point for both modes, as the CLI exposes them (``options`` override ``config``)."""
    if manifest is not None:
        if download is not None or csv_dir is not None:
            raise MammoLabError("organize: give either DOWNLOAD with --csv-dir, or --manifest, not both")
        opts = {k: v for k, v in options.items() if k in ImportConfig.model_fields}
        cfg = load_config(ImportConfig, config, overrides=opts, source="organize options")
        return organize_manifest(manifest, out, cfg, workers=workers, overwrite=overwrite)
    if download is None or csv_dir is None:
        raise MammoLabError("organize: expected DOWNLOAD and --csv-dir (CBIS-DDSM), or --manifest FILE.csv")
    cfg = load_config(OrganizeConfig, config, overrides=options, source="organize options")
    return organize_cbis(download, csv_dir, out, cfg, metadata=metadata, workers=workers, overwrite=overwrite)


def summary_lines(result: OrganizeResult) -> list[str]:
    """Human summary for the CLI."""
    q = result.quality
    lines = [f"dataset written to {result.out}  ({q['images']} images; "
             f"{result.processed_units} units processed, {result.skipped_units} reused)"]
    for s, row in q["counts"].items():
        lines.append(f"  {s:5s} " + "  ".join(f"{k}={v}" for k, v in row.items()) + f"  patients={q['patients'][s]}")
    lines.append(f"  patient overlap between splits: {q['patient_overlap_total']}")
    for key, label in (("files_missing", "files missing"), ("unreadable", "unreadable, skipped"),
                       ("masks_swapped", "masks found swapped"), ("mask_size_mismatch", "mask size mismatches"),
                       ("conflicting_labels", "images with conflicting labels")):
        if q.get(key):
            lines.append(f"  {label}: {len(q[key])}")
    lines.append(f"  see {result.out / mf.QUALITY_MD}")
    return lines


__all__ = ["OrganizeConfig", "ImportConfig", "OrganizeResult", "organize", "organize_cbis", "organize_manifest",
           "plan_cbis", "process_unit", "quality_markdown", "summary_lines"]
