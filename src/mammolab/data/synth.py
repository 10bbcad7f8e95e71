"""A synthetic CBIS-DDSM download: same CSVs, same DICOM tree, same quirks, small and learnable.

The real CBIS-DDSM is 163 GB behind a manual download, so neither CI nor a new user can run the
pipeline on it. ``synthesize`` writes a folder that *looks like* a download in every way the
``organize`` stage cares about, so the whole pipeline can be exercised end to end in seconds:

- ``csv/{mass,calc}_case_description_{train,test}_set.csv`` with the official columns and quirks:
  CRLF line endings, ``breast_density`` (mass) vs ``breast density`` (calc), UID-style paths
  ``<case>/<StudyInstanceUID>/<SeriesInstanceUID>/00000N.dcm``, and a newline embedded in a quoted
  path exactly where the real files have it (the ``ROI mask file path`` of the mass files, the
  ``cropped image file path`` of the calc files). As in the real files, mass rows name the crop
  ``000000`` and the mask ``000001`` and calc rows the other way round.
- ``download/``: the DICOM tree in the older NBIA layout (``legacy``:
  ``<case>/<MM-DD-YYYY>-DDSM-<n>/1-full mammogram images-<n>/000000.dcm``) or the current NBIA Data
  Retriever one (``nbia``: ``CBIS-DDSM/<case>/<MM-DD-YYYY>-DDSM-NA-<n>/1.000000-full mammogram
  images-<n>/1-1.dcm`` plus ``metadata.csv``). ``<n>`` is the last five digits of the study or
  series UID, as NBIA names them. Each abnormality's crop (16-bit) and full-size binary mask
  (8-bit, 0/255) share one series; which of the two files is the mask varies, the ROI folder is
  named "ROI mask images" or "cropped images" regardless of content, and some CSV rows name the
  wrong file as mask (or, in mass rows, the same file as crop and mask), as in the real data.
- The dataset traits that make CBIS-DDSM hard to split: each lesion in CC and MLO under the same
  abnormality id, patients with lesions in both breasts, images with 2-3 abnormalities (some with
  disagreeing pathologies), BENIGN_WITHOUT_CALLBACK rows, an official train/test split by patient
  (about 80/20, stratified by abnormality type and pathology) and, from 10 patients on, one
  patient who is in Mass-Test and Calc-Training at once (the real data has 18 such patients).

Images are 16-bit MONOCHROME2 film-like mammograms: black background, a half-ellipse breast whose
chest wall lies on the image edge of its side (**LEFT breast: chest wall on the left edge; RIGHT:
on the right edge**, the usual mirrored hanging), a pectoral muscle in MLO views, a burnt-in
"L CC"/"R MLO" label in the top corner away from the breast and one or two bright film-edge strips.
Lesions carry a learnable signal: benign masses are round/oval, smooth and moderately dense;
malignant masses are irregular, spiculated and denser. Benign calcifications are a few large round
specks; malignant ones are many small, pleomorphic, brighter and more tightly clustered.

Output is a pure function of (``patients``, ``image_size``, ``seed``): the same arguments give the
same bytes (UIDs come from :func:`pydicom.uid.generate_uid` with seeded entropy), and the two
layouts hold identical DICOMs under different paths. ``synth.json`` records the arguments; a re-run
with the same arguments skips a complete output and resumes an interrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_bytes, atomic_write_text, write_json
from mammolab.io.lock import LOCK_NAME, locks_output
from mammolab.progress import parallel_map

#: Bump when the generator's output changes for the same arguments (a stale output is then refused).
GENERATOR_VERSION = 1
LAYOUTS = ("legacy", "nbia")
MIN_PATIENTS = 6
MIN_IMAGE_SIZE = 128
MAX_IMAGE_SIZE = 8192

MASS_COLUMNS = (
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
)
CALC_COLUMNS = (
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
)
METADATA_COLUMNS = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
    "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name",
    "SOP Class UID", "Number of Images", "File Size", "File Location", "Download Timestamp",
)
FULL_DESCRIPTION = "full mammogram images"
MASK_DESCRIPTION = "ROI mask images"
CROP_DESCRIPTION = "cropped images"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# Folder dates of the real collection, by case prefix: (full-image study, ROI study).
_DATES = {
    "Mass-Training": ("07-20-2016", "07-21-2016"),
    "Mass-Test": ("10-04-2016", "10-04-2016"),
    "Calc-Training": ("08-07-2016", "09-06-2017"),
    "Calc-Test": ("08-29-2017", "08-29-2017"),
}
_STRATA = (("mass", False), ("mass", True), ("calc", False), ("mass", True), ("mass", False), ("calc", True))


# --------------------------------------------------------------------------------------- lesions

def _extent(radius: float, malignant: bool, kind: str) -> float:
    """Largest distance from the centre any lesion pixel can reach (placement keeps this clear)."""
    if kind == "mass" and malignant:
        return radius * 2.3
    return radius * 1.2


@dataclass(frozen=True)
class Difficulty:
    """How hard the lesions are to classify (``mammolab synth --difficulty``).

    ``easy`` is the original generator: every malignant lesion looks fully malignant, every benign
    one fully benign (same bytes as before the option existed). Harder levels give each lesion a
    *look* in [0, 1] (0 = the benign rendering, 1 = the malignant one, in between a blend: outline
    irregularity, number of spicules or specks, density profile): a per-lesion base drawn from a
    range per class (adjacent in ``medium``, apart in ``hard``; the classes overlap through the
    view noise), plus independent noise per view, so the CC and MLO images of one lesion carry
    partly independent evidence and two views tell more than one.
    Lesions are also smaller (``radius``) and fainter (``contrast``).
    """

    radius: float
    contrast: float
    malignant_look: tuple[float, float]
    benign_look: tuple[float, float]
    view_noise: float


#: The levels. For an ideal reader of the look (Monte Carlo, 100k lesions per class) the single-view
#: AUC is 1.0 (easy), 0.96 (medium) and 0.79 (hard); averaging the two views' looks gives 0.98 and
#: 0.87. In ``hard`` most of a lesion's ambiguity is per view (narrow class ranges, large view noise),
#: so the second view is worth +0.08 to an ideal reader: enough for a two-view model to show its gain
#: on a few hundred test breasts. A ResNet-18 on the rendered pixels comes close to the ideal reader
#: (docs/recipes/whole-image.md: the calibration of ``hard``).
DIFFICULTIES: dict[str, Difficulty | None] = {
    "easy": None,
    "medium": Difficulty(0.8, 0.75, (0.5, 1.0), (0.0, 0.5), 0.15),
    "hard": Difficulty(0.65, 0.55, (0.6, 0.75), (0.25, 0.4), 0.3),
}


def _spicules(xs: np.ndarray, ys: np.ndarray, radius: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` thin lines radiating out of a lesion centred on (0, 0) of the local grid: their mask.

    Drawn with sub-pixel precision (4 fractional bits) so small lesions still get straight spicules.
    """
    canvas = np.zeros(xs.shape, dtype=np.uint8)
    cx, cy = -float(xs[0, 0]), -float(ys[0, 0])
    thickness = max(1, int(round(radius * 0.07)))
    for angle in (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / max(n, 1)):
        length = radius * rng.uniform(1.2, 2.0)
        p0 = (cx + 0.5 * radius * math.cos(angle), cy + 0.5 * radius * math.sin(angle))
        p1 = (cx + length * math.cos(angle), cy + length * math.sin(angle))
        cv2.line(canvas, (int(round(p0[0] * 16)), int(round(p0[1] * 16))),
                 (int(round(p1[0] * 16)), int(round(p1[1] * 16))), 255, thickness, cv2.LINE_8, 4)
    return canvas > 0


def _graded_mass(xs: np.ndarray, ys: np.ndarray, radius: float, look: float, contrast: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A mass between benign (``look`` 0: round, smooth, soft dome) and malignant (1: irregular,
    spiculated, flat dense core); intensities scaled by ``contrast``."""
    theta = np.arctan2(ys, xs)
    q = rng.uniform(0.7, 1.0) * (1 - look) + look
    rot = rng.uniform(0, np.pi)
    u = xs * np.cos(rot) + ys * np.sin(rot)
    v = -xs * np.sin(rot) + ys * np.cos(rot)
    ell = np.hypot(u, v / q)
    boundary = np.full_like(ell, radius)
    for k in rng.choice(np.arange(3, 12), size=4, replace=False):
        boundary += radius * look * rng.uniform(0.03, 0.075) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = ell / boundary
    body = rho <= 1.0
    amp = contrast * ((1 - look) * rng.uniform(0.08, 0.13) + look * rng.uniform(0.18, 0.26))
    dome = np.clip(1.0 - rho**2, 0.0, 1.0)
    body_delta = amp * ((1 - look) * dome**0.4 + look * (0.8 + 0.2 * np.sqrt(dome)))
    n = int(round(look * rng.uniform(9, 16)))
    dist = np.hypot(xs, ys)
    spic = _spicules(xs, ys, radius, n, rng)
    taper = np.clip(1.0 - (dist - radius) / (1.5 * radius), 0.3, 1.0)
    delta = np.where(body, body_delta, np.where(spic, 0.75 * amp * taper, 0.0))
    mask = body | spic
    return np.where(mask, delta, 0.0).astype(np.float32), mask


def _mass(xs: np.ndarray, ys: np.ndarray, radius: float, malignant: bool,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A mass on a local grid centred on (0, 0): (intensity delta, mask)."""
    theta = np.arctan2(ys, xs)
    dist = np.hypot(xs, ys)
    if malignant:
        # Irregular outline: a few angular harmonics; a flat, dense core with a sharp edge.
        boundary = np.full_like(dist, radius)
        for k in rng.choice(np.arange(3, 12), size=4, replace=False):
            boundary += radius * rng.uniform(0.03, 0.075) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rho = dist / boundary
        body = rho <= 1.0
        amp = rng.uniform(0.18, 0.26)
        body_delta = amp * (0.8 + 0.2 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)))
        # Spicules: thin lines radiating out of the body, fading with distance.
        spic = _spicules(xs, ys, radius, int(rng.integers(9, 16)), rng)
        taper = np.clip(1.0 - (dist - radius) / (1.5 * radius), 0.3, 1.0)
        delta = np.where(body, body_delta, np.where(spic, 0.75 * amp * taper, 0.0))
        mask = body | spic
    else:
        # Round/oval, slightly lobulated at most, with a dome profile that fades smoothly to the edge.
        q = rng.uniform(0.7, 1.0)
        rot = rng.uniform(0, np.pi)
        u = xs * np.cos(rot) + ys * np.sin(rot)
        v = -xs * np.sin(rot) + ys * np.cos(rot)
        ell = np.hypot(u / radius, v / (radius * q))
        lob = 1.0 + rng.uniform(0.0, 0.05) * np.cos(int(rng.integers(2, 5)) * theta + rng.uniform(0, 2 * np.pi))
        rho = ell / lob
        mask = rho <= 1.0
        amp = rng.uniform(0.08, 0.13)
        delta = amp * np.clip(1.0 - rho**2, 0.0, 1.0) ** 0.4
    delta = np.where(mask, delta, 0.0).astype(np.float32)
    return delta, mask


def _calc(shape: tuple[int, int], center: tuple[float, float], radius: float, malignant: bool,
          rng: np.random.Generator, look: float | None = None, contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A calcification cluster on a local canvas: (intensity delta, mask = the cluster's hull)."""
    canvas = np.zeros(shape, dtype=np.float32)
    if look is not None:  # graded (--difficulty medium/hard): counts, spread and brightness blended
        n = int(round((1 - look) * rng.integers(4, 8) + look * rng.integers(16, 30)))
        spread = (0.9 - 0.15 * look) * radius
        amp = contrast * ((1 - look) * rng.uniform(0.26, 0.32) + look * rng.uniform(0.36, 0.46))
        malignant = bool(rng.uniform() < look)  # speck shape: pleomorphic with probability look
    elif malignant:
        n, spread, amp = int(rng.integers(16, 30)), 0.75 * radius, rng.uniform(0.36, 0.46)
    else:
        n, spread, amp = int(rng.integers(4, 8)), 0.9 * radius, rng.uniform(0.26, 0.32)
    hull_pts = []
    for _ in range(n):
        rr, ang = spread * math.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        px, py = center[0] + rr * math.cos(ang), center[1] + rr * math.sin(ang)
        value = float(amp * rng.uniform(0.85, 1.15))
        if malignant:
            # Pleomorphic: small rotated ellipses of random aspect, some of them short linear branches.
            s = max(0.8, radius * rng.uniform(0.035, 0.07))
            axes = (s * rng.uniform(1.0, 2.2), s * rng.uniform(0.4, 1.0))
        else:
            s = max(1.0, radius * rng.uniform(0.10, 0.15))
            axes = (s, s)
        cv2.ellipse(canvas, (int(round(px * 16)), int(round(py * 16))),
                    (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16)))),
                    float(rng.uniform(0, 180)), 0, 360, value, -1, cv2.LINE_AA, 4)
        ext = max(axes) + 1.0
        hull_pts += [(px + ext * math.cos(a), py + ext * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 12, False)]
    mask8 = np.zeros(shape, dtype=np.uint8)
    hull = cv2.convexHull(np.round(np.array(hull_pts) * 16).astype(np.int32))
    cv2.fillConvexPoly(mask8, hull, 1, cv2.LINE_8, 4)
    mask = (mask8 > 0) | (canvas > 0)
    return np.where(mask, canvas, 0.0).astype(np.float32), mask


def draw_lesion(shape_hw: tuple[int, int], center: tuple[float, float], radius: float, malignant: bool,
                kind: str, rng: np.random.Generator, look: float | None = None,
                contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one lesion into an image of ``shape_hw``; return (intensity delta float32, mask bool).

    ``center`` is ``(x, y)`` in pixels (OpenCV order). ``radius`` is the mass radius or the
    calcification cluster radius. Add the delta to an image scaled to [0, 1]; the mask is exactly
    the set of pixels the lesion touches (``delta > 0`` only inside it), so it can serve as ground
    truth for boxes and segmentation. Masses: benign round/oval with smooth margins, malignant
    irregular, spiculated and denser; calcifications (``kind='calc'``): benign a few large round
    specks, malignant many small pleomorphic brighter ones, more tightly clustered. With ``look``
    (0..1, see :class:`Difficulty`) the lesion is a blend of the two renderings whatever its class,
    its intensity scaled by ``contrast``.
    """
    if kind not in ("mass", "calc"):
        raise MammoLabError(f"draw_lesion: kind must be 'mass' or 'calc', got {kind!r}")
    h, w = int(shape_hw[0]), int(shape_hw[1])
    delta = np.zeros((h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=bool)
    cx, cy = float(center[0]), float(center[1])
    ext = _extent(radius, malignant or look is not None, kind) + 2.0
    x0, x1 = max(0, int(math.floor(cx - ext))), min(w, int(math.ceil(cx + ext)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ext))), min(h, int(math.ceil(cy + ext)) + 1)
    if x1 <= x0 or y1 <= y0 or radius <= 0:
        return delta, mask
    if kind == "mass":
        xs = (np.arange(x0, x1, dtype=np.float64) - cx)[None, :].repeat(y1 - y0, 0)
        ys = (np.arange(y0, y1, dtype=np.float64) - cy)[:, None].repeat(x1 - x0, 1)
        if look is None:
            d, m = _mass(xs, ys, radius, malignant, rng)
        else:
            d, m = _graded_mass(xs, ys, radius, look, contrast, rng)
    else:
        d, m = _calc((y1 - y0, x1 - x0), (cx - x0, cy - y0), radius, malignant, rng, look, contrast)
    delta[y0:y1, x0:x1] = d
    mask[y0:y1, x0:x1] = m
    return delta, mask


def _smooth_noise(h: int, w: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish variance noise with features about ``cell`` pixels wide (cheap: upsampled)."""
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _tissue(h: int, w: int, density: int, rng: np.random.Generator) -> np.ndarray:
    """Fibroglandular texture in [0, 1] units: denser breasts are brighter and more textured."""
    low = _smooth_noise(h, w, max(4, h // 10), rng)
    mid = _smooth_noise(h, w, max(2, h // 40), rng)
    fine = rng.standard_normal((h, w)).astype(np.float32)
    amp = 0.025 + 0.01 * density
    return (0.30 + 0.05 * density) + amp * (0.6 * low + 0.4 * mid) + 0.006 * fine


def make_lesion_patch(size: int, malignant: bool, rng: np.random.Generator,
                      kind: str = "mass") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A ``size`` x ``size`` uint16 tissue patch with one lesion near its centre, and its box.

    The box is ``(x0, y0, x1, y1)`` with exclusive right/bottom edges, covering the lesion mask.
    Meant for other stages' tests that need cheap, learnable benign/malignant images.
    """
    if size < 16:
        raise MammoLabError(f"make_lesion_patch: size must be at least 16 pixels, got {size}")
    img = _tissue(size, size, int(rng.integers(1, 5)), rng)
    radius = size * (rng.uniform(0.14, 0.18) if kind == "mass" and malignant else rng.uniform(0.2, 0.26))
    center = (size / 2 + rng.uniform(-0.06, 0.06) * size, size / 2 + rng.uniform(-0.06, 0.06) * size)
    delta, mask = draw_lesion((size, size), center, radius, malignant, kind, rng)
    img = img + delta
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.rint(np.clip(img, 0.0, 1.0) * 65535).astype(np.uint16), box


# ---------------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class RoiSpec:
    """One abnormality as seen in one view: its ROI series and how its two files are arranged."""

    abn_id: int
    kind: str
    malignant: bool
    radius_frac: float
    pos_u: float
    pos_v: float
    roi_case: str
    study_uid: str
    series_uid: str
    mask_sop: str
    crop_sop: str
    mask_index: int  # which file (0 or 1) really holds the mask
    folder: str  # download-relative series folder (POSIX)
    description: str  # series folder description ("ROI mask images" or "cropped images")
    study_date: str
    seed: int
    look: float | None = None  # --difficulty medium/hard: how malignant this view of the lesion looks
    contrast: float = 1.0


@dataclass(frozen=True)
class ImageJob:
    """Everything needed to render and write one full mammogram and its ROI series (picklable)."""

    root: str
    layout: str
    case: str
    side: str
    view: str
    density: int
    image_size: int
    study_uid: str
    series_uid: str
    sop_uid: str
    folder: str
    study_date: str
    seed: int
    rois: tuple[RoiSpec, ...]


@dataclass
class _Abn:
    abn_id: int
    pathology: str
    assessment: int
    subtlety: int
    lesion_type: str
    lesion_detail: str
    radius_frac: float
    pos_u: float
    pos_v: float


@dataclass
class _Breast:
    patient: str
    side: str
    kind: str
    split: str
    density: int
    abns: list[_Abn] = field(default_factory=list)


@dataclass
class SynthResult:
    """Where a synthetic download was written and what it holds."""

    out: Path
    download_dir: Path
    csv_dir: Path
    metadata: Path | None
    layout: str
    patients: int
    images: int
    rois: int
    files: int
    csv_rows: dict[str, int]
    skipped: bool = False

    def organize_command(self) -> str:
        """The ``mammolab organize`` call that turns this output into a dataset."""
        cmd = f"mammolab organize {self.download_dir} --csv-dir {self.csv_dir} --out dataset"
        return cmd + (f" --metadata {self.metadata}" if self.metadata else "")


def _uid(seed: int, patients: int, image_size: int, key: str) -> str:
    from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

    return str(generate_uid(prefix=PYDICOM_ROOT_UID,
                            entropy_srcs=["mammolab-synth", str(seed), str(patients), str(image_size), key]))


def _sub_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def _pathology(malignant: bool, rng: np.random.Generator, kind: str) -> str:
    if malignant:
        return "MALIGNANT"
    return "BENIGN_WITHOUT_CALLBACK" if rng.uniform() < (0.3 if kind == "calc" else 0.2) else "BENIGN"


def _descriptors(kind: str, pathology: str, rng: np.random.Generator) -> tuple[int, int, str, str]:
    """BI-RADS assessment, subtlety and the shape/margin (or type/distribution) words of a row."""
    if pathology == "MALIGNANT":
        assessment = int(rng.choice([0, 3, 4, 5], p=[0.08, 0.07, 0.45, 0.40]))
        subtlety = int(rng.choice([2, 3, 4, 5], p=[0.1, 0.2, 0.3, 0.4]))
        if kind == "mass":
            words = (str(rng.choice(["IRREGULAR", "LOBULATED", "IRREGULAR-ARCHITECTURAL_DISTORTION"])),
                     str(rng.choice(["SPICULATED", "ILL_DEFINED", "ILL_DEFINED-SPICULATED"])))
        else:
            words = (str(rng.choice(["PLEOMORPHIC", "FINE_LINEAR_BRANCHING", "AMORPHOUS"])),
                     str(rng.choice(["CLUSTERED", "LINEAR", "SEGMENTAL"])))
    else:
        if pathology == "BENIGN_WITHOUT_CALLBACK":
            assessment = int(rng.choice([2, 3]))
        else:
            assessment = int(rng.choice([0, 2, 3, 4], p=[0.1, 0.2, 0.35, 0.35]))
        subtlety = int(rng.choice([1, 2, 3, 4, 5], p=[0.1, 0.2, 0.3, 0.2, 0.2]))
        if kind == "mass":
            words = (str(rng.choice(["ROUND", "OVAL", "LOBULATED"])),
                     str(rng.choice(["CIRCUMSCRIBED", "OBSCURED", "CIRCUMSCRIBED-OBSCURED"])))
        else:
            words = (str(rng.choice(["ROUND_AND_REGULAR", "PUNCTATE", "LUCENT_CENTER", "COARSE", "VASCULAR"])),
                     str(rng.choice(["CLUSTERED", "N/A", "DIFFUSELY_SCATTERED", "REGIONAL"])))
    return assessment, subtlety, words[0], words[1]


def _make_abns(kind: str, malignant: bool, n: int, conflict: bool | None, rng: np.random.Generator) -> list[_Abn]:
    """``n`` abnormalities of one breast; the first has the breast's class, the others mostly too."""
    abns = []
    for k in range(n):
        if k == 0:
            mal = malignant
        elif conflict is None:
            mal = malignant if rng.uniform() < 0.8 else not malignant
        else:
            mal = (not malignant) if (conflict and k == 1) else malignant
        path = _pathology(mal, rng, kind)
        assessment, subtlety, ltype, ldetail = _descriptors(kind, path, rng)
        abns.append(_Abn(k + 1, path, assessment, subtlety, ltype, ldetail, float(rng.uniform(0.03, 0.045)),
                         float(rng.uniform(0.3, 0.62)), float(rng.uniform(-0.5, 0.5))))
    return abns


def _plan_breasts(patients: int, seed: int) -> list[_Breast]:
    """Patients, breasts and abnormalities, with every trait guaranteed present from 6 patients on."""
    rng = np.random.default_rng([seed, patients, 0x5EED])
    strata = [_STRATA[i % len(_STRATA)] for i in range(patients)]
    order = rng.permutation(patients)
    strata = [strata[i] for i in order]
    # Official split by patient, stratified by (kind, class): about 20% of each stratum in test.
    test: set[int] = set()
    for stratum in sorted(set(strata)):
        members = [i for i, s in enumerate(strata) if s == stratum]
        n_test = max(1, round(0.2 * len(members))) if len(members) >= 2 else 0
        test.update(int(i) for i in rng.choice(members, size=n_test, replace=False))
    breasts: list[_Breast] = []
    test_sorted = sorted(test)
    calc_test_fix = test_sorted[0]
    has_calc_test = any(strata[i][0] == "calc" for i in test)
    quirk = next((i for i in test_sorted if strata[i][0] == "mass" and i != calc_test_fix), None)
    quirk = quirk if patients >= 10 else None
    for i, (kind, malignant) in enumerate(strata):
        pid = f"P_{i + 1:05d}"
        split = "test" if i in test else "train"
        density = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.42, 0.26, 0.12]))
        side = str(rng.choice(["LEFT", "RIGHT"]))
        n_abn = int(rng.choice([1, 2, 3], p=[0.85, 0.11, 0.04]))
        conflict: bool | None = None
        if i == 1:
            n_abn, conflict = 2, True  # an image whose abnormalities disagree
        elif i == 2:
            n_abn, conflict = 3, False  # an image with three abnormalities
        breasts.append(_Breast(pid, side, kind, split, density, _make_abns(kind, malignant, n_abn, conflict, rng)))
        two_sided = rng.uniform() < 0.3 or i == 0
        other_kind = kind if rng.uniform() < 0.7 else ("calc" if kind == "mass" else "mass")
        other_split = split
        if i == calc_test_fix and not has_calc_test:
            two_sided, other_kind = True, "calc"
        if i == quirk:
            two_sided, other_kind, other_split = True, "calc", "train"  # Mass-Test and Calc-Training
        if two_sided:
            other_side = "RIGHT" if side == "LEFT" else "LEFT"
            n2 = int(rng.choice([1, 2], p=[0.85, 0.15]))
            abns = _make_abns(other_kind, bool(rng.uniform() < 0.45), n2, None, rng)
            breasts.append(_Breast(pid, other_side, other_kind, other_split, density, abns))
    if not any(a.pathology == "BENIGN_WITHOUT_CALLBACK" for b in breasts for a in b.abns):
        first = next(a for b in breasts for a in b.abns if a.pathology == "BENIGN")
        first.pathology = "BENIGN_WITHOUT_CALLBACK"
    breasts.sort(key=lambda b: (b.patient, b.side))
    return breasts


def _prefix(kind: str, split: str) -> str:
    return f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if split == 'train' else 'Test'}"


def _series_folder(layout: str, case: str, date: str, study_uid: str, series_uid: str, description: str) -> str:
    if layout == "nbia":
        return f"CBIS-DDSM/{case}/{date}-DDSM-NA-{study_uid[-5:]}/1.000000-{description}-{series_uid[-5:]}"
    return f"{case}/{date}-DDSM-{study_uid[-5:]}/1-{description}-{series_uid[-5:]}"


def _file_name(layout: str, index: int) -> str:
    return f"1-{index + 1}.dcm" if layout == "nbia" else f"{index:06d}.dcm"


@dataclass
class _Plan:
    jobs: list[ImageJob]
    csv_rows: dict[str, list[list[str]]]
    metadata_rows: list[dict[str, str]]


def _looks(breasts: list[_Breast], level: Difficulty, seed: int,
           patients: int) -> dict[tuple[str, str, int, str], float]:
    """Each lesion's look per view: a base from its class's range plus independent noise per view."""
    rng = np.random.default_rng([seed, patients, 0xD1FF])  # its own stream: easy's draws stay untouched
    looks = {}
    for b in breasts:
        for abn in b.abns:
            lo, hi = level.malignant_look if abn.pathology == "MALIGNANT" else level.benign_look
            base = rng.uniform(lo, hi)
            for view in ("CC", "MLO"):
                looks[(b.patient, b.side, abn.abn_id, view)] = float(np.clip(base + level.view_noise * rng.normal(),
                                                                             0.0, 1.0))
    return looks


def lesion_looks(patients: int, seed: int = 0, difficulty: str = "hard") -> list[dict[str, Any]]:
    """The *look* each lesion was drawn with, per view, for ``synthesize(patients=..., seed=...)``.

    The look is the generator's evidence of malignancy (0 benign rendering, 1 malignant), so its AUC
    is what an ideal reader of the pixels could reach: the ceiling a benchmark compares a model to.
    Rows: ``patient_id``, ``side``, ``abn_id``, ``view``, ``kind``, ``split``, ``pathology``,
    ``malignant``, ``look``. Same plan as ``synthesize`` (nothing is rendered, so it is instant).
    """
    if difficulty not in DIFFICULTIES:
        raise MammoLabError(f"--difficulty: expected one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    level = DIFFICULTIES[difficulty]
    if level is None:
        raise MammoLabError("--difficulty easy has no graded look: every lesion is fully benign or malignant")
    breasts = _plan_breasts(patients, seed)
    looks = _looks(breasts, level, seed, patients)
    return [{"patient_id": b.patient, "side": b.side, "abn_id": a.abn_id, "view": view, "kind": b.kind,
             "split": b.split, "pathology": a.pathology, "malignant": a.pathology == "MALIGNANT",
             "look": looks[(b.patient, b.side, a.abn_id, view)]}
            for b in breasts for a in b.abns for view in ("CC", "MLO")]


def _plan(out: Path, patients: int, image_size: int, layout: str, seed: int, difficulty: str = "easy") -> _Plan:
    """Turn the breasts into image jobs, CSV rows and (nbia) metadata rows; all deterministic."""
    breasts = _plan_breasts(patients, seed)
    level = DIFFICULTIES[difficulty]
    looks = _looks(breasts, level, seed, patients) if level is not None else {}
    rng = np.random.default_rng([seed, patients, 0x0DE5])
    root = str(out / "download")
    jobs: list[ImageJob] = []
    rows: dict[str, list[list[str]]] = {f"{k}_case_description_{s}_set.csv": []
                                        for k in ("mass", "calc") for s in ("train", "test")}
    meta: list[dict[str, str]] = []
    # Mask-order scenarios, drawn per ROI series; guarantees applied below.
    scenarios: list[list[str]] = []
    ordered = []
    for b in breasts:
        for view in ("CC", "MLO"):
            ordered.append((b, view))
            scenarios.append([])
            for _ in b.abns:
                if b.kind == "mass":
                    scenarios[-1].append(str(rng.choice(["ok", "swapped", "same"], p=[0.75, 0.17, 0.08])))
                else:
                    scenarios[-1].append(str(rng.choice(["ok", "swapped"], p=[0.8, 0.2])))
    # Both arrangements must occur for each kind (mask file as the CSV says, and the other one),
    # whatever the dice said: flip a slot whose scenario occurs more than once.
    for kind in ("mass", "calc"):
        slots = [(i, j) for i, (b, _) in enumerate(ordered) if b.kind == kind for j in range(len(b.abns))]
        for needed in ("ok", "swapped"):
            counts = Counter(scenarios[i][j] for i, j in slots)
            donor = next(((i, j) for i, j in slots if counts[scenarios[i][j]] > 1), None)
            if slots and counts[needed] == 0 and donor is not None:
                scenarios[donor[0]][donor[1]] = needed
    for (b, view), scen in zip(ordered, scenarios, strict=True):
        prefix = _prefix(b.kind, b.split)
        case = f"{prefix}_{b.patient}_{b.side}_{view}"
        full_date, roi_date = _DATES[prefix]
        study, series = (_uid(seed, patients, image_size, f"{case}/{k}") for k in ("study", "series"))
        sop = _uid(seed, patients, image_size, f"{case}/sop")
        folder = _series_folder(layout, case, full_date, study, series, FULL_DESCRIPTION)
        image_path = f"{case}/{study}/{series}/000000.dcm"
        meta.append(_meta_row(series, case, study, full_date, FULL_DESCRIPTION, 1, folder))
        rois = []
        for abn, scenario in zip(b.abns, scen, strict=True):
            roi_case = f"{case}_{abn.abn_id}"
            r_study, r_series, mask_sop, crop_sop = (_uid(seed, patients, image_size, f"{roi_case}/{k}")
                                                     for k in ("study", "series", "mask", "crop"))
            # What the CSV claims (as in the real files) and where the mask really is.
            csv_crop, csv_mask = (0, 1) if b.kind == "mass" else (1, 0)
            if scenario == "same":
                csv_mask, actual_mask = 0, 0
            elif scenario == "swapped":
                actual_mask = 1 - csv_mask
            else:
                actual_mask = csv_mask
            description = str(rng.choice([MASK_DESCRIPTION, CROP_DESCRIPTION], p=[0.6, 0.4]))
            r_folder = _series_folder(layout, roi_case, roi_date, r_study, r_series, description)
            malignant = abn.pathology == "MALIGNANT"
            jitter = rng.uniform(-0.06, 0.06, size=3)
            graded = {} if level is None else {"look": looks[(b.patient, b.side, abn.abn_id, view)],
                                               "contrast": level.contrast}
            rois.append(RoiSpec(
                abn.abn_id, b.kind, malignant,
                abn.radius_frac * (1 + jitter[0]) * (1.0 if level is None else level.radius),
                abn.pos_u + jitter[1], abn.pos_v + 2 * jitter[2], roi_case, r_study, r_series, mask_sop, crop_sop,
                actual_mask, r_folder, description, roi_date, _sub_seed(seed, f"{roi_case}/pixels"), **graded,
            ))
            meta.append(_meta_row(r_series, roi_case, r_study, roi_date, description, 2, r_folder))
            crop_path = f"{roi_case}/{r_study}/{r_series}/{csv_crop:06d}.dcm"
            mask_path = f"{roi_case}/{r_study}/{r_series}/{csv_mask:06d}.dcm"
            # The real files embed a newline in one quoted path: the mask path in mass files, the crop
            # path in calc files.
            if b.kind == "mass":
                mask_path += "\n"
            else:
                crop_path += "\n"
            rows[f"{b.kind}_case_description_{b.split}_set.csv"].append([
                b.patient, str(b.density), b.side, view, str(abn.abn_id),
                "mass" if b.kind == "mass" else "calcification", abn.lesion_type, abn.lesion_detail,
                str(abn.assessment), abn.pathology, str(abn.subtlety), image_path, crop_path, mask_path,
            ])
        jobs.append(ImageJob(root, layout, case, b.side, view, b.density, image_size, study, series, sop, folder,
                             full_date, _sub_seed(seed, f"{case}/pixels"), tuple(rois)))
    return _Plan(jobs, rows, meta)


def _meta_row(series: str, subject: str, study: str, date: str, description: str, n: int,
              folder: str) -> dict[str, str]:
    return {
        "Series UID": series, "Collection": "CBIS-DDSM", "3rd Party Analysis": "NO",
        "Data Description URI": "", "Subject ID": subject, "Study UID": study, "Study Description": "",
        "Study Date": date, "Series Description": description, "Manufacturer": "", "Modality": "MG",
        "SOP Class Name": "Secondary Capture Image Storage", "SOP Class UID": SECONDARY_CAPTURE,
        "Number of Images": str(n), "File Size": "", "File Location": ".\\" + folder.replace("/", "\\"),
        "Download Timestamp": "",
    }


# --------------------------------------------------------------------------------------- rendering

def _render_full(job: ImageJob) -> tuple[np.ndarray, list[tuple[RoiSpec, np.ndarray]]]:
    """The full mammogram (uint16) and each ROI's full-size mask."""
    rng = np.random.default_rng(job.seed)
    h = job.image_size
    w = 2 * int(round(0.3 * h))
    left = job.side == "LEFT"
    chest_x = 0.0 if left else float(w - 1)
    away = 1.0 if left else -1.0  # direction from the chest wall towards the nipple
    a = w * rng.uniform(0.8, 0.9)
    b = h * rng.uniform(0.36, 0.41)
    cy = h * (0.5 if job.view == "CC" else rng.uniform(0.52, 0.57))
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    r2 = ((xx - chest_x) / a) ** 2 + ((yy - cy) / b) ** 2
    thick = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    body = (r2 < 1.0).astype(np.uint8)
    tissue = _tissue(h, w, job.density, rng) + 0.22 * thick**0.6
    # A few faint ducts converging on the nipple.
    ducts = np.zeros((h, w), dtype=np.float32)
    nipple = (chest_x + away * a, cy)
    for _ in range(int(rng.integers(6, 12))):
        end = (chest_x + away * a * rng.uniform(0.0, 0.3), cy + b * rng.uniform(-0.8, 0.8))
        mid = ((nipple[0] + end[0]) / 2 + rng.uniform(-0.05, 0.05) * w, (nipple[1] + end[1]) / 2)
        pts = np.round(np.array([nipple, mid, end]) * 16).astype(np.int32)
        cv2.polylines(ducts, [pts], False, 0.025, max(1, h // 400), cv2.LINE_AA, 4)
    tissue += cv2.GaussianBlur(ducts, (0, 0), max(0.8, h / 700))
    pect = None
    if job.view == "MLO":
        pw, ph = w * rng.uniform(0.3, 0.4), h * rng.uniform(0.35, 0.45)
        pect = np.array([[chest_x, -1], [chest_x + away * pw, -1], [chest_x, ph]], dtype=np.float32)
        pmask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillConvexPoly(pmask, np.round(pect * 16).astype(np.int32), 1, cv2.LINE_8, 4)
        tissue += 0.12 * cv2.GaussianBlur(pmask.astype(np.float32), (0, 0), max(1.0, h / 300))
        body |= pmask
    soft = cv2.GaussianBlur(body.astype(np.float32), (0, 0), max(0.8, h / 400))
    background = 0.012 + 0.004 * rng.standard_normal((h, w)).astype(np.float32)
    img = background + (tissue - background) * soft

    strip = max(2, int(round(0.012 * h)))
    margin_y = strip + 0.03 * h
    placed: list[tuple[float, float, float]] = []
    lesions: list[tuple[RoiSpec, np.ndarray]] = []
    for roi in job.rois:
        lrng = np.random.default_rng(roi.seed)
        radius = max(2.5, roi.radius_frac * h)
        center = None
        for attempt in range(600):
            if attempt and attempt % 100 == 0:
                radius *= 0.8  # crowded breast: make the lesion smaller rather than overlap
            ext = _extent(radius, roi.malignant or roi.look is not None, roi.kind)
            clear = ext + 4 + 0.5 * ext  # the lesion plus its crop margin stays inside the breast
            if attempt == 0:
                u, v = roi.pos_u, roi.pos_v
            else:
                u, v = lrng.uniform(0.1, 0.85), lrng.uniform(-0.8, 0.8)
            x = chest_x + away * u * a
            y = cy + v * b * math.sqrt(max(0.0, 1 - u * u))
            ok = a > clear and b > clear and ((x - chest_x) / (a - clear)) ** 2 + ((y - cy) / (b - clear)) ** 2 < 1
            ok = ok and abs(x - chest_x) - ext > 0.08 * w and margin_y + clear < y < h - margin_y - clear
            if ok and pect is not None:
                ok = cv2.pointPolygonTest(pect, (float(x), float(y)), True) < -(ext + 2)
            if ok and all(math.hypot(x - px, y - py) > ext + pe + 2 for px, py, pe in placed):
                center = (x, y)
                break
        if center is None:  # pragma: no cover - 600 tries down to a third of the radius always fit so far
            raise RuntimeError(f"{job.case}: no room for abnormality {roi.abn_id}")
        placed.append((center[0], center[1], ext))
        delta, mask = draw_lesion((h, w), center, radius, roi.malignant, roi.kind, lrng, roi.look, roi.contrast)
        img += delta
        lesions.append((roi, mask))

    img = np.clip(img, 0.0, 0.97)
    # Film edge strips along one or two borders (top, bottom or the chest-wall edge).
    edges = rng.choice(["top", "bottom", "chest"], size=int(rng.integers(1, 3)), replace=False)
    for edge in edges:
        level = rng.uniform(0.85, 0.95)
        if edge == "top":
            img[:strip, :] = level
        elif edge == "bottom":
            img[h - strip:, :] = level
        else:
            sw = max(2, int(round(0.015 * w)))
            if left:
                img[:, :sw] = level
            else:
                img[:, w - sw:] = level
    # The burnt-in side/view label, in the top corner away from the chest wall.
    text = f"{job.side[0]} {job.view}"
    scale = h / 700
    thickness = max(1, int(round(h / 350)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    tx = int(w - 0.06 * w - tw) if left else int(0.06 * w)
    ty = int(strip + 0.04 * h + th)
    label = np.zeros((h, w), dtype=np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(label, text, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    # Film labels saturate the scanner: the letters' core is pure white, the anti-aliased rim is not.
    img = np.maximum(img, np.where(label >= 96, 1.0, label.astype(np.float32) / 255.0))
    return np.rint(np.clip(img, 0.0, 1.0) * 65535).astype(np.uint16), lesions


def _crop(full: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The lesion box plus a symmetric margin (placement keeps it inside the image)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    m = 4 + int(round(0.25 * max(x1 - x0, y1 - y0)))
    h, w = full.shape
    return np.ascontiguousarray(full[max(0, y0 - m):min(h, y1 + m), max(0, x0 - m):min(w, x1 + m)])


def _dicom_bytes(pixels: np.ndarray, *, patient: str, study_uid: str, series_uid: str, sop_uid: str,
                 description: str, study_date: str, side: str, view: str, instance: int) -> bytes:
    """A Secondary Capture MG DICOM with the header style of CBIS-DDSM, Explicit VR Little Endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MAMMOLAB_SYNTH"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    mm, dd, yyyy = study_date.split("-")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = f"{yyyy}{mm}{dd}"
    ds.ContentDate = f"{yyyy}{mm}{dd}"
    ds.StudyTime = "120000"
    ds.ContentTime = "120000.000000"
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = description
    ds.PatientName = patient
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "BREAST"
    ds.SecondaryCaptureDeviceManufacturer = "MammoLab"
    ds.SecondaryCaptureDeviceManufacturerModelName = "mammolab synth"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "DDSM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = view
    ds.Laterality = side[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    data = np.ascontiguousarray(pixels).astype("<u2" if bits == 16 else np.uint8).tobytes()
    if len(data) % 2:
        data += b"\0"
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", data)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _job_files(job: ImageJob) -> list[Path]:
    root = Path(job.root)
    files = [root / job.folder / _file_name(job.layout, 0)]
    for roi in job.rois:
        files += [root / roi.folder / _file_name(job.layout, i) for i in (0, 1)]
    return files


def render_job(job: ImageJob) -> int:
    """Render one full mammogram with its ROI series and write the DICOMs; returns files written.

    Files are written atomically, so a job whose files all exist is complete and is skipped.
    """
    if all(p.is_file() for p in _job_files(job)):
        return 0
    full, lesions = _render_full(job)
    root = Path(job.root)
    written = 0
    atomic_write_bytes(root / job.folder / _file_name(job.layout, 0), _dicom_bytes(
        full, patient=job.case, study_uid=job.study_uid, series_uid=job.series_uid, sop_uid=job.sop_uid,
        description=FULL_DESCRIPTION, study_date=job.study_date, side=job.side, view=job.view, instance=1))
    written += 1
    for roi, mask in lesions:
        items = {
            roi.mask_index: (mask.astype(np.uint8) * 255, MASK_DESCRIPTION, roi.mask_sop),
            1 - roi.mask_index: (_crop(full, mask), CROP_DESCRIPTION, roi.crop_sop),
        }
        for index, (pixels, description, sop) in sorted(items.items()):
            atomic_write_bytes(root / roi.folder / _file_name(job.layout, index), _dicom_bytes(
                pixels, patient=roi.roi_case, study_uid=roi.study_uid, series_uid=roi.series_uid, sop_uid=sop,
                description=description, study_date=roi.study_date, side=job.side, view=job.view,
                instance=index + 1))
            written += 1
    return written


# ----------------------------------------------------------------------------------------- writing

def _csv_bytes(columns: tuple[str, ...], rows: list[list[str]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _file_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.2f} KB"


def _metadata_bytes(root: Path, rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(METADATA_COLUMNS), lineterminator="\r\n")
    writer.writeheader()
    for i, row in enumerate(rows):
        folder = root / row["File Location"][2:].replace("\\", "/")
        size = sum(p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file())
        # A fixed, fake download time keeps the file byte-identical across runs.
        stamp = f"2024-01-01T00:{(i // 60) % 60:02d}:{i % 60:02d}.000"
        writer.writerow({**row, "File Size": _file_size(size), "Download Timestamp": stamp})
    return buf.getvalue().encode("utf-8")


def _readme(result: SynthResult, args: dict[str, Any]) -> str:
    meta = f"\n  {result.metadata.name}: NBIA's per-series table (Series UID, File Location, ...)" \
        if result.metadata else ""
    return f"""Synthetic CBIS-DDSM-shaped download written by `mammolab synth` (MammoLab).

NOT REAL PATIENT DATA. Every image is generated: breast-shaped 16-bit mammograms with masses and
calcification clusters whose look depends on pathology (benign: round, smooth, moderate density /
few large round specks; malignant: irregular, spiculated, denser / many small pleomorphic specks).
It reproduces the official download's structure and quirks so the MammoLab pipeline can be run and
tested without the 163 GB original.

Arguments: {json.dumps(args, sort_keys=True)}
Layout: {result.layout} ({'current NBIA Data Retriever: CBIS-DDSM/<case>/.../1-1.dcm' if result.layout == 'nbia'
                         else 'older NBIA: <case>/<date-DDSM-n>/<1-description-n>/000000.dcm'})
Patients: {result.patients}; full mammograms: {result.images}; ROI series (abnormality x view): {result.rois}

Contents:
  csv/: the four case-description CSVs (mass/calc x train/test) with the official columns and quirks
  download/: the DICOM tree (full mammogram, and per abnormality one series holding the cropped
      lesion and its full-size binary mask, in either order){meta}
  synth.json: the arguments and a completion marker

Turn it into a dataset with:
  {result.organize_command()}
"""


def _check_out(out: Path, args: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a non-empty OUT that is not this same synth output; return its synth.json if it is."""
    if out.exists() and not out.is_dir():
        raise MammoLabError(f"OUT: {out} is a file (expected a folder to create, or an empty one)")
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):  # our own lock is not content
        return None
    marker = out / "synth.json"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise MammoLabError(f"OUT: {out} is not empty and is not a 'mammolab synth' output (no readable "
                            "synth.json); choose an empty or new folder") from None
    if info.get("args") != args:
        old = info.get("args") or {}
        diff = ", ".join(f"{k}={old.get(k)!r} (now {v!r})" for k, v in args.items() if old.get(k) != v)
        raise MammoLabError(f"OUT: {out} holds a synth output made with different arguments ({diff}); "
                            "choose another folder or delete it")
    return info


@locks_output("out", name="synth")  # one writer per OUT; a killed synth's temp files removed
def synthesize(out: str | Path, patients: int = 40, image_size: int = 1024, layout: str = "legacy",
               seed: int = 0, workers: int | None = None, difficulty: str = "easy") -> SynthResult:
    """Write a synthetic CBIS-DDSM download (DICOM tree + the four CSVs) under ``out``.

    ``patients`` (at least 6) sets the size; ``image_size`` is the full mammograms' height in
    pixels (width is 0.6x); ``layout`` is ``legacy`` or ``nbia``; ``workers`` renders images in
    parallel and does not change the output; ``difficulty`` (``easy``, ``medium``, ``hard``; see
    :class:`Difficulty`) makes the lesions smaller, fainter and more alike between classes. Returns
    where everything is; see the module docstring for the structure and the quirks reproduced.
    """
    if layout not in LAYOUTS:
        raise MammoLabError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(patients, int) or patients < MIN_PATIENTS or patients > 99999:
        raise MammoLabError(f"--patients: expected an integer from {MIN_PATIENTS} (the fewest that hold every "
                            f"class in train and test) to 99999, got {patients!r}")
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise MammoLabError(f"--film-height (image_size): expected an integer from {MIN_IMAGE_SIZE} to "
                            f"{MAX_IMAGE_SIZE} pixels, got {image_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise MammoLabError(f"--seed: expected a non-negative integer, got {seed!r}")
    if difficulty not in DIFFICULTIES:
        raise MammoLabError(f"--difficulty: expected one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    out = Path(out)
    args: dict[str, Any] = {"patients": patients, "image_size": image_size, "layout": layout, "seed": seed,
                            "generator_version": GENERATOR_VERSION}
    if difficulty != "easy":  # easy outputs keep the synth.json they always had
        args["difficulty"] = difficulty
    info = _check_out(out, args)
    plan = _plan(out, patients, image_size, layout, seed, difficulty)
    download = out / "download"
    csv_dir = out / "csv"
    metadata = download / "metadata.csv" if layout == "nbia" else None
    n_rois = sum(len(j.rois) for j in plan.jobs)
    result = SynthResult(
        out=out, download_dir=download, csv_dir=csv_dir, metadata=metadata, layout=layout, patients=patients,
        images=len(plan.jobs), rois=n_rois, files=len(plan.jobs) + 2 * n_rois,
        csv_rows={name: len(r) for name, r in plan.csv_rows.items()},
    )
    if info is not None and info.get("complete"):
        result.skipped = True
        return result
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "synth.json", {"generator": "mammolab synth", "args": args, "complete": False})
    _, errors = parallel_map(render_job, plan.jobs, workers=workers, description="synthesizing mammograms")
    if errors:  # render_job raises MammoLabError only for bugs in its input; surface the first
        raise MammoLabError(f"synth: {len(errors)} image(s) failed, first: {errors[0][1]}")
    for name, rows in plan.csv_rows.items():
        columns = MASS_COLUMNS if name.startswith("mass") else CALC_COLUMNS
        atomic_write_bytes(csv_dir / name, _csv_bytes(columns, rows))
    if metadata is not None:
        atomic_write_bytes(metadata, _metadata_bytes(download, plan.metadata_rows))
    atomic_write_text(out / "README.txt", _readme(result, args))
    summary = {"images": result.images, "rois": result.rois, "files": result.files, "csv_rows": result.csv_rows}
    write_json(out / "synth.json", {"generator": "mammolab synth", "args": args, "complete": True, **summary})
    return result
