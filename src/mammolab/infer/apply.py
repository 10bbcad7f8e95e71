"""The recipe's application: a source image in, the model's input out, as training saw it.

:func:`apply_recipe` walks a :class:`~mammolab.recipe.Recipe` (the record, :mod:`mammolab.recipe`):
organize's conversion (bit depth; the ROI patch around ``--box``), the dataset's preprocessing steps
(the same ops ``mammolab preprocess`` ran) and the training transform
(:func:`mammolab.train.imagecache.model_input`, the function training's data module calls too).
numpy and OpenCV only: an exported ONNX model runs through it without torch.

Stages an image can enter at (``start``): ``source`` (a file as the user has it; organized PNGs are
``source`` too, the bit-depth conversion leaves them unchanged) and ``preprocessed`` (already through
the recipe's preprocessing, as the run's own dataset images are: only the transform is applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from mammolab.config import config_hash
from mammolab.data.patches import as_depth as organize_depth
from mammolab.data.patches import roi_patch
from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw
from mammolab.preprocess.ops import OPS, Sample
from mammolab.preprocess.pipeline import Pipeline
from mammolab.recipe import Recipe
from mammolab.train.imagecache import model_input

__all__ = ["Prepared", "apply_recipe", "as_depth", "cut_roi", "input_warnings", "preprocess_image", "to_model_input"]


@dataclass
class Prepared:
    """One image through the recipe: the model input, the preprocessed image (for heatmaps), warnings."""

    tensor: np.ndarray  # float32 [1, H, W]: numpy, so an exported model needs no torch
    image: np.ndarray
    warnings: list[str] = field(default_factory=list)




def as_depth(img: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """Organize's bit-depth conversion (``None`` keeps the file's depth)."""
    return img if bit_depth is None else organize_depth(img, bit_depth)


def cut_roi(recipe: Recipe, img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The ROI patch organize cut around ``box`` (same function, so the same pixels)."""
    h, w = img.shape
    x0, y0, x1, y1 = box
    if x1 > w or y1 > h:
        raise MammoLabError(f"--box: {x0},{y0},{x1},{y1} lies outside the {w}x{h} image")
    # organize's patch size; a recipe without it cuts a square patch of the model's longer side
    size = recipe.source.roi_size or max(as_hw(recipe.transform.image_size))
    margin = 0.5 if recipe.source.roi_margin is None else recipe.source.roi_margin
    patch, _, _ = roi_patch(img, np.zeros(img.shape, dtype=bool), tuple(float(v) for v in box), size, margin,
                             recipe.source.roi_film_height)
    return np.ascontiguousarray(patch)


def input_warnings(recipe: Recipe, shape: tuple[int, int], *, box: bool = False) -> list[str]:
    """Why an input looks outside the recipe (judged by size and aspect against training's images)."""
    h, w = int(shape[0]), int(shape[1])
    kind = recipe.source.kind
    out: list[str] = []
    sizes = recipe.source.sizes
    patch_model = kind in ("crop", "roi")
    if sizes is not None and not box:
        long_side, aspect = max(h, w), w / h
        too_big = long_side > 2 * max(sizes.width_max, sizes.height_max)
        too_small = long_side < 0.5 * max(sizes.width_min, sizes.height_min)
        odd_aspect = not (sizes.aspect_min / 1.5 <= aspect <= sizes.aspect_max * 1.5)
        if too_big or too_small or odd_aspect:
            what = {"crop": "CBIS lesion crops", "roi": "ROI patches", "full": "whole films"}.get(kind, "images")
            guess = ""
            if patch_model and too_big:
                guess = ("; is this a whole film given to a patch model? "
                         + ("pass --box x0,y0,x1,y1 to cut the patch" if kind == "roi" else "crop the lesion first"))
            elif kind == "full" and too_small:
                guess = "; is this a patch given to a whole-film model?"
            out.append(f"input {w}x{h} is outside the recipe: the model was trained on {what} of "
                       f"{sizes.width_min}-{sizes.width_max} x {sizes.height_min}-{sizes.height_max} px (width/height "
                       f"{sizes.aspect_min:.2f}-{sizes.aspect_max:.2f}){guess}")
    elif kind == "roi" and not box and (h != w):
        out.append(f"input {w}x{h} is not square: the model was trained on square ROI patches; pass --box "
                   "x0,y0,x1,y1 to cut one from a whole film")
    if not recipe.complete:
        out.append("the run's recipe is incomplete (" + "; ".join(recipe.notes) + ")")
    return out


_PIPELINES: dict[str, Any] = {}


def preprocess_image(recipe: Recipe, img: np.ndarray) -> np.ndarray:
    """The recipe's preprocessing steps, in order (the same ops ``mammolab preprocess`` ran)."""
    steps = recipe.steps()
    if not steps:
        return img
    key = config_hash(steps)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline([OPS[n].model_validate(p) for s in steps for n, p in s.items()])
    if img.size == 0 or not cv2.hasNonZero(img):
        raise MammoLabError("image is all black (nothing to predict)")
    return _PIPELINES[key](Sample(img)).image


def to_model_input(recipe: Recipe, img: np.ndarray) -> np.ndarray:
    """The training transform (resize, scale by the dtype's range, normalise) -> ``[1, H, W]`` float32:
    :func:`mammolab.train.imagecache.model_input`, the function training's data module calls too."""
    t = recipe.transform
    return model_input(img, t.image_size, t.resize, t.mean, t.std)


def apply_recipe(recipe: Recipe, image: np.ndarray, *, start: Literal["source", "preprocessed"] = "source",
                 box: tuple[int, int, int, int] | None = None) -> Prepared:
    """One image (as :func:`mammolab.io.read_image` returns it) -> the model's input, with warnings.

    ``start="source"``: organize's conversion (bit depth; the ROI cut with ``box``), the preprocessing
    steps, the transform. ``start="preprocessed"``: the transform only (images of the run's dataset).
    """
    if image.ndim != 2:
        raise MammoLabError(f"expected a 2-D grayscale image, got shape {image.shape}")
    warnings: list[str] = []
    if start == "source":
        if box is not None and recipe.source.kind not in ("roi",):
            raise MammoLabError(f"--box: the model was trained on {recipe.source.kind} images, not ROI patches; "
                                "--box applies to ROI-patch models only")
        warnings = input_warnings(recipe, image.shape, box=box is not None)
        # organize cuts the patch from the film as read, then sets the bit depth: the same order here
        img = cut_roi(recipe, image, box) if box is not None else image
        img = as_depth(img, recipe.source.bit_depth)
        img = preprocess_image(recipe, img)
    elif start == "preprocessed":
        img = image
    else:
        raise MammoLabError(f"start: expected 'source' or 'preprocessed', got {start!r}")
    return Prepared(to_model_input(recipe, img), img, warnings)
