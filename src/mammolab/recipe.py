"""The recipe: everything between a source file and a model's input, recorded in the run folder.

A model is only as portable as the path its inputs took. Training saw images that organize
converted (DICOM VOI/MONOCHROME handling, bit depth, whole film / CBIS crop / ROI patch), that
``mammolab preprocess`` changed (border crop, label removal, denoising, CLAHE...) and that the
training transform resized, scaled and normalised. A prediction on a raw file must take the same
path, or it answers a different question (the issue that started this module: 0.325 on an organized
image against 0.997 on its preprocessed copy, for the same lesion).

``RUN/recipe.json`` records that path as data (:class:`Recipe`, versioned), taken at training time
from the dataset chain (each dataset's ``mammolab.json`` names its stage, its resolved config and
its source dataset). This module is the recipe's *record* (types, build, load, validate, write),
low in the layers so training imports it downward; its *application*,
:func:`mammolab.infer.apply.apply_recipe`, is the one function that walks it, used by ``predict``,
``serve``, ``evaluate`` (on the run's own dataset or another) and the exported models, so a source
DICOM, its organized PNG and the image evaluation read all end up as the same model input.

Stages an image can enter at (``start``):

* ``source``: a file as the user has it (DICOM, PNG, ...). The conversion is organize's: the pixels
  as :func:`mammolab.io.read_image` gives them, brought to the recipe's bit depth; for an ROI-patch
  recipe with a ``box``, the patch is cut around the box as organize cut it. Organized PNGs are
  ``source`` too: the bit-depth conversion leaves them unchanged, so both give the same tensor.
* ``preprocessed``: already through the recipe's preprocessing (the run's own dataset images): only
  the training transform is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from mammolab.config import StrictModel, config_hash, format_validation_error
from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw, parse_image_size
from mammolab.io.atomic import read_json, write_json

__all__ = [
    "RECIPE_NAME",
    "RECIPE_VERSION",
    "PreprocessStage",
    "Recipe",
    "SizeRange",
    "SourceSpec",
    "TransformSpec",
    "VIEWS",
    "build_recipe",
    "dataset_chain",
    "load_recipe",
    "parse_box",
    "write_recipe",
]

RECIPE_NAME = "recipe.json"
#: The two views of a breast, in the order a two-view (``cc+mlo``) model sees them.
VIEWS = ("CC", "MLO")
RECIPE_VERSION = 1
#: Smallest and largest model input side a recipe may ask for: below 8 px no network of the registry
#: has a feature map left; above 16384 px one image alone is a multi-GiB allocation (a recipe.json
#: edited to 100000 asked for 37 GiB before anything was checked).
MIN_SIDE, MAX_SIDE = 8, 16384
#: Keys a recipe.json must hold: a file without ``preprocess`` would silently skip the dataset's
#: preprocessing (the model then sees images unlike its training images and nobody is told).
REQUIRED_KEYS = ("name", "model", "classes", "num_outputs", "source", "preprocess", "transform")
#: What :func:`mammolab.io.read_dicom_pixels` does to a DICOM, for people reading the recipe file.
DICOM_CONVERSION = ("Modality LUT, then VOI LUT or window, then MONOCHROME1 inverted, then the displayed range "
                    "stretched linearly to 16 bit (mammolab.io.read_dicom_pixels)")
#: Stages whose images are their source dataset's images for inference (augment only adds training copies).
_PASS_THROUGH = {"augment"}


class SizeRange(StrictModel):
    """The sizes of the images training saw at the organized stage (before preprocessing)."""

    n: int
    width_min: int
    width_max: int
    height_min: int
    height_max: int
    aspect_min: float = Field(description="width / height, smallest")
    aspect_max: float = Field(description="width / height, largest")


class SourceSpec(StrictModel):
    """How organize turned a source file into a dataset image."""

    stage: str = Field(description="the first dataset's stage: organize, a test fixture, or unknown")
    kind: Literal["full", "crop", "roi", "image", "unknown"] = Field(
        description="full: whole film; crop: CBIS cropped lesion; roi: square patch around a lesion box; "
        "image: files imported as they were (organize --manifest); unknown: the dataset did not say")
    bit_depth: Literal[8, 16] | None = Field(None, description="8 or 16; None keeps the depth the file has")
    roi_size: int | None = None
    roi_margin: float | None = None
    roi_film_height: int | None = Field(None, description="roi: patches cut at the scale of the film resized to "
                                        "this height (organize --roi-film-height); None: the box plus roi_margin")
    dicom: str = DICOM_CONVERSION
    config_hash: str | None = None
    sizes: SizeRange | None = None


class PreprocessStage(StrictModel):
    """One ``mammolab preprocess`` pass: its steps with every parameter resolved, in order."""

    config_hash: str | None = None
    steps: list[dict[str, dict[str, Any]]]

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
        """Each step must be one of ``mammolab preprocess``'s ops with parameters its model accepts, checked
        when the recipe is read: an unknown step or a CLAHE grid of 0 is refused before anything is served,
        not discovered as a 500 on every request."""
        from mammolab.preprocess.ops import OPS

        for i, step in enumerate(steps):
            if len(step) != 1:
                raise ValueError(f"step {i}: expected one op name with its parameters, got {sorted(step)}")
            (name, params), = step.items()
            if name not in OPS:
                raise ValueError(f"step {i}: unknown step {name!r} (expected one of {', '.join(sorted(OPS))})")
            try:
                OPS[name].model_validate(params)
            except ValidationError as exc:
                raise ValueError(f"step {i} ({name}): " + format_validation_error(exc, name).removeprefix(
                    f"{name}: ")) from None
        return steps


class TransformSpec(StrictModel):
    """The training transform of val/test images: resize, scale by the dtype's range, normalise.

    ``image_size`` is an int for a square (as in every recipe before rectangles) or ``[height, width]``.
    """

    image_size: int | tuple[int, int]
    resize: Literal["stretch", "pad"]
    scale: Literal["dtype_range"] = "dtype_range"
    mean: float
    std: float
    channels: int = 1

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int | tuple[int, int]:
        try:
            return parse_image_size(v)
        except MammoLabError as exc:
            raise ValueError(str(exc).removeprefix("--image-size: ")) from None

    @field_validator("image_size")
    @classmethod
    def _bounded(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in as_hw(v)):
            raise ValueError(f"expected each side within {MIN_SIDE}..{MAX_SIDE} px, got {v}")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: float, info: Any) -> float:
        # std 0 divides every pixel by zero: NaN probabilities that JSON cannot even carry
        if not np.isfinite(v) or (info.field_name == "std" and v <= 0):
            raise ValueError("expected a finite number" + (" above 0" if info.field_name == "std" else "")
                             + f", got {v}")
        return v

    @property
    def hw(self) -> tuple[int, int]:
        """``(height, width)`` of the model input."""
        return as_hw(self.image_size)


class Recipe(StrictModel):
    """Everything between a source file and the model's input, plus what the output means."""

    format: Literal["mammolab-recipe"] = "mammolab-recipe"
    version: int = RECIPE_VERSION
    mammolab_version: str
    name: str = Field(description="the run's folder name")
    model: str = Field(description="the model's display name (model and regime)")
    classes: list[str]
    num_outputs: int
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    threshold_source: str = "default 0.5 (the run has not been evaluated)"
    source: SourceSpec
    preprocess: list[PreprocessStage] = Field(default_factory=list)
    transform: TransformSpec
    complete: bool = True
    notes: list[str] = Field(default_factory=list)
    dataset: dict[str, Any] = Field(default_factory=dict, description="provenance: name, manifest and config hash")
    views: Literal["cc+mlo"] | None = Field(None, description="cc+mlo: an exported two-view breast model (input "
                                            "[N, 2, 1, H, W] CC then MLO, and present [N, 2]); None: one image. "
                                            "Left out of the file when None, so single-view recipes are unchanged")
    checkpoint: str | None = Field(None, description="exported folders: the run's checkpoint file the model was "
                                   "exported from (best.ckpt or last.ckpt); left out of a run's own recipe")

    @model_validator(mode="after")
    def _outputs_fit_classes(self) -> Recipe:
        """A binary model has one logit (or two, softmax); a C-class model has C: three class names on a
        one-output model would label every image with a class the network cannot score."""
        n = len(self.classes)
        if n < 2 or len(set(self.classes)) != n:
            raise ValueError(f"classes: expected at least two distinct class names, got {self.classes}")
        allowed = (1, 2) if n == 2 else (n,)
        if self.num_outputs not in allowed:
            raise ValueError(f"num_outputs: {self.num_outputs} output(s) cannot score {n} classes {self.classes} "
                             f"(expected {' or '.join(map(str, allowed))})")
        return self

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def hash(self) -> str:
        """What decides a model input: conversion, preprocessing and transform (not the threshold)."""
        # a field added later enters only when set, so older recipes keep their hash
        later = {"roi_film_height"} if self.source.roi_film_height is None else set()
        return config_hash({"source": self.source.model_dump(exclude={"sizes", *later}),
                            "preprocess": [s.steps for s in self.preprocess], "transform": self.transform})

    def steps(self) -> list[dict[str, dict[str, Any]]]:
        return [step for stage in self.preprocess for step in stage.steps]


# ------------------------------------------------------------------------------------ the chain

def dataset_chain(dataset: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The dataset and its sources, outermost first, as far as their folders still exist.

    Each entry is ``(folder, mammolab.json)``; a source is followed only when its config hash is the
    one the later stage recorded, so a source folder re-made with other options is not mistaken
    for the one training's images came from.
    """
    from mammolab.data.manifest import read_info

    chain: list[tuple[Path, dict[str, Any]]] = []
    cur = Path(dataset)
    seen: set[Path] = set()
    while cur.resolve() not in seen:
        seen.add(cur.resolve())
        info = read_info(cur)
        chain.append((cur, info))
        src = info.get("source") if isinstance(info.get("source"), dict) else None
        if info.get("stage") not in ({"preprocess"} | _PASS_THROUGH) or not src or not src.get("dataset"):
            break
        nxt = Path(src["dataset"])
        if not (nxt / "mammolab.json").is_file() or read_info(nxt).get("config_hash") != src.get("config_hash"):
            break
        cur = nxt
    return chain


def _sizes(dataset: Path) -> SizeRange | None:
    """Width/height ranges of the training split of an organized dataset (all rows when it has none)."""
    from mammolab.data.manifest import load_manifest

    try:
        df = load_manifest(dataset)
    except MammoLabError:
        return None
    if "width" not in df or "height" not in df:
        return None
    part = df[df["split"].astype(str) == "train"] if (df["split"].astype(str) == "train").any() else df
    w = np.asarray(part["width"], dtype=float)
    h = np.asarray(part["height"], dtype=float)
    ok = np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0)
    if not ok.any():
        return None
    w, h = w[ok], h[ok]
    aspect = w / h
    return SizeRange(n=int(ok.sum()), width_min=int(w.min()), width_max=int(w.max()), height_min=int(h.min()),
                     height_max=int(h.max()), aspect_min=round(float(aspect.min()), 4),
                     aspect_max=round(float(aspect.max()), 4))


def _source_spec(folder: Path, info: dict[str, Any]) -> SourceSpec:
    stage = str(info.get("stage") or "unknown")
    cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    if stage == "organize":
        kind = cfg.get("kind") or "image"  # organize --manifest records no kind: files taken as they are
        depth = cfg.get("bit_depth")
        return SourceSpec(stage=stage, kind=kind, bit_depth=int(depth) if depth in (8, 16) else None,
                          roi_size=cfg.get("roi_size") if kind == "roi" else None,
                          roi_margin=cfg.get("roi_margin") if kind == "roi" else None,
                          roi_film_height=cfg.get("roi_film_height") if kind == "roi" else None,
                          config_hash=info.get("config_hash"), sizes=_sizes(folder))
    return SourceSpec(stage=stage, kind="unknown", config_hash=info.get("config_hash"), sizes=_sizes(folder))


def build_recipe(dataset: str | Path, *, name: str, model: str, classes: Sequence[str], num_outputs: int,
                 image_size: int | tuple[int, int], resize: str, mean: float, std: float) -> Recipe:
    """The recipe of a run trained on ``dataset``, from the dataset chain's ``mammolab.json`` files."""
    import mammolab
    from mammolab.data.manifest import manifest_hash

    dataset = Path(dataset)
    chain = dataset_chain(dataset)
    notes: list[str] = []
    stages: list[PreprocessStage] = []
    for _, info in reversed(chain):
        if info.get("stage") == "preprocess":
            steps = (info.get("config") or {}).get("steps")
            if not isinstance(steps, list):
                raise MammoLabError(f"{dataset}: a preprocess stage of its chain records no steps in mammolab.json")
            stages.append(PreprocessStage(config_hash=info.get("config_hash"), steps=steps))
    first_dir, first = chain[-1]
    complete = True
    if first.get("stage") in ({"preprocess"} | _PASS_THROUGH):
        # The chain stops at a stage whose source folder is gone: the organize conversion (and any
        # earlier preprocessing) is not known.
        src = (first.get("source") or {})
        complete = False
        notes.append(f"the source dataset {src.get('dataset')} of {first_dir} is not there any more; the "
                     "organize conversion before preprocessing is not recorded")
        if src.get("stage") == "preprocess":
            notes.append("an earlier preprocessing pass is missing from the recipe")
        source = SourceSpec(stage=str(src.get("stage") or "unknown"), kind="unknown",
                            config_hash=src.get("config_hash"))
    else:
        source = _source_spec(first_dir, first)
    try:
        mhash = manifest_hash(dataset)
    except OSError:
        mhash = None
    return Recipe(
        mammolab_version=getattr(mammolab, "__version__", "?"), name=name, model=model, classes=list(classes),
        num_outputs=int(num_outputs), source=source, preprocess=stages,
        transform=TransformSpec(image_size=parse_image_size(image_size), resize=resize, mean=float(mean),
                                std=float(std)),
        complete=complete, notes=notes,
        dataset={"name": dataset.resolve().name, "path": str(dataset.resolve()), "manifest_hash": mhash,
                 "config_hash": chain[0][1].get("config_hash")},
    )


def write_recipe(folder: str | Path, recipe: Recipe) -> Path:
    """Write ``folder/recipe.json`` atomically."""
    path = Path(folder) / RECIPE_NAME
    optional = {k for k in ("views", "checkpoint") if getattr(recipe, k) is None}
    write_json(path, recipe.model_dump(mode="json", exclude=optional or None))
    return path


def load_recipe(folder: str | Path) -> Recipe:
    """Read ``folder/recipe.json``; a missing, corrupt or newer-format file is one clear error."""
    path = Path(folder) / RECIPE_NAME
    if not path.is_file():
        raise MammoLabError(f"{path}: not found (a run trained before MammoLab recorded recipes, or not a run or "
                            "exported model folder)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise MammoLabError(f"{path}: not a valid JSON recipe")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise MammoLabError(f"{path}: required key(s) {', '.join(missing)} missing (a damaged or hand-edited "
                            "recipe; re-export the model or restore the run's recipe.json)")
    if int(data.get("version", 0) or 0) > RECIPE_VERSION:
        raise MammoLabError(f"{path}: recipe version {data.get('version')} is newer than this MammoLab reads "
                            f"({RECIPE_VERSION}); upgrade MammoLab")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise MammoLabError(format_validation_error(exc, str(path))) from None


# ------------------------------------------------------------------------------------ --box

def parse_box(text: str | Sequence[float] | None) -> tuple[int, int, int, int] | None:
    """``x0,y0,x1,y1`` (pixels of the whole film, right/bottom edges exclusive) -> a tuple, checked."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        vals = tuple(int(round(float(v))) for v in parts)
    except (TypeError, ValueError):
        raise MammoLabError(f"--box: expected four numbers x0,y0,x1,y1, got {text!r}") from None
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1] or min(vals) < 0:
        raise MammoLabError(f"--box: expected x0,y0,x1,y1 with x1 > x0 >= 0 and y1 > y0 >= 0, got {text!r}")
    return vals  # type: ignore[return-value]
