"""``mammolab augment``: the classic offline augmentation, for parity with published recipes.

Training augments online by default (a new random view every epoch, no disk). Papers on CBIS-DDSM
often augment offline instead: each training image is written as the original, its horizontal and
vertical flips and two rotations (+-15 degrees). This writes exactly that, for the train split only,
so validation and test stay untouched and comparable; lesion masks and boxes follow every transform.
Re-runs skip images already written with the same options.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from mammolab.config import StrictModel, config_hash, load_config
from mammolab.data import manifest as mf
from mammolab.errors import MammoLabError
from mammolab.io.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    read_json,
    remove_stale_temps,
    write_json,
)
from mammolab.io.images import write_png
from mammolab.io.lock import locks_output
from mammolab.io.memory import retain_freed_memory
from mammolab.preprocess.ops import Sample, flip, rotate
from mammolab.preprocess.pipeline import check_out, file_stamp, load_sample, record_path

__all__ = ["TRANSFORMS", "AugmentConfig", "AugmentResult", "augment", "augment_sample"]

RECORDS = "augment"
TRANSFORMS = ("original", "hflip", "vflip", "rotate_pos", "rotate_neg")


class AugmentConfig(StrictModel):
    """Which copies to write, the rotation angle, and which splits to augment (train by default)."""

    transforms: list[Literal["original", "hflip", "vflip", "rotate_pos", "rotate_neg"]] = Field(
        default_factory=lambda: list(TRANSFORMS), min_length=1)
    angle: float = Field(15.0, gt=0.0, le=90.0)
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train"], min_length=1)
    png_compression: int | None = Field(None, ge=0, le=9)


def _suffix(name: str, angle: float) -> str:
    a = f"{angle:g}".replace(".", "p")
    return {"original": "orig", "hflip": "hflip", "vflip": "vflip", "rotate_pos": f"rot{a}",
            "rotate_neg": f"rotm{a}"}[name]


def augment_sample(sample: Sample, name: str, angle: float = 15.0) -> Sample:
    """One named transform of :data:`TRANSFORMS` (masks and boxes move with the image)."""
    if name == "original":
        return sample
    if name == "hflip":
        return flip(sample, horizontal=True)
    if name == "vflip":
        return flip(sample, horizontal=False)
    if name == "rotate_pos":
        return rotate(sample, angle)
    if name == "rotate_neg":
        return rotate(sample, -angle)
    raise MammoLabError(f"augment: unknown transform {name!r} (expected one of {', '.join(TRANSFORMS)})")


@dataclass
class _Job:
    src: str
    out: str
    row: dict[str, Any]
    cfg: dict[str, Any]
    cfg_hash: str


def _item_hash(job: _Job) -> str:
    return config_hash({"cfg": job.cfg_hash, "row": {k: str(v) for k, v in job.row.items()},
                        "src": file_stamp(job.src, job.row["path"]), "mask": file_stamp(job.src, job.row.get("mask"))})


def _copy_row(job: _Job) -> list[dict[str, Any]]:
    """Rows outside the augmented splits: files copied byte for byte, row unchanged."""
    src, out, row = Path(job.src), Path(job.out), dict(job.row)
    for col in ("path", "mask"):
        rel = str(row.get(col) or "")
        if rel:
            if not (src / rel).is_file():
                if col == "path":
                    raise MammoLabError(f"{src / rel}: file not found")
                row["mask"] = ""
                continue
            atomic_write_bytes(out / rel, (src / rel).read_bytes())
    row.update(augment="original", source_path=str((src / str(job.row["path"])).resolve()))
    return [row]


def _augment_row(job: _Job) -> list[dict[str, Any]]:
    src, out = Path(job.src), Path(job.out)
    sample = load_sample(src, job.row)
    rel = Path(str(job.row["path"]))
    mask_rel = Path(str(job.row.get("mask") or "") or f"masks/{rel}")
    image_id = str(job.row.get("image_id") or rel.stem)
    rows = []
    for name in job.cfg["transforms"]:
        t = augment_sample(sample, name, job.cfg["angle"])
        suffix = _suffix(name, job.cfg["angle"])
        new_rel = rel.with_name(f"{rel.stem}__{suffix}{rel.suffix}").as_posix()
        write_png(out / new_rel, t.image, compression=job.cfg["png_compression"])
        new_mask = ""
        if t.mask is not None and t.mask.any():
            new_mask = mask_rel.with_name(f"{mask_rel.stem}__{suffix}{mask_rel.suffix}").as_posix()
            write_png(out / new_mask, t.mask, compression=job.cfg["png_compression"])
        boxes = [list(map(float, b)) for b in t.boxes]
        union = mf.union_box(boxes)
        row = dict(job.row)
        row.update({"path": new_rel, "mask": new_mask, "image_id": f"{image_id}__{suffix}", "augment": name,
                    "width": t.width, "height": t.height, "boxes": mf.format_boxes(boxes),
                    **{c: (union[i] if union else None) for i, c in enumerate(mf.BBOX_COLUMNS)},
                    "source_path": str((src / rel).resolve())})
        rows.append(row)
    return rows


def _process(job: _Job) -> dict[str, Any]:
    import cv2

    cv2.setNumThreads(1)
    retain_freed_memory()
    out, rel = Path(job.out), str(job.row["path"])
    record = record_path(out, rel, RECORDS)
    item_hash = _item_hash(job)
    data = read_json(record)
    with contextlib.suppress(KeyError, TypeError, AttributeError):  # a record of another shape: redo
        if data.get("item_hash") == item_hash and all((out / r["path"]).is_file() for r in data["rows"]):
            return {"rows": data["rows"], "reused": True}
    rows = _augment_row(job) if job.row["split"] in job.cfg["splits"] else _copy_row(job)
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows]
    write_json(record, {"item_hash": item_hash, "rows": rows})
    return {"rows": rows, "reused": False}


@dataclass
class AugmentResult:
    """The output folder and manifest, and what was skipped and why."""

    out: Path
    manifest: pd.DataFrame
    written: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


@locks_output("out", name="augment", clean=False)  # one writer per --out; temps removed after the checks
def augment(dataset: str | Path, out: str | Path, config: AugmentConfig | dict[str, Any] | str | Path | None = None,
            *, workers: int | None = None, **overrides: Any) -> AugmentResult:
    """Write ``dataset`` to ``out`` with every row of the augmented splits expanded into its copies."""
    from mammolab.progress import parallel_map, resolve_workers

    src, out = Path(dataset), Path(out)
    if not src.is_dir():
        raise MammoLabError(f"DATASET: {src} is not a folder (expected a dataset made by 'mammolab organize')")
    cfg = config if isinstance(config, AugmentConfig) else load_config(AugmentConfig, config, overrides=overrides)
    if isinstance(config, AugmentConfig) and overrides:
        cfg = load_config(AugmentConfig, cfg.model_dump(), overrides=overrides)
    df = mf.load_manifest(src)
    if df.empty:
        raise MammoLabError(f"{src / mf.MANIFEST_NAME}: lists no image")
    resolve_workers(workers)
    check_out(src, out, stage="augment", records=RECORDS)
    ensure_writable_dir(out)
    remove_stale_temps(out)
    cfg_dict = cfg.model_dump(mode="json")
    cfg_hash = config_hash({"stage": "augment", **cfg_dict})
    rows = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    jobs = [_Job(str(src.resolve()), str(out.resolve()), r, cfg_dict, cfg_hash) for r in rows]
    results, errors = parallel_map(_process, jobs, workers=workers, description="augmenting images")
    out_rows: list[dict[str, Any]] = []
    reused = 0
    for res in results:
        if res is not None:
            out_rows.extend(res["rows"])
            reused += int(res["reused"])
    skipped = [(str(rows[i]["path"]), msg) for i, msg in errors]
    if not out_rows:
        raise MammoLabError(f"augment: no image of {src} could be written"
                            + (f" (first: {skipped[0][1]})" if skipped else ""))
    new = pd.DataFrame(out_rows)
    extra = [c for c in ("augment", "source_path") if c not in df.columns]
    new = new[[c for c in df.columns if c in new.columns] + extra]
    mf.write_manifest(new, out)
    info = mf.read_info(src)
    classes = mf.dataset_classes(src, df)
    counts = {s: int((new["split"] == s).sum()) for s in mf.SPLITS}
    quality = {"stage": "augment", "images": int(len(new)), "counts": counts,
               "skipped": [f"{p}: {m}" for p, m in sorted(skipped)]}
    write_json(out / mf.QUALITY_JSON, quality)
    atomic_write_text(out / mf.QUALITY_MD, "# Augmentation report\n\n"
                      + f"Images written: **{len(new)}** (train {counts['train']}, val {counts['val']}, "
                        f"test {counts['test']}); skipped: **{len(skipped)}**.\n\n"
                      + "".join(f"- {s}\n" for s in quality["skipped"]))
    mf.write_info(out, {"stage": "augment", "config": cfg_dict, "config_hash": cfg_hash,
                        "source": {"dataset": str(src.resolve()), "manifest_hash": mf.manifest_hash(src),
                                   "stage": info.get("stage"), "config_hash": info.get("config_hash")},
                        "classes": list(classes), "labels": info.get("labels", "binary"),
                        "manifest_hash": mf.manifest_hash(out)})
    return AugmentResult(out=out, manifest=mf.load_manifest(out), written=len(jobs) - reused - len(skipped),
                         reused=reused, skipped=skipped)

