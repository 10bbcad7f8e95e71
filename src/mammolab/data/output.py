"""What both importers write besides the images: the out folder, per-unit records, the manifest, the reports.

An importer plans its units and hands them to :func:`collect` with its worker function; every unit
writes its images through :func:`background_rows` / :func:`rel_path` and leaves a record
(:func:`unit_record`) that a re-run with the same config reuses (:func:`reused_result`). ``collect``
then rebuilds the manifest, the quality report (JSON and Markdown) and ``mammolab.json`` from the
records, sorted, so a re-run gives the same bytes whichever importer made the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mammolab.data import manifest as mf
from mammolab.data.background import NORMAL, background_classes, cut_background, patch_side, place_background
from mammolab.data.cbis import quick_digest
from mammolab.data.patches import as_depth
from mammolab.data.splits import patient_overlap, split_class_check
from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text, ensure_writable_dir, read_json, remove_stale_temps, write_json
from mammolab.io.images import write_png
from mammolab.io.lock import LOCK_NAME
from mammolab.io.reasons import distinct_reasons
from mammolab.progress import parallel_map
from mammolab.reporting import markdown_list_sections

__all__ = ["WORK_DIR", "Job", "OrganizeResult", "UnitResult", "background_rows", "collect", "content_duplicates",
           "prepare_out", "quality_markdown", "rel_path", "reused_result", "summary_lines", "unit_record"]


WORK_DIR = ".mammolab"


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


class Job(Protocol):
    """A unit of work handed to :func:`collect`: whatever it is, it names its item for the quality report."""

    @property
    def job_id(self) -> str: ...


def rel_path(split: str, label: str, image_id: str, masks: bool = False) -> str:
    """Where an image (or its mask) goes in the dataset folder: ``[masks/]split/label/id.png``."""
    base = f"{split}/{label}/{image_id}.png"
    return f"masks/{base}" if masks else base


def _outputs_exist(out: Path, rows: list[dict[str, Any]]) -> bool:
    return all((out / r["path"]).is_file() and (not r.get("mask") or (out / r["mask"]).is_file()) for r in rows)


def unit_record(out: Path, unit_id: str) -> Path:
    """The JSON record a finished unit leaves, so a re-run with the same config skips its pixels."""
    return out / WORK_DIR / "units" / f"{unit_id}.json"


def reused_result(record: Path, cfg_hash: str, out: Path) -> UnitResult | None:
    """The earlier result of a unit when its record matches this config and its outputs are all there."""
    data = read_json(record)
    with contextlib.suppress(KeyError, TypeError, AttributeError):  # a record of another shape: redo
        if data.get("config_hash") == cfg_hash and _outputs_exist(out, data["rows"]):
            return UnitResult(rows=data["rows"], events=data["events"], reused=True)
    return None


def background_rows(img: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], film_id: str,
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
        rel = rel_path(base["split"], NORMAL, image_id)
        write_png(out / rel, as_depth(patch, bit_depth), mode=png)
        rows.append({**base, "path": rel, "label": NORMAL, "image_id": image_id, "abnormality": "",
                     "pathology": "", "assessment": "", "subtlety": "", "mask": "",
                     **dict.fromkeys(mf.BBOX_COLUMNS), "width": int(patch.shape[1]), "height": int(patch.shape[0]),
                     "n_abnormalities": 0, "conflict": False, "boxes": mf.format_boxes([]),
                     # where on the film it was cut (film pixels): the patch's provenance, for checks
                     "film_box": mf.format_boxes([(corner[0], corner[1], corner[0] + side, corner[1] + side)])})
    return rows


def prepare_out(out: Path, cfg_hash: str, overwrite: bool, inputs: Sequence[Path]) -> None:
    """Refuse an out folder that overlaps the inputs or holds something else; clear our own files on overwrite."""
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


def _full_digest(path: str | Path) -> str:
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


def collect(out: Path, jobs: Sequence[Job], plan_events: dict[str, Any], cfg: dict[str, Any], cfg_hash: str,
            labels: str, workers: int | None, inputs: dict[str, Any], *,
            process: Callable[[Any], UnitResult], source: str = "cbis") -> OrganizeResult:
    """Run ``process`` on every job (in parallel, each failure logged and skipped) and write the dataset files.

    ``process`` must be a module-level function: workers start from a forkserver and get it by name.
    """
    results, errors = parallel_map(process, jobs, workers=workers, description="organizing images")
    events: list[dict[str, str]] = list(plan_events.get("events", []))
    rows: list[dict[str, Any]] = []
    for res in results:
        if res is not None:
            rows.extend(res.rows)
            events.extend(res.events)
    already = sum(1 for r in results if r is not None and r.reused)
    for i, msg in errors:
        events.append({"type": "unreadable", "item": jobs[i].job_id, "detail": msg})
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

