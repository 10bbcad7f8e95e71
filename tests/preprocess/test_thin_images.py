"""Thin and tiny images (issue #23): every step gives a valid output or refuses with one line.

A grey PNG of 128x1, 1x128, 60000x1 or 2000x20 pixels used to end in a ZeroDivisionError inside the
resize (its integer pre-reduction removed the only row) and in OpenCV assertions inside the breast
segmentation (a thumbnail that claimed more rows than the image had). Shapes are (height, width);
messages say width x height, as image tools do.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from mammolab.errors import MammoLabError
from mammolab.preprocess.ops import MIN_SIDE, OPS, Resize, Sample, thumbnail
from mammolab.preprocess.pipeline import Pipeline, load_preprocess_config

# (height, width): 128x1, 1x128, 60000x1 and 2000x20 as the issue names them (width x height), both ways.
THIN = [(1, 128), (128, 1), (1, 60000), (60000, 1), (20, 2000), (2000, 20), (1, 1), (3, 500)]
TOO_THIN = [s for s in THIN if min(s) < MIN_SIDE]


def grey(h: int, w: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 0.6 * top + 0.2 * top).astype(dtype)


@pytest.mark.parametrize("shape", THIN)
@pytest.mark.parametrize("params", [{}, {"height": 64, "width": 64}, {"height": 8, "width": 8},
                                    {"height": 64, "width": 32, "keep_aspect": False},
                                    {"height": 96, "width": 64, "align": "start", "bit_depth": 16}])
def test_resize_gives_the_asked_size_for_any_shape(shape: tuple[int, int], params: dict) -> None:
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    mask[: max(1, h // 2), : max(1, w // 2)] = 255
    s = Sample(grey(h, w), mask, [[0, 0, w, h]])
    op = Resize(**params)
    out = op(s)
    assert out.image.shape == (op.height, op.width)
    assert out.mask is not None and out.mask.shape == (op.height, op.width)
    # The line is still there (at least one pixel across), not lost to the pre-reduction.
    assert (out.image > 0).any() and (out.mask > 0).any()
    assert len(out.boxes) == 1
    x0, y0, x1, y1 = out.boxes[0]
    assert 0 <= x0 < x1 <= op.width and 0 <= y0 < y1 <= op.height


@pytest.mark.parametrize("shape", THIN)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_step_gives_an_image_or_one_line(shape: tuple[int, int], dtype: type) -> None:
    h, w = shape
    for name, op_cls in OPS.items():
        variants = [{}]
        if name == "denoise":
            variants = [{"method": m} for m in ("gaussian", "median", "bilateral")]
        elif name == "crop_border":
            variants = [{}, {"mode": "fixed"}]
        for params in variants:
            s = Sample(grey(h, w, dtype), None, [[0, 0, w, h]])
            try:
                out = op_cls(**params)(s)
            except MammoLabError as exc:
                msg = str(exc)
                assert "\n" not in msg
                assert min(shape) < MIN_SIDE or "no breast" in msg, (name, params, msg)
                if min(shape) < MIN_SIDE:
                    assert msg == (f"image is {w}x{h} pixels (width x height); {msg.split('; ')[1]}")
                    assert f"expects at least {MIN_SIDE} pixels on each side" in msg and name in msg
                continue
            assert out.image.ndim == 2 and min(out.image.shape) >= 1, (name, params)
            assert out.image.dtype == dtype


@pytest.mark.parametrize("shape", TOO_THIN)
def test_full_pipeline_refuses_a_line_with_one_message(shape: tuple[int, int]) -> None:
    """What ``predict`` and ``serve`` run for a whole-film model (the recipe's steps through Pipeline)."""
    h, w = shape
    pipe = Pipeline.from_config(load_preprocess_config("full", size=(64, 48)))
    t0 = time.perf_counter()
    with pytest.raises(MammoLabError) as err:
        pipe(Sample(grey(h, w)))
    assert time.perf_counter() - t0 < 1.0
    assert str(err.value) == (f"step crop_border: image is {w}x{h} pixels (width x height); crop_border "
                              f"(mode: auto) expects at least {MIN_SIDE} pixels on each side")


@pytest.mark.parametrize("shape", [(20, 2000), (2000, 20), (20, 60000)])
def test_full_pipeline_processes_thin_but_not_degenerate_images(shape: tuple[int, int]) -> None:
    """A strip with a bright 'breast' in it is a (strange) image, not an error: 64x48 out."""
    h, w = shape
    img = np.full((h, w), 10, np.uint8)
    img[h // 4: 3 * h // 4 + 1, w // 4: 3 * w // 4 + 1] = 180
    trace = dict(Pipeline.from_config(load_preprocess_config("full", size=(64, 48))).trace(Sample(img)))
    assert trace["clahe"].image.shape == (64, 48) and trace["clahe"].image.dtype == np.uint8
    # The bright part is kept by the segmentation and is still there after the resize (the median
    # filter after it may erase a line one pixel high, as it erases any speck that size).
    assert trace["remove_annotations"].image.max() == 180 and (trace["resize"].image > 0).any()


@pytest.mark.parametrize("shape", [(20, 60000), (1, 60000), (7, 5000)])
def test_thumbnail_never_claims_more_rows_than_the_image_has(shape: tuple[int, int]) -> None:
    h, w = shape
    t, k = thumbnail(grey(h, w))
    assert k <= min(h, w)
    assert t.shape[0] * k <= h and t.shape[1] * k <= w and min(t.shape) >= 1


def test_patch_pipeline_gives_a_valid_image_for_a_line() -> None:
    """The patch preset (resize, denoise, clahe) has no segmentation: a line comes out as a padded image."""
    pipe = Pipeline.from_config(load_preprocess_config("patch", size=(32, 32)))
    for h, w in [(1, 128), (128, 1), (1, 60000), (20, 2000)]:
        trace = dict(pipe.trace(Sample(grey(h, w))))
        assert trace["clahe"].image.shape == (32, 32) and (trace["resize"].image > 0).any()
