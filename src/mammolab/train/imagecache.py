"""Decode and resize every image once; serve the pixels from RAM or a memory-mapped file afterwards.

Decoding a full-size mammogram PNG costs tens of milliseconds, more than a training step of a small
network on a GPU, so the classic loop (decode + resize every epoch) is input-bound. Here the
resized images are stored once as one ``uint8``/``uint16`` array ``[N, H, W]``:

* Where: ``--cache-dir DIR`` (``cache_dir``), else ``$MAMMOLAB_CACHE``, else ``DATASET/.mammolab-cache``
  when the dataset folder can be written, else the run folder's ``cache/`` (see :func:`resolve_cache_dir`).
  Not ``~/.cache``, which the user never chose and which is often a small home quota on clusters.
* Space is reserved up front (``posix_fallocate``), not a sparse file filled through a memory map: a
  full disk is then one line naming the folder and the bytes needed before training starts, instead
  of a bus error (SIGBUS, exit 135) in the middle of decoding.
* ``cache="auto"`` (default): a ``.npy`` file under the cache folder, keyed by everything that
  decides its content (manifest hash, the dataset's config hash, the files' sizes and times, the
  list of images, size and resize mode). It is loaded into RAM when it fits in half the available
  memory and memory-mapped otherwise; a later run with the same key reuses it at once.
* ``cache="disk"``: the same file, always memory-mapped (many parallel runs on one node).
* ``cache="ram"``: decoded into RAM for this run only, nothing written.

Decoding runs in a thread pool (OpenCV releases the GIL); this module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mammolab.errors import MammoLabError
from mammolab.imagesize import ImageSize, as_hw, size_text
from mammolab.io import read_image
from mammolab.io.atomic import TEMP_SUFFIX, read_json, remove_stale_temps, write_json
from mammolab.progress import default_workers, make_progress

__all__ = ["CACHE_VERSION", "ImageStore", "build_image_store", "default_cache_dir", "pad_placement", "resize_image",
           "resolve_cache_dir", "to_unit"]

CACHE_VERSION = 1
_INLINE_BELOW = 48  # fewer images than this are decoded in-process (no pool start-up)


def default_cache_dir() -> Path:
    """``$MAMMOLAB_CACHE``, else ``$XDG_CACHE_HOME/mammolab``, else ``~/.cache/mammolab`` (other caches than
    the image cache: downloaded weights and the like; the image cache uses :func:`resolve_cache_dir`)."""
    if os.environ.get("MAMMOLAB_CACHE"):
        return Path(os.environ["MAMMOLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mammolab"


#: The image cache inside a dataset folder (hidden: it is not part of the dataset's manifest).
DATASET_CACHE = ".mammolab-cache"


def resolve_cache_dir(dataset_dir: str | Path, cache_dir: str | Path | None = None,
                      run_dir: str | Path | None = None) -> Path:
    """Where the image cache of ``dataset_dir`` goes, in order: ``cache_dir`` (``--cache-dir``),
    ``$MAMMOLAB_CACHE``, ``DATASET/.mammolab-cache`` when the dataset folder can be written (every run on
    that dataset reuses it, and it goes away with the dataset), else ``RUN/cache`` (a read-only shared
    dataset: the run folder is always writable), else a per-user folder under the temp folder."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("MAMMOLAB_CACHE"):
        return Path(os.environ["MAMMOLAB_CACHE"]) / "images"
    dataset_dir = Path(dataset_dir)
    if os.access(dataset_dir, os.W_OK | os.X_OK):
        return dataset_dir / DATASET_CACHE
    if run_dir is not None:
        return Path(run_dir) / "cache"
    import tempfile

    return Path(tempfile.gettempdir()) / f"mammolab-cache-{os.getuid()}"


def _reserve(path: Path, folder: Path) -> None:
    """Allocate every block of ``path`` now (it was created sparse), or fail in one line naming ``folder``."""
    import errno
    import shutil

    from mammolab.errors import OutputError

    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(folder).free
        raise OutputError(f"{folder}: not enough space for the image cache: it needs {size / 2**20:.1f} MiB, "
                          f"{free / 2**20:.1f} MiB free; free space, pass --cache-dir on another disk, or "
                          "--cache ram") from None
    finally:
        os.close(fd)


def resize_image(img: np.ndarray, size: ImageSize | Sequence[int], mode: str = "stretch") -> np.ndarray:
    """Resize a 2-D image to ``size`` (an int: a square; ``(height, width)``: a rectangle), keeping its dtype.

    ``stretch`` ignores the aspect ratio (what the classic study did); ``pad`` scales the image by the
    largest factor at which it fits inside ``height x width``, keeping the lesion's shape, and centres
    it on a black canvas (bars split evenly, the odd pixel at the bottom/right). A 1152x896 target
    holds a whole film with little or no padding where a 1152 square pads ~29% of it.
    """
    if img.ndim != 2:
        raise MammoLabError(f"expected a 2-D grayscale image, got shape {img.shape}")
    out_h, out_w = as_hw(size)
    h, w = img.shape
    if mode == "stretch":
        th, tw = out_h, out_w
    elif mode == "pad":
        _, _, th, tw = pad_placement((h, w), (out_h, out_w))
    else:
        raise MammoLabError(f"resize: expected 'stretch' or 'pad', got {mode!r}")
    interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
    out = img if (th, tw) == (h, w) else cv2.resize(img, (tw, th), interpolation=interp)
    if mode == "pad" and (th, tw) != (out_h, out_w):
        canvas = np.zeros((out_h, out_w), dtype=img.dtype)
        y0, x0 = (out_h - th) // 2, (out_w - tw) // 2
        canvas[y0:y0 + th, x0:x0 + tw] = out
        out = canvas
    return np.ascontiguousarray(out)


def pad_placement(shape: tuple[int, int], size: ImageSize | Sequence[int]) -> tuple[int, int, int, int]:
    """Where ``resize_image(img, size, "pad")`` puts an image of ``shape``: ``(y0, x0, height, width)``.

    Used to map model-space outputs (heatmaps) back onto the image: the same arithmetic as the resize.
    """
    out_h, out_w = as_hw(size)
    h, w = int(shape[0]), int(shape[1])
    # For a square this is size / max(h, w), the formula of earlier versions, to the same float.
    scale = min(out_h / h, out_w / w)
    th, tw = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
    return (out_h - th) // 2, (out_w - tw) // 2, th, tw


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale a ``uint8``/``uint16`` array to float32 in ``[0, 1]`` (by the dtype's full range)."""
    return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)


def normalise(x: Any, mean: float, std: float) -> Any:
    """``(x - mean) / std``: a numpy array or a torch tensor alike (the training batches and the model input)."""
    return (x - mean) / std


def model_input(img: np.ndarray, size: ImageSize | Sequence[int], mode: str, mean: float, std: float) -> np.ndarray:
    """The training transform of one image, as validation and test saw it: resize to the model's size,
    scale by the dtype's range, normalise -> ``[1, H, W]`` float32.

    The one implementation: the training data module and :mod:`mammolab.infer` (predict, serve, export,
    evaluate) both call it, and it needs only numpy and OpenCV (an exported model runs without torch).
    """
    if img.dtype not in (np.uint8, np.uint16):
        raise MammoLabError(f"expected a uint8 or uint16 image, got {img.dtype}")
    return np.ascontiguousarray(normalise(to_unit(resize_image(img, size, mode)), mean, std)[None], dtype=np.float32)


def _as_dtype(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if img.dtype == dtype:
        return img
    if img.dtype == np.uint8 and dtype == np.uint16:
        return img.astype(np.uint16) * np.uint16(257)  # 255 * 257 = 65535: the same [0, 1] value
    if img.dtype == np.uint16 and dtype == np.uint8:
        return (img // 257).astype(np.uint8)
    raise MammoLabError(f"unsupported pixel type {img.dtype} (expected uint8 or uint16)")


def _load_one(args: tuple[str, ImageSize, str, str]) -> np.ndarray:
    path, size, mode, dtype = args
    return _as_dtype(resize_image(read_image(path), size, mode), np.dtype(dtype))


def _probe_dtype(paths: Sequence[Path]) -> np.dtype:
    """``uint16`` when any image is 16-bit (PNG header read by Pillow, no decode), else ``uint8``."""
    from PIL import Image

    for p in paths:
        try:
            if not p.stat().st_size:  # an empty file is reported (and skipped) when decoded; it has no depth
                continue
            with Image.open(p) as im:
                if im.mode not in ("L", "1", "P", "RGB", "RGBA", "LA"):
                    return np.dtype(np.uint16)
        except Exception:  # DICOM and other formats Pillow cannot open: assume 16-bit
            return np.dtype(np.uint16)
    return np.dtype(np.uint8)


@dataclass
class ImageStore:
    """The resized images of a run, row ``i`` = ``paths[i]``; ``array`` is in RAM or memory-mapped."""

    array: np.ndarray
    paths: list[str]
    file: Path | None
    in_ram: bool
    key: str
    build_seconds: float
    reused: bool
    #: Images that could not be read (path -> one-line reason): their rows are zeros and the data
    #: module leaves them out, so one damaged file is reported instead of stopping the run.
    failed: dict[str, str] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def cache_key(dataset_dir: Path, rel_paths: Sequence[str], image_size: ImageSize | Sequence[int], resize: str) -> str:
    """Everything that decides the cached pixels, hashed: manifest, dataset config, files, size, mode.

    A square size enters as the int it always was (existing caches stay valid); a rectangle as
    ``[height, width]``, so 64x48 and 48x64 are different files.
    """
    from mammolab.data.manifest import manifest_hash, read_info

    hh, ww = as_hw(image_size)
    size_key: int | list[int] = hh if hh == ww else [hh, ww]
    h = hashlib.sha256()
    info = read_info(dataset_dir)
    h.update(json.dumps([CACHE_VERSION, manifest_hash(dataset_dir), info.get("config_hash"), size_key,
                         resize]).encode())
    for rel in rel_paths:
        p = dataset_dir / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            raise MammoLabError(f"{p}: image listed in manifest.csv not found") from None
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _ram_budget() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2 << 30


def _decode_into(out: np.ndarray, dataset_dir: Path, rel_paths: Sequence[str], image_size: ImageSize, resize: str,
                 workers: int | None) -> dict[str, str]:
    """Decode every image into ``out``; return the unreadable ones (path -> reason), rows left zero.
    Only when none can be read is it an error."""
    jobs = [(str(dataset_dir / p), image_size, resize, out.dtype.str) for p in rel_paths]
    errors: list[tuple[int, str]] = []
    n = len(jobs)
    workers = default_workers() if not workers or workers <= 0 else workers
    with make_progress() as progress:
        task = progress.add_task(f"caching {n} images at {size_text(image_size)} px", total=n)
        if workers <= 1 or n < _INLINE_BELOW:
            for i, job in enumerate(jobs):
                try:
                    out[i] = _load_one(job)
                except MammoLabError as exc:
                    errors.append((i, str(exc)))
                progress.advance(task)
        else:
            # Threads, not processes: OpenCV releases the GIL while it decodes and resizes, so threads
            # run in parallel; and unlike fork() they cannot inherit half-initialised thread pools
            # from torch or OpenCV (a forked child calling into OpenCV can deadlock), and unlike
            # spawn they need no importable __main__ (scripts and notebooks without a main guard).
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_safe_load, jobs)
                for i, (ok, value) in enumerate(results):
                    if ok:
                        out[i] = value
                    else:
                        errors.append((i, value))
                    progress.advance(task)
    if errors and len(errors) == n:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MammoLabError(f"none of the {n} image(s) could be read: {errors[0][1]}{more}")
    for i, _ in errors:
        out[i] = 0
    return {rel_paths[i]: msg for i, msg in errors}


def _safe_load(job: tuple[str, ImageSize, str, str]) -> tuple[bool, object]:
    try:
        return True, _load_one(job)
    except MammoLabError as exc:
        return False, str(exc)


def build_image_store(dataset_dir: str | Path, rel_paths: Sequence[str], *, image_size: ImageSize,
                      resize: str = "stretch", cache: str = "auto", cache_dir: str | Path | None = None,
                      workers: int | None = None) -> ImageStore:
    """Decode + resize ``rel_paths`` once (or reuse the cached file) and return the store."""
    dataset_dir = Path(dataset_dir)
    rel_paths = list(rel_paths)
    t0 = time.perf_counter()
    key = cache_key(dataset_dir, rel_paths, image_size, resize)
    dtype = _probe_dtype([dataset_dir / p for p in rel_paths])
    shape = (len(rel_paths), *as_hw(image_size))  # [N, H, W]
    if cache == "ram":
        arr = np.empty(shape, dtype=dtype)
        failed = _decode_into(arr, dataset_dir, rel_paths, image_size, resize, workers)
        return ImageStore(arr, rel_paths, None, True, key, time.perf_counter() - t0, False, failed)
    if cache not in ("auto", "disk"):
        raise MammoLabError(f"cache: expected auto, ram or disk, got {cache!r}")
    folder = resolve_cache_dir(dataset_dir, cache_dir)
    from mammolab.io.atomic import ensure_writable_dir

    ensure_writable_dir(folder, option="--cache-dir")
    file = folder / f"{key}.npy"
    failed_file = folder / f"{key}.failed.json"
    reused = file.is_file()
    failed: dict[str, str] = {}
    if reused:
        failed = read_json(failed_file) or {}
    else:
        remove_stale_temps(folder)  # arrays a killed run was filling (their writers are gone)
        tmp = folder / f".{key}.npy.{os.getpid()}.0{TEMP_SUFFIX}"
        try:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            try:
                _reserve(tmp, folder)  # before any page is touched: ENOSPC here, not SIGBUS later
            except BaseException:
                del mm
                raise
            failed = _decode_into(mm, dataset_dir, rel_paths, image_size, resize, workers)
            mm.flush()
            del mm
            write_json(failed_file, failed)  # before the array: a reused array always has its list
            os.replace(tmp, file)
        finally:
            if tmp.exists():
                tmp.unlink()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    in_ram = cache == "auto" and nbytes <= _ram_budget()
    arr = np.load(file, mmap_mode=None if in_ram else "r")
    if arr.shape != shape:
        raise MammoLabError(f"{file}: cached array has shape {arr.shape}, expected {shape}; delete the file")
    return ImageStore(arr, rel_paths, file, in_ram, key, time.perf_counter() - t0, reused, failed)
