"""Offline augmentation: five copies per training image, val/test untouched, masks and boxes follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pp_films import bbox, tree_digest

from mammolab.data import manifest as mf
from mammolab.errors import MammoLabError
from mammolab.io.images import read_image
from mammolab.preprocess.augment import TRANSFORMS, augment


def test_augment_train_only_with_boxes_following_masks(film_dataset: Path, tmp_path: Path) -> None:
    before = tree_digest(film_dataset)
    res = augment(film_dataset, tmp_path / "aug", workers=1)
    assert tree_digest(film_dataset) == before
    df = res.manifest
    src = mf.load_manifest(film_dataset)
    assert (df["split"] == "train").sum() == 5 * (src["split"] == "train").sum()
    for split in ("val", "test"):
        part = df[df["split"] == split]
        assert sorted(part["path"]) == sorted(src.loc[src["split"] == split, "path"])
        assert (part["augment"] == "original").all()
        for rel in part["path"]:
            assert (tmp_path / "aug" / rel).read_bytes() == (film_dataset / rel).read_bytes()
    train = df[df["split"] == "train"]
    assert sorted(set(train["augment"])) == sorted(TRANSFORMS)
    assert train["image_id"].is_unique and train["path"].is_unique
    for _, row in train.iterrows():
        img = read_image(tmp_path / "aug" / row["path"])
        mask = read_image(tmp_path / "aug" / row["mask"])
        assert img.shape == (192, 128) and img.dtype == np.uint16
        np.testing.assert_allclose(mf.parse_boxes(row["boxes"])[0], bbox(mask), atol=0)
        source = read_image(row["source_path"])
        if row["augment"] == "original":
            np.testing.assert_array_equal(img, source)
        elif row["augment"] == "hflip":
            np.testing.assert_array_equal(img, source[:, ::-1])
        elif row["augment"] == "vflip":
            np.testing.assert_array_equal(img, source[::-1])
        else:
            assert not np.array_equal(img, source) and img[mask > 0].min() > 0
    assert "__rot15" in " ".join(train["path"]) and "__rotm15" in " ".join(train["path"])
    assert mf.read_info(tmp_path / "aug")["stage"] == "augment"
    again = augment(film_dataset, tmp_path / "aug", workers=1)
    assert again.reused == len(src) and again.written == 0


def test_augment_options_and_errors(film_dataset: Path, tmp_path: Path) -> None:
    res = augment(film_dataset, tmp_path / "a", workers=1, transforms=["hflip"], splits=["train", "val"])
    assert (res.manifest["augment"] == "hflip").sum() == 4
    with pytest.raises(MammoLabError, match="transforms"):
        augment(film_dataset, tmp_path / "b", workers=1, transforms=["shear"])
    with pytest.raises(MammoLabError, match="angle"):
        augment(film_dataset, tmp_path / "c", workers=1, angle=200)
    with pytest.raises(MammoLabError, match="overlaps the input"):
        augment(film_dataset, film_dataset / "aug", workers=1)
