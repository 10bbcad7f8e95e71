"""The data side of training: manifest -> train/val/test rows -> cached pixels -> batches.

* Rows come from the manifest's ``split`` column, or with ``fold=k`` from its ``fold`` column
  (fold ``k`` of the official training rows is validation, the other folds train; test stays test).
* ``subset=N`` keeps about N training rows, whole patients at a time, label balance kept.
* Pixels are decoded once into an :class:`~mammolab.train.imagecache.ImageStore`.
* Augmentation (train only) is a pure function of ``(seed, epoch, row)``: each sample is
  augmented under its own seeded RNG, so a run is repeatable whatever ``num_workers`` is, and a
  resumed run sees exactly the augmentations an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mammolab.data.manifest import dataset_classes, load_manifest
from mammolab.errors import MammoLabError
from mammolab.imagesize import ImageSize, as_hw
from mammolab.train.config import AugmentConfig, TrainConfig
from mammolab.train.imagecache import ImageStore, build_image_store, model_input, normalise, to_unit

__all__ = [
    "CachedImageDataset",
    "EpochSampler",
    "MammoDataModule",
    "assign_roles",
    "build_augment",
    "normalise",
    "seed_mix",
    "targets_for",
]


def assign_roles(df: pd.DataFrame, fold: int | None = None, source: str = "manifest.csv") -> pd.Series:
    """The role (train/val/test) of every manifest row for this run."""
    split = df["split"].astype(str)
    if fold is None:
        return split.copy()
    official_train = split.isin(["train", "val"])
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds[official_train].isna().any():
        raise MammoLabError(f"{source}: --fold needs a 'fold' number on every train/val row; "
                            f"{int(folds[official_train].isna().sum())} row(s) have none")
    available = sorted(int(f) for f in folds[official_train].dropna().unique())
    if fold not in available:
        raise MammoLabError(f"--fold: {source} has folds {available}, not {fold}")
    role = split.copy()
    role[official_train] = np.where(folds[official_train] == fold, "val", "train")
    return role


def targets_for(df: pd.DataFrame, classes: tuple[str, ...], source: str = "manifest.csv") -> np.ndarray:
    """Integer target per row: the index of its label in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    labels = df["label"].astype(str)
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise MammoLabError(f"{source}: label(s) {unknown} are not among the dataset classes {list(classes)}")
    return labels.map(index).to_numpy(dtype=np.int64)


def build_augment(cfg: AugmentConfig, size: ImageSize) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision v2 transforms on a ``[1, H, W]`` float tensor in [0, 1], or ``None`` when off.

    ``size`` is the training size (an int or ``(height, width)``): the random resized crop returns
    that shape, from a region whose width/height is within 10% of the target's, so a rectangular
    film is cropped as a rectangle, not squeezed from a square.
    """
    if not cfg.enabled:
        return None
    from torchvision.transforms import v2

    ops: list[Any] = []
    if cfg.crop_scale != (1.0, 1.0):
        if isinstance(size, int):
            ops.append(v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=(0.9, 1.1), antialias=True))
        else:
            h, w = as_hw(size)
            ops.append(v2.RandomResizedCrop((h, w), scale=cfg.crop_scale, ratio=(0.9 * w / h, 1.1 * w / h),
                                            antialias=True))
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotate > 0:
        ops.append(v2.RandomRotation(cfg.rotate))
    if cfg.brightness > 0 or cfg.contrast > 0:
        ops.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    return v2.Compose(ops) if ops else None


def seed_mix(*values: int) -> int:
    """A well-spread 63-bit seed from integers (SplitMix64 steps), stable across processes."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``; Lightning calls ``set_epoch``.

    It yields keys ``epoch * n + i`` rather than ``i``, which tells the dataset (in any worker
    process) which epoch a sample belongs to, so augmentation can be seeded per (epoch, row).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(seed_mix(self.seed, self.epoch, 1))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        base = self.epoch * self.n
        return iter([base + i for i in order])


class CachedImageDataset(Dataset):
    """Rows of an :class:`ImageStore` as normalised ``[1, H, W]`` tensors with integer targets."""

    def __init__(self, store: ImageStore, rows: np.ndarray, targets: np.ndarray, *, mean: float, std: float,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0) -> None:
        self._array: np.ndarray | None = store.array
        self.file = None if store.in_ram else store.file
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.mean, self.std, self.augment, self.seed = mean, std, augment, seed

    def __getstate__(self) -> dict[str, Any]:
        # A memory-mapped store is re-opened in each worker instead of being pickled (copied).
        state = dict(self.__dict__)
        if self.file is not None:
            state["_array"] = None
        return state

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.rows)
        i, epoch = int(key) % n, int(key) // n
        x = torch.from_numpy(to_unit(self.array[self.rows[i]]))[None]
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_mix(self.seed, epoch, int(self.rows[i]), 2))
                x = self.augment(x)
        return normalise(x, self.mean, self.std), torch.tensor(self.targets[i])


class MammoDataModule(L.LightningDataModule):
    """Reads a dataset's manifest and serves train/val/test loaders from the image cache."""

    def __init__(self, dataset_dir: str | Path, config: TrainConfig, *, mean: float, std: float,
                 pin_memory: bool = False) -> None:
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.cfg = config
        self.mean, self.std, self.pin_memory = mean, std, pin_memory
        self.manifest = load_manifest(self.dataset_dir)
        src = str(self.dataset_dir / "manifest.csv")
        self.classes: tuple[str, ...] = dataset_classes(self.dataset_dir, self.manifest)
        roles = assign_roles(self.manifest, config.fold, src)
        frame = self.manifest.assign(role=roles.to_numpy(), target=targets_for(self.manifest, self.classes, src))
        train = frame[frame["role"] == "train"]
        if config.subset:
            from mammolab.data.splits import stratified_group_subset

            train = stratified_group_subset(train, config.subset, seed=config.seed)
        self.frames: dict[str, pd.DataFrame] = {
            "train": train, "val": frame[frame["role"] == "val"], "test": frame[frame["role"] == "test"],
        }
        if len(self.frames["train"]) == 0:
            raise MammoLabError(f"{src}: no training rows (split == 'train'){' in this fold' if config.fold else ''}")
        if len(self.frames["val"]) == 0:
            raise MammoLabError(
                f"{src}: no validation rows (split == 'val'); early stopping and the best checkpoint need them",
                hint="re-run 'mammolab organize' with a validation fraction, or pass --fold K to validate on "
                     "fold K of the training rows")
        self.store: ImageStore | None = None

    @property
    def used_paths(self) -> list[str]:
        return [p for part in ("train", "val", "test") for p in self.frames[part]["path"].astype(str)]

    def class_counts(self, part: str = "train") -> np.ndarray:
        return np.bincount(self.frames[part]["target"].to_numpy(dtype=np.int64), minlength=len(self.classes))

    def _build_store(self) -> ImageStore:
        return build_image_store(self.dataset_dir, self.used_paths, image_size=self.cfg.image_size,
                                 resize=self.cfg.resize, cache=self.cfg.cache, cache_dir=self.cfg.cache_dir)

    def prepare_data(self) -> None:
        # Rank 0 of each node fills the on-disk cache; setup() on every rank then only opens it.
        if self.cfg.cache != "ram" and self.store is None:
            self.store = self._build_store()
            self._drop_failed()

    def setup(self, stage: str | None = None) -> None:
        if self.store is None:
            self.store = self._build_store()
        self._drop_failed()

    @property
    def skipped(self) -> dict[str, str]:
        """Images left out because they could not be read (path -> reason)."""
        return dict(self.store.failed) if self.store is not None else {}

    def _drop_failed(self) -> None:
        """Leave unreadable images out of every split (reported in ``skipped``), so one damaged file
        does not stop a run; a split left without images is still an error."""
        failed = self.skipped
        if not failed or getattr(self, "_dropped", False):
            return
        self._dropped = True
        from mammolab.progress import console

        for part, frame in self.frames.items():
            self.frames[part] = frame[~frame["path"].astype(str).isin(failed)]
        for msg in failed.values():
            console.print(f"[yellow]skipped[/] (unreadable): {msg}", highlight=False, soft_wrap=True)
        src = self.dataset_dir / "manifest.csv"
        for part in ("train", "val"):
            if len(self.frames[part]) == 0:
                raise MammoLabError(f"{src}: no readable {part} image left ({len(failed)} unreadable, first: "
                                    f"{next(iter(failed.values()))})")

    def dataset(self, part: str, augment: bool = False) -> CachedImageDataset:
        if self.store is None:
            self.setup()
        assert self.store is not None
        index = self.store.index()
        frame = self.frames[part]
        rows = np.array([index[p] for p in frame["path"].astype(str)], dtype=np.int64)
        aug = build_augment(self.cfg.augment, self.cfg.image_size) if augment else None
        return CachedImageDataset(self.store, rows, frame["target"].to_numpy(), mean=self.mean, std=self.std,
                                  augment=aug, seed=self.cfg.seed)

    def _loader(self, ds: CachedImageDataset, sampler: Sampler[int], drop_last: bool = False) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(ds, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=self.pin_memory, persistent_workers=workers > 0, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train", augment=True)
        # A last batch of one image breaks batch norm in train mode; drop it (one image per epoch at most).
        # Under DDP each rank sees ceil(n / world) images, so the remainder is per rank.
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank = -(-len(ds) // world)
        return self._loader(ds, EpochSampler(len(ds), self.cfg.seed), drop_last=per_rank % self.cfg.batch_size == 1)

    def val_dataloader(self) -> DataLoader:
        ds = self.dataset("val")
        return self._loader(ds, EpochSampler(len(ds), self.cfg.seed, shuffle=False))

    def test_dataloader(self) -> DataLoader:
        ds = self.dataset("test")
        return self._loader(ds, EpochSampler(len(ds), self.cfg.seed, shuffle=False))


def preprocess_array(image: np.ndarray, config: TrainConfig, mean: float, std: float) -> torch.Tensor:
    """One raw image -> the ``[1, H, W]`` float tensor a model saw for val/test (:func:`model_input`, as a tensor)."""
    return torch.from_numpy(model_input(image, config.image_size, config.resize, mean, std))
