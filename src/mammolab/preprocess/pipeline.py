"""``mammolab preprocess``: every step of the classic recipe in one pass per image.

The classic recipe runs five scripts that each re-read and re-write every full-size image. Here a
dataset's manifest is read once, and each image is read once, sent through all configured steps in
memory (see :mod:`mammolab.preprocess.ops`) and written once, in parallel over images.

The config is a list of steps ``{name: {param: value}}`` validated against the op registry, so an
unknown step or an out-of-range value is one error line naming it. The resolved config (every
default filled in) and its hash are saved beside the output. Each finished image leaves a small
record keyed by the config hash and the input row; a re-run skips images whose record matches and
redoes them when the config (or the input image) changed. Images that cannot be processed
(unreadable, all black) are skipped with the reason in ``quality_report.json`` and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mammolab.config import StrictModel, config_hash, dump_yaml, format_validation_error, load_config, load_yaml
from mammolab.data import manifest as mf
from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text, ensure_writable_dir, read_json, remove_stale_temps, write_json
from mammolab.io.images import read_image, read_mask, write_png
from mammolab.io.lock import LOCK_NAME, locks_output
from mammolab.io.memory import retain_freed_memory
from mammolab.preprocess.ops import OPS, Op, Sample
from mammolab.progress import parallel_map, resolve_workers
from mammolab.reporting import markdown_list_sections

__all__ = [
    "CONFIG_NAME",
    "PRESETS",
    "Pipeline",
    "check_out",
    "PreprocessConfig",
    "PreprocessResult",
    "contact_sheet",
    "load_preprocess_config",
    "load_sample",
    "preprocess",
    "summary_lines",
]

WORK_DIR = ".mammolab"
RECORDS = "preprocess"
CONFIG_NAME = "preprocess.yaml"
PREVIEW_NAME = "preview.png"
#: Before | after contact sheet of the images whose segmentation check failed (see ``_suspects_sheet``).
SUSPECTS_NAME = "suspects.png"
#: At most this many rows in it: the report lists every suspect, the sheet shows the first ones.
MAX_SUSPECTS_SHOWN = 48
#: Shipped configs selectable by name with ``--config``.
PRESETS = {"full": "preprocess_default.yaml", "patch": "preprocess_patch.yaml"}


# ------------------------------------------------------------------------------------------- config

def _validate_step(index: int, entry: Any) -> dict[str, dict[str, Any]]:
    where = f"step {index + 1}"
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = {} if params is None else params
    else:
        raise PydanticCustomError("step", "{where}: expected '- name: {{parameters}}', got {got}",
                                  {"where": where, "got": repr(entry)[:80]})
    if name not in OPS:
        raise PydanticCustomError("step", "{where}: unknown step '{name}' (expected one of {known})",
                                  {"where": where, "name": str(name), "known": ", ".join(OPS)})
    if not isinstance(params, dict):
        raise PydanticCustomError("step", "{where} '{name}': parameters must be a mapping, got {got}",
                                  {"where": where, "name": name, "got": repr(params)[:80]})
    try:
        op = OPS[name].model_validate(params)
    except ValidationError as exc:
        detail = format_validation_error(exc, f"{where} '{name}'")
        raise PydanticCustomError("step", "{detail}", {"detail": detail}) from None
    return {name: op.model_dump(mode="json")}


class PreprocessConfig(StrictModel):
    """A preprocessing run: the steps in order (each ``{name: params}``) and how outputs are written."""

    steps: list[dict[str, dict[str, Any]]] = Field(min_length=1)
    png: Literal["fast", "stored"] = Field(
        "fast", description="PNG encoding of the output images: fast (compressed) or stored (uncompressed, for "
        "full-size outputs that later passes read often); see mammolab.io.images.PNG_MODES")
    png_compression: int | None = Field(None, ge=0, le=9, description="a zlib level instead of `png` (slower)")

    @field_validator("steps", mode="before")
    @classmethod
    def _check_steps(cls, value: Any) -> list[dict[str, dict[str, Any]]]:
        if not isinstance(value, list):
            raise PydanticCustomError("steps", "expected a list of steps, got {got}", {"got": type(value).__name__})
        return [_validate_step(i, e) for i, e in enumerate(value)]

    def ops(self) -> list[Op]:
        """The configured steps as op instances, in order."""
        return [OPS[name].model_validate(params) for step in self.steps for name, params in step.items()]

    def hash(self) -> str:
        return config_hash({"stage": "preprocess", **self.model_dump(mode="json")})


def _preset_path(name: str) -> Path:
    return Path(str(resources.files("mammolab") / "resources" / PRESETS[name]))


def load_preprocess_config(config: PreprocessConfig | dict[str, Any] | str | Path | None = None, *,
                           size: tuple[int, int] | None = None, bit_depth: int | None = None,
                           default_preset: str = "full") -> PreprocessConfig:
    """Resolve a config from a preset name (``full``, ``patch``), a YAML file, a mapping or ``None``.

    Keys a file leaves out come from the ``default_preset``. ``size`` (height, width) and
    ``bit_depth`` override the ``resize`` step(s); without one, a ``resize`` step is appended.
    """
    if isinstance(config, PreprocessConfig):
        data, source = config.model_dump(mode="json"), "config"
    else:
        data = load_yaml(_preset_path(default_preset))
        source = f"preset {default_preset!r}"
        if isinstance(config, str) and config in PRESETS and not Path(config).is_file():
            data, source = load_yaml(_preset_path(config)), f"preset {config!r}"
        elif isinstance(config, (str, Path)):
            if not Path(config).is_file():
                raise MammoLabError(f"--config: {config} is neither a file nor a preset "
                                    f"(presets: {', '.join(PRESETS)})")
            data, source = {**data, **load_yaml(config)}, str(config)
        elif isinstance(config, dict):
            data, source = {**data, **config}, "config"
    if size is not None or bit_depth is not None:
        steps = [dict(s) if isinstance(s, dict) else {s: {}} for s in data.get("steps", [])]
        resized = False
        for step in steps:
            if "resize" in step:
                params = dict(step["resize"] or {})
                if size is not None:
                    params["height"], params["width"] = int(size[0]), int(size[1])
                if bit_depth is not None:
                    params["bit_depth"] = int(bit_depth)
                step["resize"], resized = params, True
        if not resized:
            params = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
            if bit_depth is not None:
                params["bit_depth"] = int(bit_depth)
            steps.append({"resize": params})
        data = {**data, "steps": steps}
    return load_config(PreprocessConfig, data, source=source)


# ----------------------------------------------------------------------------------------- pipeline

class Pipeline:
    """Ordered steps applied to a :class:`Sample` in memory."""

    def __init__(self, ops: Sequence[Op]) -> None:
        self.ops = list(ops)

    @classmethod
    def from_config(cls, config: PreprocessConfig) -> Pipeline:
        return cls(config.ops())

    def _apply(self, op: Op, sample: Sample) -> Sample:
        try:
            return op(sample)
        except MammoLabError as exc:
            raise MammoLabError(f"step {op.name}: {exc.message}", hint=exc.hint) from None
        except (cv2.error, ValueError, MemoryError) as exc:  # odd pixels must not stop a long run
            raise MammoLabError(f"step {op.name} failed ({exc.__class__.__name__}: {str(exc).strip()[:200]})") from None

    def __call__(self, sample: Sample) -> Sample:
        for op in self.ops:
            sample = self._apply(op, sample)
        return sample

    def trace(self, sample: Sample) -> list[tuple[str, Sample]]:
        """The input and the result after every step, for the preview contact sheet."""
        out = [("input", sample)]
        for op in self.ops:
            sample = self._apply(op, sample)
            out.append((op.name, sample))
        return out


_PIPELINES: dict[str, Pipeline] = {}


def _pipeline_for(steps: list[dict[str, dict[str, Any]]], key: str) -> Pipeline:
    """Build a pipeline once per worker process."""
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline([OPS[n].model_validate(p) for s in steps for n, p in s.items()])
    return _PIPELINES[key]


# ------------------------------------------------------------------------------------- per image

def _row_boxes(row: dict[str, Any]) -> list[list[float]]:
    try:
        boxes = mf.parse_boxes(row.get("boxes"))
    except (ValueError, TypeError) as exc:
        raise MammoLabError(f"{row.get('path')}: column 'boxes' is not a JSON list of boxes ({exc})") from None
    if boxes:
        return boxes
    vals = [row.get(c) for c in mf.BBOX_COLUMNS]
    if all(v is not None and not pd.isna(v) and str(v) != "" for v in vals):
        return [[float(v) for v in vals]]
    return []


def load_sample(dataset: str | Path, row: dict[str, Any], events: list[dict[str, str]] | None = None) -> Sample:
    """Read one manifest row's image, lesion mask and boxes as a :class:`Sample`.

    An unreadable or all-black image is a :class:`MammoLabError` (the item is skipped); an unreadable
    or missing mask is an event (the image is processed without it).
    """
    events = [] if events is None else events
    dataset = Path(dataset)
    rel = str(row["path"])
    img = read_image(dataset / rel)
    if img.size == 0 or not cv2.hasNonZero(img):
        raise MammoLabError(f"{dataset / rel}: image is all black (nothing to preprocess)")
    mask = None
    mrel = str(row.get("mask") or "")
    if mrel and mrel.lower() != "nan":
        try:
            mask = read_mask(dataset / mrel)  # 0/255 uint8 from any format and depth
            if mask.shape != img.shape:
                events.append({"type": "mask_resized", "item": rel, "detail": f"mask {mask.shape[1]}x{mask.shape[0]} "
                                                                             f"vs image {img.shape[1]}x{img.shape[0]}"})
                mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        except MammoLabError as exc:
            events.append({"type": "mask_unreadable", "item": rel, "detail": str(exc)})
    return Sample(img, mask, _row_boxes(row), {})


@dataclass
class _Job:
    src: str
    out: str
    row: dict[str, Any]
    steps: list[dict[str, dict[str, Any]]]
    cfg_hash: str
    compression: int | None
    png: str = "fast"


def record_path(out: Path, rel: str, records: str = RECORDS) -> Path:
    """Where the per-image record of a resumable stage (preprocess, augment) lives in ``out``."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "__", rel)
    return out / WORK_DIR / records / f"{key}.json"


def file_stamp(folder: str | Path, rel: Any) -> list[int] | None:
    """``[size, mtime_ns]`` of ``folder/rel``, or ``None`` when ``rel`` is empty or not a file: what an
    item hash takes of an input file, so an edited input is redone."""
    path = Path(folder) / str(rel or "")
    if not rel or not path.is_file():
        return None
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _item_hash(job: _Job) -> str:
    """What decides whether an earlier output is still right: the config, the row, the input files."""
    return config_hash({"cfg": job.cfg_hash, "row": {k: str(v) for k, v in job.row.items()},
                        "src": file_stamp(job.src, job.row["path"]), "mask": file_stamp(job.src, job.row.get("mask"))})


def _process(job: _Job) -> dict[str, Any]:
    """Preprocess one image: read once, all steps in memory, write once (image and mask)."""
    cv2.setNumThreads(1)  # parallelism is over images; threads inside one image would fight for cores
    retain_freed_memory()  # full-size temporaries reused from image to image, not faulted in anew
    out, rel = Path(job.out), str(job.row["path"])
    record = record_path(out, rel)
    item_hash = _item_hash(job)
    data = read_json(record)
    with contextlib.suppress(KeyError, TypeError, AttributeError):  # a record of another shape: redo
        if data.get("item_hash") == item_hash and (out / data["row"]["path"]).is_file():
            return {"row": data["row"], "events": data["events"], "reused": True}
    try:
        events: list[dict[str, str]] = []
        sample = load_sample(job.src, job.row, events)
        n_boxes_in = len(sample.boxes)
        had_lesion = sample.mask is not None and cv2.hasNonZero(sample.mask)
        result = _pipeline_for(job.steps, job.cfg_hash)(sample)
    except MammoLabError as exc:
        # A stale output of an earlier config must not survive next to a manifest that lacks it.
        (out / rel).unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        raise MammoLabError(f"{rel}: {exc}" if rel not in str(exc) else str(exc)) from None
    write_png(out / rel, result.image, compression=job.compression, mode=job.png)
    row = dict(job.row)
    mask_rel = ""
    if result.mask is not None and result.mask.any():
        mask_rel = str(job.row.get("mask") or "") or f"masks/{rel}"
        write_png(out / mask_rel, result.mask, compression=job.compression, mode="rle")
    if len(result.boxes) < n_boxes_in:
        events.append({"type": "lesion_cropped", "item": rel,
                       "detail": f"{n_boxes_in - len(result.boxes)} of {n_boxes_in} lesion box(es) fell outside "
                                 "the image after cropping"})
    seg = result.meta.pop("segmentation", None)  # remove_annotations' figures go to the report, not the recipe
    if seg and seg.get("suspect"):
        events.append({"type": "segmentation_suspect", "item": rel, "detail": _segmentation_detail(seg)})
    if had_lesion:
        m = result.mask > 0 if result.mask is not None else None
        kept = float((result.image[m] > 0).mean()) if m is not None and m.any() else 0.0
        if kept < 0.5:
            events.append({"type": "lesion_blanked", "item": rel,
                           "detail": f"only {kept:.0%} of the lesion's pixels are left non-black after preprocessing"})
    boxes = [list(map(float, b)) for b in result.boxes]
    union = mf.union_box(boxes)
    row.update({
        "path": rel, "mask": mask_rel, "width": result.width, "height": result.height,
        "boxes": mf.format_boxes(boxes),
        **{c: (union[i] if union else None) for i, c in enumerate(mf.BBOX_COLUMNS)},
        "source_path": str((Path(job.src) / rel).resolve()),
        "pp_hash": job.cfg_hash,
        "pp_transform": json.dumps(result.meta, separators=(",", ":"), sort_keys=True, default=_json_default),
    })
    row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    write_json(record, {"item_hash": item_hash, "row": row, "events": events})
    return {"row": row, "events": events, "reused": False}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# ------------------------------------------------------------------------------------------- preview

def _display(img: np.ndarray) -> np.ndarray:
    top = float(img.max()) if img.size else 0.0
    return (img.astype(np.float32) * (255.0 / top)).astype(np.uint8) if top > 0 else img.astype(np.uint8)


def _cell(title: str, s: Sample, size: int) -> np.ndarray:
    header = 22
    canvas = np.full((size + header, size, 3), 40, dtype=np.uint8)
    h, w = s.image.shape
    scale = min(size / w, size / h)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    small = cv2.resize(_display(np.ascontiguousarray(s.image)), (nw, nh), interpolation=cv2.INTER_AREA)
    ox, oy = (size - nw) // 2, header + (size - nh) // 2
    canvas[oy:oy + nh, ox:ox + nw] = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    if s.mask is not None and s.mask.any():
        m = cv2.resize(np.ascontiguousarray(s.mask), (nw, nh), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas[oy:oy + nh, ox:ox + nw], contours, -1, (0, 200, 0), 1)
    for x0, y0, x1, y1 in s.boxes:
        p0 = (ox + int(x0 * scale), oy + int(y0 * scale))
        p1 = (ox + int(np.ceil(x1 * scale)) - 1, oy + int(np.ceil(y1 * scale)) - 1)
        cv2.rectangle(canvas, p0, p1, (0, 0, 255), 1)
    label = f"{title} {w}x{h} {s.image.dtype.itemsize * 8}b"
    cv2.putText(canvas, label[:40], (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def contact_sheet(traces: Sequence[Sequence[tuple[str, Sample]]], cell: int = 256) -> np.ndarray:
    """A BGR grid: one row per image, one column per step (input first), boxes red, masks green."""
    if not traces:
        raise MammoLabError("preview: no image to show")
    rows = []
    cols = max(len(t) for t in traces)
    for trace in traces:
        cells = [_cell(title, s, cell) for title, s in trace]
        blank = np.full_like(cells[0], 40)
        cells += [blank] * (cols - len(cells))
        rows.append(np.hstack(cells))
    return np.vstack(rows)


def _preview(src: Path, out: Path, rows: list[dict[str, Any]], pipeline: Pipeline, n: int) -> Path | None:
    if n <= 0 or not rows:
        return None
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(n, len(rows))).round().astype(int))
    traces = []
    for i in picks:
        try:
            trace = pipeline.trace(load_sample(src, rows[i]))
        except MammoLabError:
            continue
        stem = Path(str(rows[i]["path"])).stem[:20]
        traces.append([(stem if j == 0 else name, s) for j, (name, s) in enumerate(trace)])
    if not traces:
        return None
    path = out / PREVIEW_NAME
    write_png(path, contact_sheet(traces))
    return path


def _segmentation_detail(seg: dict[str, Any]) -> str:
    """One line of what :func:`mammolab.preprocess.ops.segmentation_check` found."""
    parts = []
    if seg.get("label_like"):
        parts.append(f"label-like bright patch kept ({seg['label_like']:.2%} of the image)")
    if seg.get("islands"):
        parts.append(f"{seg['islands']:.1%} of the kept area not connected to the breast")
    if seg.get("edge"):
        parts.append("a straight edge along a side is left (tape, film edge or frame)")
    if seg.get("sliver"):
        parts.append(f"a film-edge sliver along the chest wall is left ({seg['sliver']:.2%} of the image)")
    if seg.get("tissue_removed", 0) > 0.05:
        parts.append(f"{seg['tissue_removed']:.0%} of the first-guess breast removed")
    return "; ".join(parts) or "flagged"


def _suspects_sheet(src: Path, out: Path, rows: list[dict[str, Any]], events: list[dict[str, str]]) -> Path | None:
    """``suspects.png``: input | output of each segmentation suspect, so a user of a new collection sees
    the failures without opening every file. A stale sheet of an earlier run goes when none is left."""
    path = out / SUSPECTS_NAME
    items = sorted({e["item"] for e in events if e["type"] == "segmentation_suspect"})
    by_path = {str(r["path"]): r for r in rows}
    traces = []
    for rel in items[:MAX_SUSPECTS_SHOWN]:
        try:
            before = load_sample(src, by_path[rel])
            after = Sample(read_image(out / rel))
        except (MammoLabError, KeyError):
            continue
        traces.append([(Path(rel).stem[:20], before), ("output", after)])
    if not traces:
        path.unlink(missing_ok=True)
        return None
    write_png(path, contact_sheet(traces))
    return path


# ------------------------------------------------------------------------------------------- the run

@dataclass
class PreprocessResult:
    """What a run did: the output folder and manifest, what was reused, what was skipped and why."""

    out: Path
    manifest: pd.DataFrame
    config: PreprocessConfig
    config_hash: str
    processed: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    preview: Path | None = None


def check_out(src: Path, out: Path, stage: str = "preprocess", records: str = RECORDS) -> None:
    """Refuse an output folder that overlaps the input or holds something other than this stage's output."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise MammoLabError(f"--out: {out} overlaps the input dataset {src}; choose a folder outside it "
                            "(the input is never modified)")
    if o.exists() and not o.is_dir():
        raise MammoLabError(f"--out: {out} exists and is not a folder")
    if o.is_dir() and any(p.name != LOCK_NAME for p in o.iterdir()):  # our own lock is not content
        info = mf.read_info(o)
        if info.get("stage") != stage and not (o / WORK_DIR / records).is_dir():
            raise MammoLabError(f"--out: {out} is not empty and is not a 'mammolab {stage}' output; "
                                "choose an empty or new folder")


def _default_preset(info: dict[str, Any]) -> str:
    """Lesion crops and ROI patches have no border, label or chest wall: they get the ``patch`` preset."""
    kind = (info.get("config") or {}).get("kind")
    return "patch" if kind in ("crop", "roi") else "full"


@locks_output("out", name="preprocess", clean=False)  # one writer per --out; temps removed after the checks
def preprocess(dataset: str | Path, out: str | Path,
               config: PreprocessConfig | dict[str, Any] | str | Path | None = None, *,
               workers: int | None = None, preview: int = 0, size: tuple[int, int] | None = None,
               bit_depth: int | None = None) -> PreprocessResult:
    """Preprocess every image of ``dataset`` into ``out`` (same layout, updated manifest).

    ``config`` is a preset name (``full``, ``patch``), a YAML path, a mapping or a
    :class:`PreprocessConfig`; ``None`` picks ``patch`` for crop/ROI datasets and ``full`` otherwise.
    """
    src, out = Path(dataset), Path(out)
    if not src.is_dir():
        raise MammoLabError(f"DATASET: {src} is not a folder (expected a dataset made by 'mammolab organize')")
    df = mf.load_manifest(src)
    if df.empty:
        raise MammoLabError(f"{src / mf.MANIFEST_NAME}: lists no image")
    info = mf.read_info(src)
    cfg = load_preprocess_config(config, size=size, bit_depth=bit_depth, default_preset=_default_preset(info))
    if preview < 0:
        raise MammoLabError(f"--preview: expected 0 or more images, got {preview}")
    resolve_workers(workers)
    check_out(src, out)
    ensure_writable_dir(out)
    remove_stale_temps(out)  # what a killed run was writing when it died
    cfg_hash = cfg.hash()
    steps = cfg.model_dump(mode="json")["steps"]
    rows = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    jobs = [_Job(str(src.resolve()), str(out.resolve()), r, steps, cfg_hash, cfg.png_compression, cfg.png)
            for r in rows]
    atomic_write_text(out / CONFIG_NAME, dump_yaml(cfg.model_dump(mode="json")))
    prev_threads = cv2.getNumThreads()
    try:
        results, errors = parallel_map(_process, jobs, workers=workers, description="preprocessing images")
    finally:
        cv2.setNumThreads(prev_threads)
    out_rows, events, reused = [], [], 0
    for res in results:
        if res is not None:
            out_rows.append(res["row"])
            events.extend(res["events"])
            reused += int(res["reused"])
    skipped = [(str(rows[i]["path"]), msg) for i, msg in errors]
    if not out_rows:
        first = f" (first: {skipped[0][1]})" if skipped else ""
        raise MammoLabError(f"preprocess: no image of {src} could be processed{first}")
    new = pd.DataFrame(out_rows)
    extra = [c for c in ("source_path", "pp_hash", "pp_transform") if c not in df.columns]
    new = new[[c for c in df.columns if c in new.columns] + extra]
    mf.write_manifest(new, out)
    classes = mf.dataset_classes(src, df)
    labels = info.get("labels") or ("binary" if tuple(classes) == mf.BINARY_CLASSES else
                                    "4class" if tuple(classes) == mf.FOURCLASS_CLASSES else "custom")
    quality = _quality(new, skipped, events, classes, reused, len(out_rows) - reused)
    write_json(out / mf.QUALITY_JSON, quality)
    atomic_write_text(out / mf.QUALITY_MD, _quality_markdown(quality))
    mf.write_info(out, {
        "stage": "preprocess", "config": cfg.model_dump(mode="json"), "config_hash": cfg_hash,
        "source": {"dataset": str(src.resolve()), "manifest_hash": mf.manifest_hash(src),
                   "stage": info.get("stage"), "config_hash": info.get("config_hash")},
        "classes": list(classes), "labels": labels, "manifest_hash": mf.manifest_hash(out),
    })
    preview_path = _preview(src, out, rows, Pipeline.from_config(cfg), preview)
    _suspects_sheet(src, out, rows, events)
    return PreprocessResult(out=out, manifest=mf.load_manifest(out), config=cfg, config_hash=cfg_hash,
                            processed=len(out_rows) - reused, reused=reused, skipped=skipped, events=events,
                            preview=preview_path)


def _quality(df: pd.DataFrame, skipped: list[tuple[str, str]], events: list[dict[str, str]],
             classes: Sequence[str], reused: int, processed: int) -> dict[str, Any]:
    by_type: dict[str, list[str]] = {}
    for e in sorted(events, key=lambda e: (e["type"], e["item"])):
        by_type.setdefault(e["type"], []).append(f"{e['item']}: {e['detail']}")
    counts = {s: {c: int(((df["split"] == s) & (df["label"] == c)).sum()) for c in classes} for s in mf.SPLITS}
    return {
        "stage": "preprocess",
        "images": int(len(df)),
        "processed": processed,
        "reused": reused,
        "counts": counts,
        "skipped": [f"{p}: {m}" for p, m in sorted(skipped)],
        "lesion_cropped": by_type.get("lesion_cropped", []),
        "lesion_blanked": by_type.get("lesion_blanked", []),
        "mask_resized": by_type.get("mask_resized", []),
        "mask_unreadable": by_type.get("mask_unreadable", []),
        "segmentation_suspect": by_type.get("segmentation_suspect", []),
    }


def _quality_markdown(q: dict[str, Any]) -> str:
    classes = list(next(iter(q["counts"].values())).keys())
    lines = ["# Preprocessing quality report", "",
             f"Images written: **{q['images']}** ({q['processed']} processed, {q['reused']} reused from an earlier "
             f"run with the same config); skipped: **{len(q['skipped'])}**.", "",
             "| split | " + " | ".join(classes) + " | total |", "|---|" + "---|" * len(classes) + "---|"]
    for s, row in q["counts"].items():
        lines.append(f"| {s} | " + " | ".join(str(v) for v in row.values()) + f" | {sum(row.values())} |")
    lines.append("")
    lines.extend(markdown_list_sections(q, [
        ("Skipped images", "skipped"), ("Lesion boxes cropped away", "lesion_cropped"),
        ("Lesions blanked by annotation removal (check the config)", "lesion_blanked"),
        ("Masks resized to their image", "mask_resized"),
        ("Masks unreadable (image processed without its mask)", "mask_unreadable"),
        (f"Segmentation suspects: something besides the breast left, or breast tissue removed (before | after: "
         f"{SUSPECTS_NAME})", "segmentation_suspect")]))
    return "\n".join(lines)


def summary_lines(result: PreprocessResult) -> list[str]:
    """Human summary for the CLI: where the output is, what was reused, every skipped image and why."""
    lines = [f"preprocessed dataset written to {result.out}  ({len(result.manifest)} images: "
             f"{result.processed} processed, {result.reused} reused; config {result.config_hash})"]
    steps = " -> ".join(name for step in result.config.steps for name in step)
    lines.append(f"  steps: {steps}  (resolved config: {result.out / CONFIG_NAME})")
    if result.skipped:
        lines.append(f"  skipped {len(result.skipped)} image(s):")
        lines.extend(f"    {path}: {msg}" for path, msg in result.skipped[:50])
        if len(result.skipped) > 50:
            lines.append(f"    ... and {len(result.skipped) - 50} more")
    flagged = {e["type"] for e in result.events}
    for key in sorted(flagged):
        lines.append(f"  {key.replace('_', ' ')}: {sum(e['type'] == key for e in result.events)}")
    if result.preview:
        lines.append(f"  preview (one column per step): {result.preview}")
    if (result.out / SUSPECTS_NAME).is_file() and "segmentation_suspect" in flagged:
        lines.append(f"  segmentation suspects, before | after: {result.out / SUSPECTS_NAME}")
    lines.append(f"  see {result.out / mf.QUALITY_MD}")
    return lines
