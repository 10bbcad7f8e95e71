"""Tiny generated films for the preprocessing tests (no dependency on the synth or organize stages).

A film is 16-bit: black background, a bright film-edge strip on the chest-wall side, a half-ellipse
breast with texture anchored on the chest wall, a lesion blob with its mask, and a burnt-in "R MLO"
label in a corner away from the breast. Everything the tests need to check is returned with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mammolab.data import manifest as mf
from mammolab.io.images import write_png

H, W = 192, 128


@dataclass
class Film:
    image: np.ndarray          # uint16 (H, W)
    mask: np.ndarray           # uint8 0/255 lesion mask
    box: list[float]           # lesion box x0, y0, x1, y1 (exclusive)
    breast: np.ndarray         # bool, the breast region
    label_box: tuple[int, int, int, int]  # where the burnt-in label is
    edge_cols: tuple[int, int]  # film-edge strip columns [c0, c1)
    chest_wall: str


def bbox(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def make_film(seed: int = 0, chest_wall: str = "left", h: int = H, w: int = W, edge: bool = True,
              label: bool = True, background: float = 0.0) -> Film:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wall_x = 0.0 if chest_wall == "left" else w - 1.0
    a, b = 0.62 * w, 0.40 * h
    r2 = ((xx - wall_x) / a) ** 2 + ((yy - h / 2) / b) ** 2
    breast = r2 < 1.0
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
    # Dense near the chest wall, fading towards the skin line (a faint rim, like fatty tissue).
    tissue = 9000 + 24000 * (1 - r2) + 2500 * tex
    img = np.where(breast, tissue, background + (rng.normal(0, 0.1 * background, (h, w)) if background else 0.0))
    # Lesion: a bright blob inside the breast.
    cx = (0.3 * w) if chest_wall == "left" else (0.7 * w)
    cy = 0.55 * h + rng.integers(-6, 7)
    mask = (((xx - cx) / 7.0) ** 2 + ((yy - cy) / 9.0) ** 2 < 1.0).astype(np.uint8) * 255
    img = np.where(mask > 0, img + 12000, img)
    img = img + rng.normal(0, 250, (h, w)) * breast
    # Burnt-in label in the top corner away from the chest wall.
    lx = w - 58 if chest_wall == "left" else 4
    canvas = np.zeros((h, w), np.uint8)
    if label:
        cv2.putText(canvas, "R MLO", (lx, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 2, cv2.LINE_AA)
    label_mask = canvas > 0
    img = np.where(label_mask, 60000.0, img)
    ys, xs = np.nonzero(label_mask) if label else (np.array([0]), np.array([0]))
    label_box = (int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1))
    edge_cols = (0, 0)
    if edge:  # a saturated film edge on the chest-wall side
        edge_cols = (0, 4) if chest_wall == "left" else (w - 4, w)
        img[:, edge_cols[0]:edge_cols[1]] = 65535
    image = np.clip(img, 0, 65535).astype(np.uint16)
    return Film(image, mask, bbox(mask), breast, label_box, edge_cols, chest_wall)


def write_dataset(root: Path, films: list[tuple[str, str, Film]], *, kind: str = "full") -> Path:
    """Write films as an organized dataset folder: images, masks, manifest.csv, mammolab.json."""
    rows = []
    for i, (split, label, film) in enumerate(films):
        image_id = f"P_{i:03d}_{film.chest_wall}"
        rel = f"{split}/{label}/{image_id}.png"
        mrel = f"masks/{rel}"
        write_png(root / rel, film.image)
        write_png(root / mrel, film.mask)
        rows.append({"path": rel, "split": split, "fold": 0 if split == "train" else None, "label": label,
                     "patient_id": f"P_{i:03d}", "side": "LEFT" if film.chest_wall == "right" else "RIGHT",
                     "view": "MLO", "abnormality": "mass", "pathology": label.upper(), "source": "test",
                     "mask": mrel, **dict(zip(mf.BBOX_COLUMNS, film.box, strict=True)),
                     "width": film.image.shape[1], "height": film.image.shape[0], "image_id": image_id,
                     "n_abnormalities": 1, "conflict": False, "boxes": mf.format_boxes([film.box]),
                     "target": mf.BINARY_CLASSES.index(label)})
    mf.write_manifest(pd.DataFrame(rows), root)
    mf.write_info(root, {"stage": "organize", "config": {"kind": kind}, "config_hash": "test",
                         "classes": list(mf.BINARY_CLASSES), "labels": "binary"})
    return root


def tree_digest(root: Path) -> str:
    """A hash of every file's path and bytes, to prove a folder was not modified."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
