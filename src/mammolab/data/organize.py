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
import csv
import io
import os
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
from mammolab.data.background import NORMAL, background_classes, cut_background, patch_side, place_background
from mammolab.data.cbis import DownloadIndex, read_case_csvs
from mammolab.data.splits import (
    assign_splits,
    check_split_classes,
    drop_test_patients,
    patient_overlap,
    split_class_check,
)
from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text, ensure_writable_dir, read_json, remove_stale_temps, write_json
from mammolab.io.images import is_dicom_file, read_dicom_pixels, read_image, to_uint8, write_png
from mammolab.io.lock import LOCK_NAME, current_command, output_lock
from mammolab.io.memory import retain_freed_memory
from mammolab.io.reasons import distinct_reasons
from mammolab.progress import parallel_map, resolve_workers
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
    allow_duplicates: bool = Field(
        False, description="Go on when one image's content (byte-identical files, e.g. a copy or a symlinked "
        "folder) is listed in two splits; it is reported as a leak in the quality report. Decides nothing about "
        "the data, so it is not part of the config hash.")
    allow_degenerate: bool = Field(
        False, description="Go on when the validation or test split lacks a class (its AUC and Youden threshold "
        "are then undefined). Decides nothing about the data, so it is not part of the config hash.")
    # --kind roi (the kind itself differs in default and meaning between the two ways)
    roi_size: int = Field(512, ge=16, le=8192)
    roi_margin: float = Field(0.5, ge=0.0, le=5.0)
    roi_film_height: int | None = Field(
        None, ge=16, le=65536, description="roi: cut every patch at one scale, the film's when resized to this "
        "height (a whole-image model's input height, e.g. 1152): the patch covers roi_size x film height / this "
        "source pixels around the lesion, whatever its size (Shen et al.'s patches for patch-to-whole transfer); "
        "a lesion larger than that gets a patch just containing its box. Default: the box plus roi_margin")
    roi_background: int = Field(
        0, ge=0, le=50, description="roi: also cut up to this many patches of normal tissue per film, class "
        "'normal' (first in the class order), at the fixed scale of roi_film_height (required): inside the breast, "
        "away from every lesion box of the film. Shen et al.'s patch classifier learns 'no lesion here' from them")

    def content_hash(self, stage: str) -> str:
        """The hash that decides what a re-run may reuse: every option that changes pixels, labels or splits.

        An option added later enters the hash only when set, so datasets made before it keep their hash.
        """
        dump = self.model_dump(exclude={"png", "allow_degenerate", "allow_duplicates"})
        if dump.get("roi_film_height") is None:
            dump.pop("roi_film_height", None)
        if not dump.get("roi_background"):
            dump.pop("roi_background", None)
        return config_hash({"stage": stage, **dump})


class OrganizeConfig(_DatasetOptions):
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


def _check_background(cfg: OrganizeConfig | ImportConfig) -> None:
    """--roi-film-height and --roi-background need --kind roi (and the latter the former): one line otherwise.

    Checked before anything is read, so a fixed scale asked for a kind without patches is not silently ignored.
    """
    if cfg.roi_background and cfg.kind != "roi":
        raise MammoLabError(f"--roi-background: normal-tissue patches are cut for --kind roi only (got --kind "
                            f"{cfg.kind}); use --kind roi or leave --roi-background out")
    if cfg.roi_background and cfg.roi_film_height is None:
        raise MammoLabError("--roi-background: needs --roi-film-height (a background patch has no lesion box to "
                            "size it by; e.g. --roi-film-height 1152 for a whole-image model 1152 px tall)")
    if cfg.roi_film_height is not None and cfg.kind != "roi":
        raise MammoLabError(f"--roi-film-height: fixed-scale patches are cut for --kind roi only (got --kind "
                            f"{cfg.kind}); use --kind roi or leave --roi-film-height out")


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


def _crop_missing_detail(abn: Abnormality, events: list[dict[str, str]]) -> str:
    """Why a lesion has no crop: an unreadable file of its series is named (with why), since "no
    cropped image" alone sends the user looking for a file that is there but empty or damaged."""
    bad = [e["detail"] for e in events if e["type"] == "unreadable" and e["item"] in abn.roi_files]
    if bad:
        return (f"no readable cropped image in the ROI series: {bad[0]}; expected a DICOM cropped-lesion image "
                "(copy the file again from the download)")
    return "no cropped image in the ROI series (every file in it is a binary mask)"


def _as_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 8:
        return to_uint8(img)
    if img.dtype == np.uint8:
        return img.astype(np.uint16) * 257
    return img


def _roi_patch(img: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float], size: int,
               margin: float, film_height: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                   tuple[float, float, float, float]]:
    """A square patch around ``box``, zero-padded, resized to ``size``.

    By default the patch is the box with ``margin`` context per side, so every lesion fills the same
    share of its patch. With ``film_height`` every patch has the scale of the film resized to that
    height instead (side ``size * image height / film_height`` source pixels, centred on the box),
    the scale a whole-image model at that height sees: what patch-to-whole transfer needs.
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    longest = max(x1 - x0, y1 - y0)
    if film_height is None:
        side = int(np.ceil(longest * (1 + 2 * margin)))
    else:
        side = max(int(round(size * img.shape[0] / film_height)), int(np.ceil(longest)))
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


def _background_rows(img: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], film_id: str,
                     base: dict[str, Any], cfg: dict[str, Any], out: Path, bit_depth: int, png: str,
                     events: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Cut and write up to ``roi_background`` normal-tissue patches of one film; a shortfall is an event."""
    n = int(cfg["roi_background"])
    side = patch_side(img.shape[0], int(cfg["roi_size"]), int(cfg["roi_film_height"]))
    corners = place_background(img, boxes, n, side, int(cfg["seed"]), film_id)
    if len(corners) < n:
        events.append({"type": "background_short", "item": film_id,
                       "detail": f"{len(corners)} of {n} background patches (no more room in the breast away "
                                 "from its lesions)"})
    rows = []
    for k, corner in enumerate(corners, start=1):
        patch = cut_background(img, corner, side, int(cfg["roi_size"]))
        image_id = f"{film_id}_bg{k}"
        rel = _rel(base["split"], NORMAL, image_id)
        write_png(out / rel, _as_depth(patch, bit_depth), mode=png)
        rows.append({**base, "path": rel, "label": NORMAL, "image_id": image_id, "abnormality": "",
                     "pathology": "", "assessment": "", "subtlety": "", "mask": "",
                     **dict.fromkeys(mf.BBOX_COLUMNS), "width": int(patch.shape[1]), "height": int(patch.shape[0]),
                     "n_abnormalities": 0, "conflict": False, "boxes": mf.format_boxes([]),
                     # where on the film it was cut (film pixels): the patch's provenance, for checks
                     "film_box": mf.format_boxes([(corner[0], corner[1], corner[0] + side, corner[1] + side)])})
    return rows


def _unit_background(u: Unit, root: Path, img: np.ndarray, rois: list[tuple[Abnormality, Any, Any]],
                     cfg: dict[str, Any], out: Path, bit_depth: int, png: str,
                     events: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Background patches of one CBIS film, away from its lesions of every kind; none when a box is unknown."""
    boxes, unknown = [], []
    for a, mask, _ in rois:
        box = _bbox(mask) if mask is not None else None
        (boxes.append(box) if box else unknown.append(a.roi_case_id))
    for a in u.others:
        mask, _, _ = _classify_roi(root, a.roi_files, img.shape, [], a)  # its own quirks are not this dataset's
        box = _bbox(mask) if mask is not None else None
        (boxes.append(box) if box else unknown.append(a.roi_case_id))
    if unknown:  # a lesion of the film could be anywhere: no window of it can be called normal
        events.append({"type": "background_short", "item": u.case_id,
                       "detail": f"0 of {cfg['roi_background']} background patches (no readable mask for "
                                 f"{', '.join(sorted(unknown))}, so its lesion could be anywhere)"})
        return []
    return _background_rows(img, boxes, u.case_id, _base_row(u), cfg, out, bit_depth, png, events)


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
                                           "detail": _crop_missing_detail(a, res.events)})
                    continue
                cmask = _crop_mask(mask, crop.shape) if mask is not None else None
                box = _bbox(cmask) if cmask is not None else None
                res.rows.append(_row_from(u, a.roi_case_id, a.label, crop, cmask, [box] if box else [], [a],
                                          out, bit_depth, png))
            else:
                box = _bbox(mask) if mask is not None else None
                if box is None:
                    continue
                patch, pmask, pbox = _roi_patch(full_img, mask, box, job.cfg["roi_size"], job.cfg["roi_margin"],
                                              job.cfg.get("roi_film_height"))
                res.rows.append(_row_from(u, a.roi_case_id, a.label, patch, pmask, [pbox], [a], out, bit_depth, png))
        if kind == "roi" and job.cfg.get("roi_background") and u.background:
            res.rows.extend(_unit_background(u, root, full_img, rois, job.cfg, out, bit_depth, png, res.events))
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
        ensure_writable_dir(out)
        return
    if not out.is_dir():
        raise MammoLabError(f"--out: {out} exists and is not a folder")
    ensure_writable_dir(out)  # one line naming the folder now, not a traceback from the first image
    remove_stale_temps(out)  # what a killed run was writing when it died
    info = mf.read_info(out)
    if not any(p.name != LOCK_NAME for p in out.iterdir()):  # our own lock is not content
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
    _check_background(cfg)
    rows = read_case_csvs(csv_dir, cfg.abnormality)
    cfg_hash = cfg.content_hash("organize")
    _prepare_out(out, cfg_hash, overwrite, [download, csv_dir])
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
    return _collect(out, jobs, plan_events, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                    inputs={"download": str(download.resolve()), "csv_dir": str(csv_dir.resolve()),
                            "metadata": str(Path(metadata).resolve()) if metadata else None})


def _full_digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_duplicates(sources: Sequence[tuple[str, str, str]], *, allow: bool, what: str) -> list[str]:
    """Files of identical content listed under two patients or in two splits: a leak the patient split misses.

    ``sources`` holds ``(file, patient_id, split)`` per image; files are compared by their quick digest,
    then by a hash of all their bytes. Content in two splits is refused in one line naming both files
    and patients (a model tested on an image it trained on), unless ``allow``; every duplicate across
    patients or splits is returned for the quality report. Refused rather than grouped into one split:
    the split may be the user's (a CBIS official test, a manifest's split column) and two patients
    with one image is a labelling error that should be seen and fixed, not hidden.
    """
    from mammolab.data.cbis import quick_digest

    by_quick: dict[str, list[tuple[str, str, str]]] = {}
    for src, patient, split in sources:
        with contextlib.suppress(OSError):
            by_quick.setdefault(quick_digest(src), []).append((src, patient, split))
    found: list[str] = []
    for group in by_quick.values():
        if len({(p, sp) for _, p, sp in group}) < 2:
            continue
        by_full: dict[str, list[tuple[str, str, str]]] = {}
        for item in group:
            by_full.setdefault(_full_digest(item[0]), []).append(item)
        for same in by_full.values():
            first = same[0]
            for other in same[1:]:
                if (other[1], other[2]) == (first[1], first[2]):
                    continue
                line = (f"{first[0]} (patient {first[1]}, {first[2]}) and {other[0]} (patient {other[1]}, "
                        f"{other[2]}) have identical content")
                if other[2] != first[2] and not allow:
                    raise MammoLabError(f"{what}: {line}, so one image would be in {first[2]} and {other[2]}; "
                                        "remove one copy (or pass allow_duplicates: true to go on and have it "
                                        "reported as a leak)")
                found.append(line)
    return sorted(found)


def _unit_hash(cfg_hash: str, u: Unit, index: DownloadIndex) -> str:
    """What a unit's finished images depend on: the config and the content of every source file it reads.

    A DICOM replaced in place (same name, other pixels) changes its digest in the download index, so
    the unit is redone instead of its stale images being reused.
    """
    files = sorted({*([u.image_file] if u.image_file else []), *(f for a in u.abnormalities for f in a.roi_files),
                    *(f for a in u.others for f in a.roi_files)})
    return f"{cfg_hash}:{config_hash([[f, index.digest(f)] for f in files])}"


def _collect(out: Path, jobs: list[Any], plan_events: dict[str, Any], cfg: dict[str, Any], cfg_hash: str,
             labels: str, workers: int | None, inputs: dict[str, Any],
             process: Any = None, source: str = "cbis") -> OrganizeResult:
    process = process or process_unit
    results, errors = parallel_map(process, jobs, workers=workers, description="organizing images")
    events: list[dict[str, str]] = list(plan_events.get("events", []))
    rows: list[dict[str, Any]] = []
    for res in results:
        if res is not None:
            rows.extend(res.rows)
            events.extend(res.events)
    already = sum(1 for r in results if r is not None and r.reused)
    for i, msg in errors:
        events.append({"type": "unreadable", "item": _job_id(jobs[i]), "detail": msg})
    if not rows:
        unreadable = [e["detail"] for e in events if e["type"] == "unreadable"]
        first = errors[0][1] if errors else (unreadable[0] if unreadable else "")
        reasons = distinct_reasons(unreadable)
        if len(reasons) == 1 and len(unreadable) > 1:  # e.g. every file in a syntax with no decoder installed
            first = f"all {len(unreadable)} files: {reasons[0][0]}"
        detail = f" (first error: {first})" if first else ""
        raise MammoLabError(f"organize: no image could be written{detail}")
    classes = mf.classes_for(labels)
    if cfg.get("roi_background"):
        classes = background_classes(classes)
    df = pd.DataFrame(rows)
    df["target"] = df["label"].map({c: i for i, c in enumerate(classes)})
    df = df[df["target"].notna()] if labels == "binary" else df
    overlap = patient_overlap(df)
    if any(overlap.values()):
        raise MammoLabError(f"organize: patient overlap between splits {overlap}; this is a bug, please report it")
    mf.write_manifest(df, out)
    quality = _quality(df, events, plan_events, overlap, classes, source=source)
    if cfg.get("roi_background"):
        quality["background_patches"] = int((df["label"] == NORMAL).sum())
        quality["background_short"] = sorted(f"{e['item']}: {e['detail']}" for e in events
                                             if e["type"] == "background_short")
    write_json(out / mf.QUALITY_JSON, quality)
    atomic_write_text(out / mf.QUALITY_MD, quality_markdown(quality))
    mf.write_info(out, {"stage": "organize", "config": cfg, "config_hash": cfg_hash, "classes": list(classes),
                        "labels": labels, "inputs": inputs, "manifest_hash": mf.manifest_hash(out)})
    return OrganizeResult(out=out, manifest=mf.load_manifest(out), quality=quality,
                          skipped_units=already, processed_units=len(jobs) - already)


def _job_id(job: Any) -> str:
    return job.unit.case_id if isinstance(job, _Job) else job.image_id


def _quality(df: pd.DataFrame, events: list[dict[str, str]], plan: dict[str, Any], overlap: dict[str, list[str]],
             classes: Sequence[str], source: str = "cbis") -> dict[str, Any]:
    """What was found, fixed and skipped; only the sections that apply to ``source`` (cbis or manifest)."""
    by_type: dict[str, list[str]] = {}
    for e in sorted(events, key=lambda e: (e["type"], e["item"])):
        by_type.setdefault(e["type"], []).append(f"{e['item']}: {e['detail']}")
    counts = {s: {c: int(((df["split"] == s) & (df["label"] == c)).sum()) for c in classes} for s in mf.SPLITS}
    patients = {s: int(df.loc[df["split"] == s, "patient_id"].nunique()) for s in mf.SPLITS}
    conflicting = sorted(df.loc[df["conflict"].astype(bool), "image_id"].astype(str)) if "conflict" in df else []
    split_warnings = split_class_check(df, classes)
    common = {
        "images": int(len(df)),
        "counts": counts,
        "patients": patients,
        "patient_overlap": {k: len(v) for k, v in overlap.items()},
        "patient_overlap_total": int(sum(len(v) for v in overlap.values())),
        "split_warnings": split_warnings[1] + split_warnings[0],
        "files_missing": plan.get("files_missing", []),
        # identical files under two patients or in two splits: a leak patient_overlap cannot see
        "content_duplicates": plan.get("content_duplicates", []),
    }
    if source == "manifest":
        return {**common,
                "rows_skipped": by_type.get("row_skipped", []),
                "boxes_clipped": by_type.get("box_clipped", []),
                "mask_size_mismatch": by_type.get("mask_size_mismatch", []),
                "masks_missing": by_type.get("mask_missing", []),
                "unreadable": by_type.get("unreadable", []),
                "conflicting_labels": by_type.get("conflict", [])}
    return {
        **common,
        "duplicate_rows_dropped": plan.get("duplicate_rows", []),
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
    sections = [("Identical image content under two patients or in two splits (leak)", "content_duplicates"),
                ("Splits with too few patients of a class", "split_warnings"),
                ("Files missing", "files_missing"), ("Repeated CSV rows (dropped)", "duplicate_rows_dropped"),
                ("Masks found swapped (told apart by content)", "masks_swapped"),
                ("Manifest rows skipped", "rows_skipped"), ("Boxes crossing the image edge (clipped)", "boxes_clipped"),
                ("Mask/image size mismatches (mask resized)", "mask_size_mismatch"),
                ("Masks missing", "masks_missing"), ("Crops missing", "crops_missing"),
                ("Unreadable files (skipped)", "unreadable"),
                ("Images with conflicting labels (labelled malignant)", "conflicting_labels"),
                ("Films with fewer background patches than --roi-background", "background_short")]
    # Only the sections this source has: a manifest import has no swapped masks or BWC rows to speak of.
    lines.extend(markdown_list_sections(q, [(title, key) for title, key in sections if key in q]))
    if "background_patches" in q:
        lines.append(f"Background (normal-tissue) patches: {q['background_patches']}.")
    if "bwc_relabelled_benign" in q:
        lines.append(f"BENIGN_WITHOUT_CALLBACK rows labelled benign: {q.get('bwc_relabelled_benign', 0)}; "
                     f"dropped: {q.get('bwc_dropped', 0)}.")
    d = q.get("dropped_for_patient_overlap", {})
    if d.get("rows"):
        lines.append(f"Training rows dropped because their patient is in the official test split: {d['rows']} "
                     f"({len(d['patients'])} patients).")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- generic manifest import

class ImportConfig(_DatasetOptions):
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
_MANIFEST_HELP = "expected at least path, label, patient_id; optional split, mask, bbox_x0..bbox_y1"


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


def _read_manifest_csv(path: Path) -> pd.DataFrame:
    """The manifest as strings, with each row's CSV line in ``_line``; any malformed file is one clear error.

    Python's csv module in strict mode, not pandas: pandas silently shifts a row with one field too many
    into an index and reports quoting errors as a tokenizer traceback.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MammoLabError(f"--manifest: cannot read {path} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MammoLabError(f"--manifest: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                            "expected a UTF-8 CSV: save it as 'CSV UTF-8' or convert it, e.g. "
                            "iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise MammoLabError(f"--manifest: {path} is empty ({_MANIFEST_HELP})")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                start = reader.line_num + 1
                continue
            if header is None:
                header = [f.strip() for f in fields]
            elif len(fields) != len(header):
                raise MammoLabError(f"--manifest: {path} line {start} has {len(fields)} fields, the header has "
                                    f"{len(header)} (a comma inside a value needs quotes: \"a, b\")")
            else:
                records.append([f.strip() for f in fields])
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise MammoLabError(f"--manifest: {path} is not a well-formed CSV: {exc} near line {reader.line_num} "
                            "(check its quotes: a value with a comma or quote is written \"like \"\"this\"\"\")"
                            ) from None
    if header is None:  # only separators and blanks
        raise MammoLabError(f"--manifest: {path} is empty ({_MANIFEST_HELP})")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise MammoLabError(f"--manifest: {path} repeats column(s) {dup} in its header")
    df = pd.DataFrame(records, columns=header, dtype=str)
    df["_line"] = lines
    return df


def _parse_box(r: pd.Series) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """A row's box as numbers, or why it is unusable (``None, None``: the row gives no box)."""
    raw = [str(r.get(c, "")).strip() for c in mf.BBOX_COLUMNS]
    if not any(raw):
        return None, None
    if not all(raw):
        empty = [c for c, v in zip(mf.BBOX_COLUMNS, raw, strict=True) if not v]
        return None, f"incomplete box ({', '.join(empty)} empty)"
    vals: list[float] = []
    for c, v in zip(mf.BBOX_COLUMNS, raw, strict=True):
        try:
            x = float(v)
        except ValueError:
            return None, f"{c} {v!r} is not a number"
        if not np.isfinite(x):
            return None, f"{c} {v!r} is not a finite number"
        vals.append(x)
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        return None, f"inverted or empty box ({x0:g},{y0:g},{x1:g},{y1:g}: needs x0 < x1 and y0 < y1)"
    return (x0, y0, x1, y1), None


def _fit_box(box: tuple[float, float, float, float], width: int,
             height: int) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """``box`` clipped to the image, and a note when it crossed the edge; ``None`` when wholly outside."""
    x0, y0, x1, y1 = box
    c = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if c[2] <= c[0] or c[3] <= c[1]:
        return None, f"box {x0:g},{y0:g},{x1:g},{y1:g} lies wholly outside the {width}x{height} image"
    if c != (x0, y0, x1, y1):
        return c, f"box {x0:g},{y0:g},{x1:g},{y1:g} crosses the edge of the {width}x{height} image; " \
                  f"clipped to {c[0]:g},{c[1]:g},{c[2]:g},{c[3]:g}"
    return c, None


def _image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header only (PIL or the DICOM tags), ``None`` when unknown."""
    try:
        if is_dicom_file(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # unreadable here: the worker reads it and reports why
        return None


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
        box, problem = _parse_box(r)
        if problem is None and box is not None:
            if path not in size_cache:
                size_cache[path] = _image_size(path) if Path(path).is_file() else None
            if size_cache[path] is not None:
                box, note = _fit_box(box, *size_cache[path])
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
    rel = _rel(job.base["split"], label, item_id)
    write_png(out / rel, _as_depth(img, job.bit_depth), mode=job.png)
    mask_rel = ""
    if mask is not None and mask.any():
        mask_rel = _rel(job.base["split"], label, item_id, masks=True)
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
    record = _unit_record(out, job.image_id)
    if (done := _reused(record, job.cfg_hash, out)) is not None:
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
            box, note = _fit_box(box, w, h)
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
                box = _bbox(mask)
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
                patch, pmask, pbox = _roi_patch(img, full_mask, box, job.roi_size, job.roi_margin,
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
    return _background_rows(img, boxes, job.image_id, base, cfg, out, job.bit_depth, job.png, events)


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
    _check_background(cfg)
    csv_path, out = Path(csv_path), Path(out)
    if csv_path.is_dir():
        raise MammoLabError(f"--manifest: {csv_path} is a folder; expected a CSV file listing the images "
                            "(columns path, label, patient_id)")
    if not csv_path.is_file():
        raise MammoLabError(f"--manifest: {csv_path} not found; expected a CSV file listing the images "
                            "(columns path, label, patient_id)")
    src = _read_manifest_csv(csv_path)
    for col in ("path", "label", "patient_id"):
        if col not in src.columns:
            raise MammoLabError(f"--manifest: {csv_path} has no column {col!r} ({_MANIFEST_HELP})")
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
    _prepare_out(out, cfg_hash, overwrite, inputs)
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
    return _collect(out, jobs, plan, cfg.model_dump(), cfg_hash, cfg.labels, workers,
                    inputs={"manifest": str(csv_path.resolve())}, process=_import_one, source="manifest")


def organize(download: str | Path | None = None, *, out: str | Path, csv_dir: str | Path | None = None,
             manifest: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
             metadata: str | Path | None = None, workers: int | None = None, overwrite: bool = False,
             **options: Any) -> OrganizeResult:
    """One entry point for both modes, as the CLI exposes them (``options`` override ``config``).

    A run that fails before writing any image leaves no output folder behind if it created it (an
    empty download, a CSV error found while planning): nothing that looks like a dataset.
    """
    resolve_workers(workers)
    out_path = Path(out)
    created = not out_path.exists()
    try:
        # One writer per --out: a second organize there is refused in one line naming this one.
        with output_lock(out_path, command=current_command(f"organize(out={str(out)!r})")):
            return _organize(download, out=out, csv_dir=csv_dir, manifest=manifest, config=config,
                             metadata=metadata, workers=workers, overwrite=overwrite, **options)
    except MammoLabError:
        if created and out_path.is_dir() and not _holds_images(out_path):
            shutil.rmtree(out_path, ignore_errors=True)
        raise


def _holds_images(out: Path) -> bool:
    """True when ``out`` holds a finished unit's record: work worth keeping for a re-run."""
    units = out / WORK_DIR / "units"
    return units.is_dir() and any(units.iterdir())


def _organize(download: str | Path | None = None, *, out: str | Path, csv_dir: str | Path | None = None,
              manifest: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
              metadata: str | Path | None = None, workers: int | None = None, overwrite: bool = False,
              **options: Any) -> OrganizeResult:
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
    if q.get("content_duplicates"):
        lines.append(f"  warning: identical image content under two patients or in two splits: "
                     f"{len(q['content_duplicates'])} (see the quality report)")
    if "background_patches" in q:
        lines.append(f"  background (normal-tissue) patches: {q['background_patches']}"
                     + (f"; films with fewer than asked: {len(q['background_short'])}" if q["background_short"]
                        else ""))
    for w in q.get("split_warnings", []):
        lines.append(f"  warning: {w}")
    for key, label in (("files_missing", "files missing"), ("duplicate_rows_dropped", "repeated CSV rows dropped"),
                       ("unreadable", "unreadable, skipped"),
                       ("rows_skipped", "manifest rows skipped"), ("boxes_clipped", "boxes clipped to the image"),
                       ("masks_swapped", "masks found swapped"), ("mask_size_mismatch", "mask size mismatches"),
                       ("conflicting_labels", "images with conflicting labels")):
        if q.get(key):
            lines.append(f"  {label}: {len(q[key])}")
            if key == "unreadable":  # why, on the terminal too: the distinct reasons with their counts
                lines.extend(f"    {n} x {reason}" for reason, n in distinct_reasons(q[key])[:8])
    lines.append(f"  see {result.out / mf.QUALITY_MD}")
    return lines


__all__ = ["OrganizeConfig", "ImportConfig", "OrganizeResult", "organize", "organize_cbis", "organize_manifest",
           "plan_cbis", "process_unit", "quality_markdown", "summary_lines"]
