"""Data side: roles from split/fold, subset by patient, the image cache, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import make_lesion_dataset

from mammolab.data.manifest import load_manifest
from mammolab.errors import MammoLabError
from mammolab.io import read_image
from mammolab.train.config import resolve_train_config
from mammolab.train.datamodule import MammoDataModule, preprocess_array
from mammolab.train.imagecache import build_image_store, resize_image


def _cfg(**kw: object):
    base = {"model": "mammoresnet", "image_size": 32, "batch_size": 8, "epochs": 1}
    return resolve_train_config(overrides={**base, **kw})


def test_roles_from_split_and_from_folds(small_lesions: Path) -> None:
    dm = MammoDataModule(small_lesions, _cfg(), mean=0.5, std=0.25)
    df = load_manifest(small_lesions)
    assert {k: len(v) for k, v in dm.frames.items()} == {s: int((df["split"] == s).sum()) for s in ("train", "val",
                                                                                                   "test")}
    dm1 = MammoDataModule(small_lesions, _cfg(fold=1), mean=0.5, std=0.25)
    train, val, test = dm1.frames["train"], dm1.frames["val"], dm1.frames["test"]
    assert set(val["fold"]) == {1} and 1 not in set(train["fold"])
    assert len(train) + len(val) == int((df["split"] != "test").sum()) and len(test) == len(dm.frames["test"])
    assert not set(train["patient_id"]) & set(val["patient_id"])
    with pytest.raises(MammoLabError, match=r"--fold: .* has folds \[0, 1, 2\], not 5"):
        MammoDataModule(small_lesions, _cfg(fold=5), mean=0.5, std=0.25)


def test_no_val_split_is_one_clear_error_and_fold_fixes_it(tmp_path: Path) -> None:
    ds = make_lesion_dataset(tmp_path / "noval", patients=12, size=32, val=False, folds=2)
    with pytest.raises(MammoLabError, match=r"no validation rows \(split == 'val'\).*--fold K"):
        MammoDataModule(ds, _cfg(), mean=0.5, std=0.25)
    dm = MammoDataModule(ds, _cfg(fold=0), mean=0.5, std=0.25)
    assert len(dm.frames["val"]) > 0


def test_subset_is_patient_grouped_and_balanced(lesions: Path) -> None:
    dm = MammoDataModule(lesions, _cfg(subset=40, seed=3), mean=0.5, std=0.25)
    full = MammoDataModule(lesions, _cfg(), mean=0.5, std=0.25).frames["train"]
    sub = dm.frames["train"]
    assert 20 <= len(sub) <= 60 < len(full)
    per_patient = full.groupby("patient_id").size()
    assert all(per_patient[p] == n for p, n in sub.groupby("patient_id").size().items())  # whole patients
    assert 0.3 <= sub["target"].mean() <= 0.7
    assert len(dm.frames["val"]) == len(MammoDataModule(lesions, _cfg(), mean=0.5, std=0.25).frames["val"])


def test_cache_is_built_once_and_reused(small_lesions: Path, tmp_path: Path) -> None:
    df = load_manifest(small_lesions)
    paths = list(df["path"])
    first = build_image_store(small_lesions, paths, image_size=24, cache="auto", cache_dir=tmp_path)
    assert not first.reused and first.file is not None and first.file.is_file()
    assert first.array.dtype == np.uint16 and first.array.shape == (len(paths), 24, 24)
    again = build_image_store(small_lesions, paths, image_size=24, cache="auto", cache_dir=tmp_path)
    assert again.reused and again.file == first.file and np.array_equal(again.array, first.array)
    disk = build_image_store(small_lesions, paths, image_size=24, cache="disk", cache_dir=tmp_path)
    assert isinstance(disk.array, np.memmap) and disk.reused
    ram = build_image_store(small_lesions, paths, image_size=24, cache="ram", cache_dir=tmp_path)
    assert ram.file is None and np.array_equal(ram.array, first.array)
    other = build_image_store(small_lesions, paths, image_size=20, cache="auto", cache_dir=tmp_path)
    assert not other.reused and other.key != first.key  # another size is another cache
    expected = resize_image(read_image(small_lesions / paths[3]), 24)
    assert np.array_equal(first.array[3], expected)


def test_cache_names_an_unreadable_image(tmp_path: Path) -> None:
    """One unreadable image is named and left out (issue #14), not a reason to stop; none readable is."""
    ds = make_lesion_dataset(tmp_path / "broken", patients=6, size=32)
    paths = list(load_manifest(ds)["path"])
    victim = paths[2]
    (ds / victim).write_bytes(b"garbage")
    for cache in ("ram", "disk"):
        store = build_image_store(ds, paths, image_size=16, cache=cache, cache_dir=tmp_path / "cache")
        assert list(store.failed) == [victim] and Path(victim).name in store.failed[victim]
        assert not store.array[2].any() and store.array[3].any()
    again = build_image_store(ds, paths, image_size=16, cache="disk", cache_dir=tmp_path / "cache")
    assert again.reused and list(again.failed) == [victim]  # the list travels with the cached array
    for p in paths:
        (ds / p).write_bytes(b"garbage")
    with pytest.raises(MammoLabError, match=r"none of the \d+ image\(s\) could be read: \S+"):
        build_image_store(ds, paths, image_size=16, cache="ram")


def test_augmentation_is_seeded_per_epoch_and_row_and_train_only(small_lesions: Path) -> None:
    dm = MammoDataModule(small_lesions, _cfg(seed=5), mean=0.5, std=0.25)
    train = dm.dataset("train", augment=True)
    n = len(train)
    a0, a0_again, a1 = train[0][0], train[0][0], train[n + 0][0]
    assert torch.equal(a0, a0_again)  # same (epoch, row): same augmentation, whatever the process
    assert not torch.equal(a0, a1)  # next epoch: another draw
    plain = dm.dataset("train")[0][0]
    assert not torch.equal(a0, plain)
    val = dm.dataset("val")
    assert torch.equal(val[0][0], val[len(val) + 0][0])  # never augmented
    # val samples are exactly the preprocessing used for new images at inference time
    path = dm.frames["val"]["path"].iloc[0]
    assert torch.equal(val[0][0], preprocess_array(read_image(small_lesions / path), dm.cfg, 0.5, 0.25))
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (8, 1, 32, 32) and batch[0].dtype == torch.float32 and batch[1].dtype == torch.int64


def test_pad_resize_keeps_aspect() -> None:
    img = np.zeros((40, 20), dtype=np.uint8)
    img[:, :] = 200
    out = resize_image(img, 20, "pad")
    assert out.shape == (20, 20) and out.dtype == np.uint8
    assert (out[:, :5] == 0).all() and (out[:, 5:15] == 200).all() and (out[:, 15:] == 0).all()
    with pytest.raises(MammoLabError, match="resize"):
        resize_image(img, 20, "crop")
