"""The options both ways of organizing share (CBIS-DDSM and a generic manifest), and their checks.

:class:`DatasetOptions` is the base of :class:`~mammolab.data.cbis_import.OrganizeConfig` and
:class:`~mammolab.data.manifest_import.ImportConfig`: labels, splits and how the images are written
mean the same in both, and so does the hash that decides what a re-run may reuse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mammolab.config import StrictModel, config_hash
from mammolab.errors import MammoLabError

__all__ = ["DatasetOptions", "check_background"]


class DatasetOptions(StrictModel):
    """Options both ways of organizing share: labels, splits and how the images are written."""

    labels: Literal["binary", "4class"] = "binary"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    folds: int = Field(5, ge=2, le=20)
    bit_depth: Literal[8, 16] = 16
    seed: int = 0
    png: Literal["stored", "fast"] = Field(
        "stored", description="PNG encoding of the images: stored (uncompressed: the size of the DICOM pixels, "
        "about 5x faster to read in every later pass) or fast (compressed, ~20% smaller on noisy 16-bit films). "
        "Pixels are the same either way, so it is not part of the config hash. Masks are always run-length coded.")
    allow_duplicates: bool = Field(
        False, description="Go on when one image's content (byte-identical files, e.g. a copy or a symlinked "
        "folder) is listed in two splits; it is reported as a leak in the quality report. Decides nothing about "
        "the data, so it is not part of the config hash.")
    allow_degenerate: bool = Field(
        False, description="Go on when the validation or test split lacks a class (its AUC and Youden threshold "
        "are then undefined). Decides nothing about the data, so it is not part of the config hash.")
    # --kind roi (the kind itself differs in default and meaning between the two ways)
    roi_size: int = Field(512, ge=16, le=8192)
    roi_margin: float = Field(0.5, ge=0.0, le=5.0)
    roi_film_height: int | None = Field(
        None, ge=16, le=65536, description="roi: cut every patch at one scale, the film's when resized to this "
        "height (a whole-image model's input height, e.g. 1152): the patch covers roi_size x film height / this "
        "source pixels around the lesion, whatever its size (Shen et al.'s patches for patch-to-whole transfer); "
        "a lesion larger than that gets a patch just containing its box. Default: the box plus roi_margin")
    roi_background: int = Field(
        0, ge=0, le=50, description="roi: also cut up to this many patches of normal tissue per film, class "
        "'normal' (first in the class order), at the fixed scale of roi_film_height (required): inside the breast, "
        "away from every lesion box of the film. Shen et al.'s patch classifier learns 'no lesion here' from them")

    def content_hash(self, stage: str) -> str:
        """The hash that decides what a re-run may reuse: every option that changes pixels, labels or splits.

        An option added later enters the hash only when set, so datasets made before it keep their hash.
        """
        dump = self.model_dump(exclude={"png", "allow_degenerate", "allow_duplicates"})
        if dump.get("roi_film_height") is None:
            dump.pop("roi_film_height", None)
        if not dump.get("roi_background"):
            dump.pop("roi_background", None)
        return config_hash({"stage": stage, **dump})


def check_background(cfg: DatasetOptions, kind: str) -> None:
    """--roi-film-height and --roi-background need --kind roi (and the latter the former): one line otherwise.

    Checked before anything is read, so a fixed scale asked for a kind without patches is not silently ignored.
    ``kind`` is the config's own (its default and meaning differ between the two ways).
    """
    if cfg.roi_background and kind != "roi":
        raise MammoLabError(f"--roi-background: normal-tissue patches are cut for --kind roi only (got --kind "
                            f"{kind}); use --kind roi or leave --roi-background out")
    if cfg.roi_background and cfg.roi_film_height is None:
        raise MammoLabError("--roi-background: needs --roi-film-height (a background patch has no lesion box to "
                            "size it by; e.g. --roi-film-height 1152 for a whole-image model 1152 px tall)")
    if cfg.roi_film_height is not None and kind != "roi":
        raise MammoLabError(f"--roi-film-height: fixed-scale patches are cut for --kind roi only (got --kind "
                            f"{kind}); use --kind roi or leave --roi-film-height out")

