"""Every preprocessing step: shapes, dtypes, boxes and masks moved with the image, labels gone, breast kept."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pp_films import Film, bbox, make_film

from mammolab.errors import MammoLabError
from mammolab.preprocess.ops import (  # internals with exactness contracts
    OPS,
    THUMB_SIDE,
    Clahe,
    CropBorder,
    Denoise,
    Orient,
    RemoveAnnotations,
    Resize,
    Sample,
    _crop,
    _keep_inside,
    clahe,
    crop_border,
    denoise,
    find_border,
    flip,
    orient,
    remove_annotations,
    resize,
    rotate,
    sample_thumbnail,
    thumbnail,
)


def sample_of(film: Film, dtype: type = np.uint16) -> Sample:
    img = film.image if dtype == np.uint16 else (film.image >> 8).astype(np.uint8)
    return Sample(img, film.mask, [film.box])


def assert_box_follows_mask(s: Sample, tol: float = 0.0) -> None:
    """The box the op computed must be the box of the mask the op moved."""
    assert s.mask is not None and s.mask.shape == s.image.shape
    assert len(s.boxes) == 1
    np.testing.assert_allclose(s.boxes[0], bbox(s.mask), atol=tol)


# ------------------------------------------------------------------------------------------ sample

def test_sample_rejects_bad_input() -> None:
    with pytest.raises(MammoLabError, match="2-D"):
        Sample(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(MammoLabError, match="uint8 or uint16"):
        Sample(np.zeros((4, 4), np.float32))
    with pytest.raises(MammoLabError, match="mask shape"):
        Sample(np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(MammoLabError, match="boxes"):
        Sample(np.zeros((4, 4), np.uint8), None, [[1, 2, 3]])
    s = Sample(np.zeros((4, 4), np.uint8), np.eye(4, dtype=bool))
    assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) == {0, 255}


# ------------------------------------------------------------------------------------- crop_border

@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_crop_border_fixed_moves_box_and_mask(film: Film, dtype: type) -> None:
    s = sample_of(film, dtype)
    out = crop_border(s, mode="fixed", margin=0.05)
    dy, dx = round(192 * 0.05), round(128 * 0.05)
    assert out.image.shape == (192 - 2 * dy, 128 - 2 * dx) and out.image.dtype == dtype
    np.testing.assert_array_equal(out.image, s.image[dy:-dy, dx:-dx])
    np.testing.assert_allclose(out.boxes[0], np.array(film.box) - [dx, dy, dx, dy])
    assert_box_follows_mask(out)
    assert out.meta["crop"] == [dx, dy, 128 - dx, 192 - dy]
    assert s.image.shape == (192, 128)  # the input sample is untouched


@pytest.mark.parametrize("wall", ["left", "right"])
def test_crop_border_auto_removes_film_edge_keeps_breast(wall: str) -> None:
    f = make_film(3, wall)
    out = CropBorder(mode="auto")(sample_of(f))
    x0, y0, x1, y1 = out.meta["crop"]
    # The saturated strip is gone and nothing of it is left at the new border ...
    assert (out.image == 65535).sum() == 0
    if wall == "left":
        assert x0 >= f.edge_cols[1]
    else:
        assert x1 <= f.edge_cols[0]
    # ... while the breast and the lesion are kept (at most max_fraction per side, never into the breast).
    assert (x1 - x0) >= 0.8 * 128 and (y1 - y0) >= 0.8 * 192
    kept = f.breast[y0:y1, x0:x1].sum() / f.breast.sum()
    assert kept > 0.9
    assert_box_follows_mask(out)
    np.testing.assert_allclose(out.boxes[0], np.array(f.box) - [x0, y0, x0, y0])


def test_find_border_leaves_a_clean_film_alone() -> None:
    f = make_film(4, "left", edge=False, label=False)
    img = f.image.copy()
    noise = np.random.default_rng(0).normal(3000, 800, img.shape).astype(np.uint16)
    img[img == 0] = noise[img == 0]  # film background to the edge: nothing flat, nothing saturated
    assert find_border(img) == (0, 0, 128, 192)


# ------------------------------------------------------------------------------ remove_annotations

@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_remove_annotations_blanks_label_keeps_breast_and_lesion(dtype: type) -> None:
    f = make_film(5, "left", edge=False)
    s = sample_of(f, dtype)
    out = remove_annotations(s)
    assert out.image.shape == s.image.shape and out.image.dtype == dtype
    lx0, ly0, lx1, ly1 = f.label_box
    assert s.image[ly0:ly1, lx0:lx1].max() > 0.8 * np.iinfo(dtype).max  # the label was there
    assert out.image[ly0:ly1, lx0:lx1].max() == 0  # and is gone
    # The breast is kept pixel for pixel, the faint rim near the skin line included.
    same = (out.image == s.image)[f.breast].mean()
    assert same > 0.97
    x0, y0, x1, y1 = (int(v) for v in f.box)
    np.testing.assert_array_equal(out.image[y0:y1, x0:x1], s.image[y0:y1, x0:x1])
    np.testing.assert_array_equal(out.mask, s.mask)
    np.testing.assert_array_equal(out.boxes, s.boxes)


def test_remove_annotations_on_grey_film_base() -> None:
    """A scanned film's base is grey, not black: growing the breast must stop at the background level."""
    f = make_film(11, "right", edge=False, background=5000)
    s = sample_of(f)
    out = remove_annotations(s)
    lx0, ly0, lx1, ly1 = f.label_box
    assert out.image[ly0:ly1, lx0:lx1].max() == 0
    assert (out.image == s.image)[f.breast].mean() > 0.97
    assert (out.image[~f.breast] == 0).mean() > 0.9  # the grey base itself is blanked too


def test_remove_annotations_crop_to_breast_moves_box() -> None:
    f = make_film(6, "right", edge=False)
    out = RemoveAnnotations(crop_to_breast=True, crop_margin=0.0)(sample_of(f))
    bx0, by0, bx1, by1 = out.meta["breast_crop"]
    assert out.image.shape == (by1 - by0, bx1 - bx0)
    ys, xs = np.nonzero(f.breast)
    assert bx0 <= xs.min() and by0 <= ys.min() and bx1 >= xs.max() + 1 and by1 >= ys.max() + 1
    assert out.image.shape[1] < 100  # the empty side is gone
    assert_box_follows_mask(out)


def test_remove_annotations_all_black_is_a_clear_error() -> None:
    with pytest.raises(MammoLabError, match="all black"):
        remove_annotations(np.zeros((64, 48), np.uint16))


def _keep_inside_reference(img: np.ndarray, small: np.ndarray, k: int) -> np.ndarray:
    """The plain definition: upscale the whole thumbnail mask, threshold at half, keep what is inside."""
    h, w = img.shape
    big = cv2.resize(small, (small.shape[1] * k, small.shape[0] * k), interpolation=cv2.INTER_LINEAR)
    big = cv2.copyMakeBorder(big, 0, h - big.shape[0], 0, w - big.shape[1], cv2.BORDER_REPLICATE)
    return np.where(big > 127, img, 0).astype(img.dtype)


@pytest.mark.parametrize("shape", [(1100, 700), (1537, 1025), (530, 1030)])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_keep_inside_equals_the_full_size_definition(shape: tuple[int, int], dtype: type) -> None:
    """Working only on the mask's bounding box (plus a cell) must give exactly the full-size result,
    also for masks touching the thumbnail's edges (where trailing pixels are extended)."""
    rng = np.random.default_rng(shape[0])
    img = rng.integers(1, np.iinfo(dtype).max, size=shape, dtype=dtype)
    thumb, k = thumbnail(img)
    assert k >= 2
    th, tw = thumb.shape
    windows = [(5, 40, 7, 30), (0, th, 0, tw), (th - 9, th, tw - 4, tw), (0, 3, tw // 2, tw // 2 + 1)]
    for y0, y1, x0, x1 in windows:
        small = np.zeros((th, tw), np.uint8)
        small[y0:y1, x0:x1] = 255
        small[(y0 + y1) // 2, (x0 + x1) // 2] = 0  # a hole, so the window is not a plain rectangle
        np.testing.assert_array_equal(_keep_inside(img, small, k), _keep_inside_reference(img, small, k))


def test_crop_carries_the_thumbnail_only_when_it_is_exact() -> None:
    img = np.random.default_rng(0).integers(0, 65535, size=(1500, 1000), dtype=np.uint16)
    s = Sample(img)
    thumb, k = sample_thumbnail(s)
    assert k == 3 and sample_thumbnail(s)[0] is thumb  # computed once
    for x0, y0, x1, y1 in [(3, 6, 1000, 1500), (9, 0, 700, 1497), (0, 0, 1000, 1500)]:  # on the k=3 grid
        cropped = _crop(s, x0, y0, x1, y1)
        assert cropped._thumb is not None
        np.testing.assert_array_equal(cropped._thumb[0], thumbnail(cropped.image)[0])
        assert cropped._thumb[1] == 3
    assert _crop(s, 4, 6, 1000, 1500)._thumb is None  # off the grid
    assert _crop(s, 0, 0, 900, 1020)._thumb is None  # long side 1020: k=2, another grid
    assert s.replace(s.image)._thumb is not None  # same image, same thumbnail
    assert s.replace(s.image.copy())._thumb is None  # a new image drops it
    assert max(thumb.shape) <= THUMB_SIDE


def test_border_then_annotations_same_as_without_the_shared_thumbnail() -> None:
    f = make_film(3, "left", h=1200, w=780)
    s = sample_of(f)
    cropped = CropBorder()(s)
    assert cropped.meta["crop"] != [0, 0, 780, 1200]
    shared = RemoveAnnotations()(cropped)
    fresh = RemoveAnnotations()(Sample(cropped.image.copy(), cropped.mask.copy(), cropped.boxes))
    np.testing.assert_array_equal(shared.image, fresh.image)


# ------------------------------------------------------------------------------------------ orient

def test_orient_flips_right_wall_and_leaves_left_wall() -> None:
    right = sample_of(make_film(7, "right"))
    out = orient(right, chest_wall="left")
    np.testing.assert_array_equal(out.image, right.image[:, ::-1])
    assert out.meta["hflip"] is True
    np.testing.assert_allclose(out.boxes[0], [128 - right.boxes[0][2], right.boxes[0][1],
                                              128 - right.boxes[0][0], right.boxes[0][3]])
    assert_box_follows_mask(out)
    left = sample_of(make_film(8, "left"))
    same = Orient(chest_wall="left")(left)
    np.testing.assert_array_equal(same.image, left.image)
    np.testing.assert_array_equal(same.boxes, left.boxes)
    assert same.meta["hflip"] is False
    assert Orient(chest_wall="right")(left).meta["hflip"] is True


# ----------------------------------------------------------------------------------------- denoise

@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("method,ksize", [("gaussian", 5), ("median", 3), ("median", 7), ("bilateral", 5)])
def test_denoise_keeps_shape_dtype_and_reduces_noise(dtype: type, method: str, ksize: int) -> None:
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    flat = np.clip(rng.normal(0.5 * top, 0.05 * top, (64, 48)), 0, top).astype(dtype)
    out = denoise(flat, method=method, ksize=ksize, sigma_color=0.3)
    assert out.image.shape == flat.shape and out.image.dtype == dtype
    assert out.image.astype(float).std() < 0.8 * flat.astype(float).std()


def test_denoise_rejects_even_window() -> None:
    with pytest.raises(Exception, match="odd"):
        Denoise(ksize=4)


# ------------------------------------------------------------------------------------------- clahe

@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_clahe_keeps_shape_dtype_and_black_background(dtype: type) -> None:
    f = make_film(9, "left", edge=False, label=False)
    s = sample_of(f, dtype)
    out = clahe(s, clip_limit=3.0, tile_grid=4)
    assert out.image.shape == s.image.shape and out.image.dtype == dtype
    assert out.image[~f.breast].max() == 0
    inner = f.breast & (s.image > 0)
    assert out.image[inner].astype(float).std() > s.image[inner].astype(float).std()
    assert Clahe(tile_grid=1)(s).image.shape == s.image.shape


# ------------------------------------------------------------------------------------------ resize

@pytest.mark.parametrize("dtype,bit_depth,expected", [(np.uint16, 8, np.uint8), (np.uint16, None, np.uint16),
                                                      (np.uint8, 16, np.uint16)])
def test_resize_keep_aspect_pads_and_moves_box(film: Film, dtype: type, bit_depth: int | None,
                                               expected: type) -> None:
    s = sample_of(film, dtype)
    out = resize(s, height=96, width=96, keep_aspect=True, bit_depth=bit_depth)
    assert out.image.shape == (96, 96) and out.image.dtype == expected
    # 128x192 -> 64x96 centred: black padding left and right.
    assert out.image[:, :16].max() == 0 and out.image[:, -16:].max() == 0 and out.image[:, 16:80].max() > 0
    np.testing.assert_allclose(out.boxes[0], np.array(film.box) * 0.5 + [16, 0, 16, 0], atol=1e-9)
    assert_box_follows_mask(out, tol=1.0)


@pytest.mark.parametrize("shape,target", [((191, 127), (40, 40)), ((300, 97), (64, 32)), ((50, 40), (100, 90))])
def test_resize_any_ratio_keeps_box_on_mask(shape: tuple[int, int], target: tuple[int, int]) -> None:
    f = make_film(2, "left")
    img = np.ascontiguousarray(f.image[: shape[0], : shape[1]]) if shape[0] <= 192 else \
        np.pad(f.image, ((0, shape[0] - 192), (0, 0)))[:, : shape[1]]
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 3: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 255
    s = Sample(img, mask, [bbox(mask)])
    out = Resize(height=target[0], width=target[1])(s)
    assert out.image.shape == target
    assert_box_follows_mask(out, tol=1.0)


def test_resize_stretch_and_align_start(film: Film) -> None:
    s = sample_of(film)
    out = Resize(height=50, width=100, keep_aspect=False)(s)
    assert out.image.shape == (50, 100)
    np.testing.assert_allclose(out.boxes[0], np.array(film.box) * [100 / 128, 50 / 192, 100 / 128, 50 / 192])
    start = Resize(height=64, width=64, align="start")(s)
    assert start.image[:, 43:].max() == 0 and start.image[:, :43].max() > 0
    assert_box_follows_mask(start, tol=1.0)


# ---------------------------------------------------------------------------------- flips, rotation

def test_flip_twice_is_identity_and_boxes_follow(film: Film) -> None:
    s = sample_of(film)
    for horizontal in (True, False):
        once = flip(s, horizontal)
        assert_box_follows_mask(once)
        back = flip(once, horizontal)
        np.testing.assert_array_equal(back.image, s.image)
        np.testing.assert_allclose(back.boxes, s.boxes)


@pytest.mark.parametrize("angle", [15.0, -15.0, 90.0])
def test_rotate_keeps_canvas_and_box_tracks_mask(film: Film, angle: float) -> None:
    s = sample_of(film)
    out = rotate(s, angle)
    assert out.image.shape == s.image.shape and out.image.dtype == np.uint16
    assert_box_follows_mask(out)
    # The lesion's centre moved as the rotation says.
    cx, cy = (film.box[0] + film.box[2]) / 2, (film.box[1] + film.box[3]) / 2
    t = np.deg2rad(angle)
    ccx, ccy = (128 - 1) / 2, (192 - 1) / 2
    ex = ccx + (cx - 0.5 - ccx) * np.cos(t) + (cy - 0.5 - ccy) * np.sin(t) + 0.5
    ey = ccy - (cx - 0.5 - ccx) * np.sin(t) + (cy - 0.5 - ccy) * np.cos(t) + 0.5
    b = out.boxes[0]
    assert abs((b[0] + b[2]) / 2 - ex) < 1.5 and abs((b[1] + b[3]) / 2 - ey) < 1.5


def test_box_cropped_away_is_dropped() -> None:
    s = Sample(np.ones((100, 100), np.uint8), None, [[0, 0, 3, 3], [40, 40, 60, 60]])
    out = crop_border(s, mode="fixed", margin=0.05)
    assert out.boxes.tolist() == [[35.0, 35.0, 55.0, 55.0]]


def test_registry_lists_every_step() -> None:
    assert list(OPS) == ["crop_border", "remove_annotations", "orient", "resize", "denoise", "clahe"]
    for name, op in OPS.items():
        assert op.name == name and op.__doc__
