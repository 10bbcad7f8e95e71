"""Two-view breast-level training: pair a breast's CC and MLO images, serve them together, predict per breast.

CBIS-DDSM (and every screening set) films each breast twice, craniocaudal (CC) and mediolateral
oblique (MLO); a radiologist reads both, and whole-image models that fuse the two (Petrini and Kim
2025: +0.022 AUC on CBIS-DDSM) beat single-view ones. The unit is then the *breast*
(``patient_id`` + ``side``), not the image:

* :func:`pair_views` turns a manifest frame (one row per image, possibly several rows per view when
  a breast has several lesions, as with ``--kind roi``/``crop``) into one row per breast: the
  breast's label is its most severe image label (malignant over benign; then the most frequent;
  then class order), and per view the image whose label is the breast's is used (the first by path).
  A breast with one view is kept: its missing view is filled with the present one and flagged, so
  concat fusion sees the same features twice and attention pooling gives it no weight.
* :class:`TwoViewDataset` yields ``([2, 1, H, W], target, present[2])`` from the image cache, each
  view augmented under its own seed.
* :class:`TwoViewDataModule` is :class:`~mammolab.train.datamodule.MammoDataModule` with breasts.
* :func:`mammolab.infer.tables.predict_breasts` predicts a split of a two-view run through the one
  Predictor: one row per breast with ``patient_id`` and ``side``, so metrics and the patient
  bootstrap work unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mammolab.errors import MammoLabError
from mammolab.recipe import VIEWS
from mammolab.train.config import TrainConfig
from mammolab.train.datamodule import CachedImageDataset, MammoDataModule, normalise, seed_mix
from mammolab.train.imagecache import ImageStore, to_unit

__all__ = ["VIEWS", "TwoViewDataModule", "TwoViewDataset", "breast_target", "pair_views"]

#: Manifest columns carried into the breast table (first used image's value).
_CARRY = ("density", "subtlety", "assessment")


def breast_target(targets: Sequence[int], classes: Sequence[str]) -> int:
    """The breast's class from its images' classes: malignant first, then the most frequent, then class order."""
    counts = Counter(int(t) for t in targets)
    return min(counts, key=lambda t: (not str(classes[t]).startswith("malignant"), -counts[t], t))


def _norm_view(v: Any) -> str:
    return str(v).strip().upper()


def pair_views(frame: pd.DataFrame, classes: Sequence[str],
               source: str = "manifest.csv") -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per breast (``patient_id``, ``side``) of a frame with ``path``, ``view``, ``target``.

    Returns the breast table (``breast_id, patient_id, side, label, target, cc_path, mlo_path,
    views, n_images`` plus ``abnormality`` and the first image's density/subtlety/assessment) and
    counts: breasts, both views, CC only, MLO only, images not used (further lesions' images of a
    view) and images of other views (neither CC nor MLO).
    """
    for col in ("patient_id", "side", "view", "path", "target"):
        if col not in frame.columns:
            raise MammoLabError(f"{source}: --views cc+mlo needs a '{col}' column")
    counts = {"breasts": 0, "both_views": 0, "cc_only": 0, "mlo_only": 0, "images_unused": 0, "other_views": 0}
    rows: list[dict[str, Any]] = []
    df = frame.assign(_view=frame["view"].map(_norm_view), _side=frame["side"].astype(str).str.strip().str.upper())
    if df["_side"].isin(["", "NAN", "NONE"]).any():
        raise MammoLabError(f"{source}: --views cc+mlo needs a side (LEFT/RIGHT) on every row; "
                            f"{int(df['_side'].isin(['', 'NAN', 'NONE']).sum())} row(s) have none")
    counts["other_views"] = int((~df["_view"].isin(VIEWS)).sum())
    df = df[df["_view"].isin(VIEWS)]
    for (pid, side), grp in df.groupby([df["patient_id"].astype(str), "_side"], sort=True):
        target = breast_target(grp["target"].tolist(), classes)
        picked: dict[str, pd.Series | None] = {}
        for view in VIEWS:
            cand = grp[grp["_view"] == view]
            if len(cand) == 0:
                picked[view] = None
                continue
            same = cand[cand["target"] == target]
            picked[view] = (same if len(same) else cand).sort_values("path").iloc[0]
        used = [r for r in picked.values() if r is not None]
        counts["breasts"] += 1
        counts["images_unused"] += len(grp) - len(used)
        present = "+".join(v.lower() for v in VIEWS if picked[v] is not None)
        counts["both_views" if len(used) == 2 else f"{present}_only"] += 1
        first = used[0]
        row: dict[str, Any] = {
            "breast_id": f"{pid}_{side}", "patient_id": pid, "side": side, "label": classes[target],
            "target": target,
            "cc_path": str(picked["CC"]["path"]) if picked["CC"] is not None else "",
            "mlo_path": str(picked["MLO"]["path"]) if picked["MLO"] is not None else "",
            "views": present, "n_images": len(grp),
        }
        if "abnormality" in grp:
            row["abnormality"] = "+".join(sorted(set(grp["abnormality"].dropna().astype(str))))
        for col in _CARRY:
            if col in grp:
                row[col] = first[col]
        rows.append(row)
    cols = ["breast_id", "patient_id", "side", "label", "target", "cc_path", "mlo_path", "views", "n_images"]
    return pd.DataFrame(rows, columns=cols + [c for c in (rows[0] if rows else {}) if c not in cols]), counts


class TwoViewDataset(Dataset):
    """Breasts as ``([2, 1, H, W] normalised CC and MLO, target, present [2] bool)`` from an image cache."""

    def __init__(self, store: ImageStore, cc_rows: np.ndarray, mlo_rows: np.ndarray, targets: np.ndarray, *,
                 mean: float, std: float, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 seed: int = 0) -> None:
        # One image dataset does the reading and per-image seeded augmentation; -1 marks a missing view.
        self.cc = np.asarray(cc_rows, dtype=np.int64)
        self.mlo = np.asarray(mlo_rows, dtype=np.int64)
        if ((self.cc < 0) & (self.mlo < 0)).any():
            raise ValueError("a breast needs at least one view")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.images = CachedImageDataset(store, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                                         mean=mean, std=std, augment=augment, seed=seed)

    def __len__(self) -> int:
        return len(self.targets)

    def _image(self, row: int, epoch: int) -> torch.Tensor:
        im = self.images
        x = torch.from_numpy(to_unit(im.array[row]))[None]
        if im.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_mix(im.seed, epoch, row, 2))
                x = im.augment(x)
        return normalise(x, im.mean, im.std)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self.targets)
        i, epoch = int(key) % n, int(key) // n
        rows = (int(self.cc[i]), int(self.mlo[i]))
        present = torch.tensor([r >= 0 for r in rows])
        imgs = [self._image(r, epoch) if r >= 0 else None for r in rows]
        fill = imgs[0] if imgs[0] is not None else imgs[1]
        x = torch.stack([im if im is not None else fill for im in imgs])
        return x, torch.tensor(self.targets[i]), present


class TwoViewDataModule(MammoDataModule):
    """The data module of ``--views cc+mlo``: the same splits and cache, one item per breast."""

    def __init__(self, dataset_dir: str | Path, config: TrainConfig, *, mean: float, std: float,
                 pin_memory: bool = False) -> None:
        super().__init__(dataset_dir, config, mean=mean, std=std, pin_memory=pin_memory)
        src = str(self.dataset_dir / "manifest.csv")
        self.breasts: dict[str, pd.DataFrame] = {}
        self.pairing: dict[str, dict[str, int]] = {}
        for part, frame in self.frames.items():
            self.breasts[part], self.pairing[part] = pair_views(frame, self.classes, src)
        for part in ("train", "val"):
            if len(self.breasts[part]) == 0:
                raise MammoLabError(f"{src}: no {part} breast has a CC or MLO image (view column); "
                                    "--views cc+mlo needs them")

    @property
    def used_paths(self) -> list[str]:
        paths = [p for part in ("train", "val", "test") for col in ("cc_path", "mlo_path")
                 for p in self.breasts[part][col].astype(str) if p]
        return list(dict.fromkeys(paths))

    def class_counts(self, part: str = "train") -> np.ndarray:
        return np.bincount(self.breasts[part]["target"].to_numpy(dtype=np.int64), minlength=len(self.classes))

    def dataset(self, part: str, augment: bool = False) -> TwoViewDataset:  # type: ignore[override]
        from mammolab.train.datamodule import build_augment

        if self.store is None:
            self.setup()
        assert self.store is not None
        index = self.store.index()
        b = self.breasts[part]

        def rows(col: str) -> np.ndarray:
            return np.array([index[p] if p else -1 for p in b[col].astype(str)], dtype=np.int64)

        aug = build_augment(self.cfg.augment, self.cfg.image_size) if augment else None
        return TwoViewDataset(self.store, rows("cc_path"), rows("mlo_path"), b["target"].to_numpy(),
                              mean=self.mean, std=self.std, augment=aug, seed=self.cfg.seed)
