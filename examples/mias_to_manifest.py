"""Turn mini-MIAS's ``Info.txt`` into a manifest for ``mammolab organize --manifest``.

A worked example of bringing another collection to MammoLab: a CSV with one row per lesion
(``path, label, patient_id`` plus a box) is all ``organize --manifest`` needs.

mini-MIAS (Suckling et al. 1994; research use, see its Licence.txt) ships 1024x1024 films
``mdbNNN.pgm`` and one label file whose rows read ``REFNUM BG CLASS SEVERITY X Y RADIUS``:

- X, Y is the lesion's centre with the origin at the **bottom-left** corner, so its image row is
  ``height - Y``; RADIUS encloses the lesion, so its box is the centre +/- RADIUS (a box that crosses
  the film's edge is clipped by organize, and reported).
- Films come in pairs, left (even number) and right (odd number) breast of one woman, so the
  patient is ``(n + 1) // 2``; both films of a woman must land in the same split.
- Some calcification rows have no coordinates (spread over the film), a film may have several rows,
  and NORM films have none.

Choices made here (and why):

- ``--kind roi`` / ``crop`` (default): only lesion rows *with* coordinates. A patch needs a place to
  cut; a row without one, and every NORM film, is left out (counted on the summary line), since a
  patch of normal tissue labelled "benign" would teach the model something else than benign lesions.
- ``--kind full``: every film. Lesion rows keep their box (or none), and a NORM film becomes one row
  labelled benign: the binary question becomes "malignant or not", as in CBIS-DDSM's full-image use.
  organize merges a film's rows into one image, malignant if any of its lesions is.

Usage::

    python examples/mias_to_manifest.py ~/mias --out ~/mias-work/manifest.csv            # roi rows
    mammolab organize --manifest ~/mias-work/manifest.csv --out ~/mias-work/dataset --kind roi --roi-size 128

``~/mias`` holds ``Info.txt`` and the films (``images/mdbNNN.png`` or ``.pgm``, or beside Info.txt).
Paths in the manifest are written relative to the manifest's folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SEVERITY = {"B": "benign", "M": "malignant"}
COLUMNS = ["path", "label", "patient_id", "side", "view", "abnormality", "pathology", "density",
           "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(.*)$")


@dataclass
class InfoRow:
    """One line of Info.txt."""

    ref: str
    background: str
    abnormality: str
    severity: str | None
    x: float | None
    y: float | None
    radius: float | None

    @property
    def number(self) -> int:
        return int(self.ref[3:])


def parse_info(text: str) -> list[InfoRow]:
    """Every data line of Info.txt (the free-text header and notes are skipped)."""
    rows: list[InfoRow] = []
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if not m:
            continue
        ref, bg, cls, rest = m.groups()
        parts = rest.split()
        severity = parts[0] if parts and parts[0] in SEVERITY else None
        coords = parts[1:4] if severity else []
        x = y = r = None
        if len(coords) == 3 and all(re.fullmatch(r"\d+(\.\d+)?", c) for c in coords):
            x, y, r = (float(c) for c in coords)
        rows.append(InfoRow(ref, bg, cls, severity, x, y, r))
    return rows


def find_film(root: Path, ref: str) -> Path | None:
    """The film of ``ref`` under ``root``/images or ``root`` (PNG preferred, then PGM)."""
    for folder in (root / "images", root):
        for ext in (".png", ".pgm", ".PNG", ".PGM"):
            if (folder / f"{ref}{ext}").is_file():
                return folder / f"{ref}{ext}"
    return None


def manifest_rows(rows: list[InfoRow], root: Path, out_dir: Path, kind: str) -> tuple[list[dict[str, str]],
                                                                                       dict[str, int]]:
    """Manifest rows for ``kind`` and what was left out, by reason."""
    out: list[dict[str, str]] = []
    left_out = {"no coordinates": 0, "normal films": 0, "film not found": 0}
    heights: dict[str, int] = {}
    for r in rows:
        film = find_film(root, r.ref)
        if film is None:
            left_out["film not found"] += 1
            continue
        if r.severity is None and kind != "full":
            left_out["normal films"] += 1
            continue
        if r.x is None and kind != "full":
            left_out["no coordinates"] += 1
            continue
        row = {
            "path": Path(os.path.relpath(film, out_dir)).as_posix(),
            "label": SEVERITY.get(r.severity or "", "benign"),
            "patient_id": f"mias{(r.number + 1) // 2:03d}",
            "side": "L" if r.number % 2 == 0 else "R",
            "view": "MLO",
            "abnormality": r.abnormality.lower(),
            "pathology": {"B": "BENIGN", "M": "MALIGNANT"}.get(r.severity or "", "NORMAL"),
            "density": r.background,
            "bbox_x0": "", "bbox_y0": "", "bbox_x1": "", "bbox_y1": "",
        }
        if r.x is not None and r.y is not None and r.radius is not None:
            if r.ref not in heights:
                with Image.open(film) as im:
                    heights[r.ref] = im.size[1]
            row_c = heights[r.ref] - r.y  # origin at the bottom-left: image row = height - Y
            row.update(bbox_x0=f"{r.x - r.radius:g}", bbox_y0=f"{row_c - r.radius:g}",
                       bbox_x1=f"{r.x + r.radius:g}", bbox_y1=f"{row_c + r.radius:g}")
        out.append(row)
    return out, left_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mias", type=Path, help="folder with Info.txt and the films (images/mdbNNN.png or .pgm)")
    ap.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    ap.add_argument("--kind", choices=("roi", "crop", "full"), default="roi",
                    help="which rows to write: lesions with coordinates (roi, crop) or every film (full)")
    args = ap.parse_args(argv)
    info = args.mias / "Info.txt"
    if not info.is_file():
        print(f"error: {info} not found (expected mini-MIAS's Info.txt)", file=sys.stderr)
        return 2
    rows = parse_info(info.read_text(encoding="latin-1"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_rows, left_out = manifest_rows(rows, args.mias, args.out.parent.resolve(), args.kind)
    if not out_rows:
        print(f"error: no usable row in {info} (are the films under {args.mias}/images?)", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(out_rows)
    tmp.replace(args.out)
    films = len({r["path"] for r in out_rows})
    malignant = sum(r["label"] == "malignant" for r in out_rows)
    skipped = ", ".join(f"{v} {k}" for k, v in left_out.items() if v) or "none"
    print(f"{args.out}: {len(out_rows)} rows ({malignant} malignant) from {films} films of "
          f"{len({r['patient_id'] for r in out_rows})} patients; left out: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
