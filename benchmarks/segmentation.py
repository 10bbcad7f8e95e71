"""Benchmark: breast segmentation (``crop_border`` + ``remove_annotations``) on real digitised films.

Runs today's ops and a baseline revision's ops (``git show REV:src/mammolab/preprocess/ops.py``) on
the mini-MIAS dev films in ``../shared/data/mias-dev`` (162 films, 1024x1024, with ``Info.txt``), and
prints for each:

* residue: the share of films where something besides the breast is left, as estimated by
  :func:`mammolab.preprocess.ops.segmentation_residue` (label-like patches: bright, flat, with a
  sharp edge; pieces not connected to the breast) on the result;
* lesions kept: the share of lesions with coordinates whose central half (centre +- radius/2; the
  y origin of ``Info.txt`` is at the bottom) is at least 95% non-black after the two steps.

Each figure is also printed per half of the films (patient = (n+1) div 2; half A: patients
1, 5, 9 ...; half B: 3, 7, 11 ...): the chest-wall sliver rule was designed looking at half A and
checked on half B. ``slivers`` counts films whose result still carries a film-edge sliver at the chest
wall (:func:`mammolab.preprocess.ops.chest_wall_slivers`, the report's looser check).

``--sheets DIR`` writes before | after contact sheets (lesion circles red, kept outline green) to look
at: the automatic residue figure is an estimate, the visual count is the measure. Exits 0 with a
note when ``../shared`` is absent (a user's clone). Run: ``python benchmarks/segmentation.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mias-dev"
#: The last revision before the segmentation rework (issue 13), the "before" of the README's figures.
BASELINE = "ac6ab3ce2bbd63950ea8df2fc511bc3bbd165d84"


def read_info(path: Path) -> dict[str, list[tuple[int, int, int]]]:
    """``Info.txt`` lesions with coordinates: film name -> [(x, row, radius)] (row = 1024 - Y)."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[0].startswith("mdb") and parts[4].isdigit() and parts[5].isdigit():
            out.setdefault(parts[0], []).append((int(parts[4]), 1024 - int(parts[5]), int(parts[6])))
    return out


def load_ops(rev: str | None) -> ModuleType:
    """The ops module of the working tree (``rev`` None) or of a git revision."""
    if rev is None:
        from mammolab.preprocess import ops

        return ops
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/mammolab/preprocess/ops.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "ops_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("ops_baseline", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ops_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def segment(ops: ModuleType, img: np.ndarray) -> np.ndarray:
    """crop_border then remove_annotations (default parameters), put back on the input's canvas."""
    out = ops.remove_annotations(ops.crop_border(ops.Sample(img)))
    x0, y0, x1, y1 = out.meta["crop"]
    full = np.zeros_like(img)
    full[y0:y1, x0:x1] = out.image
    return full


def lesion_kept(img: np.ndarray, out: np.ndarray, x: int, row: int, r: int) -> bool:
    """The central half of the lesion's box is at least 95% non-black, counting only the pixels that
    were non-black in the input: a mini-MIAS box near the film's side reaches into the black matrix
    the film is centred in, which no segmentation can make non-black."""
    h, w = out.shape
    half = max(1, r // 2)
    y0, y1, x0, x1 = max(0, row - half), min(h, row + half + 1), max(0, x - half), min(w, x + half + 1)
    film = img[y0:y1, x0:x1] > 0
    return not film.any() or float((out[y0:y1, x0:x1][film] > 0).mean()) >= 0.95


def sheet(rows: list[tuple[str, np.ndarray, np.ndarray, list[tuple[int, int, int]], bool]], path: Path,
          cell: int = 200) -> None:
    """Before (kept outline green) | after, lesion circles red, flagged films' names red, 4 pairs a row."""
    cells = []
    for name, img, out, lesions, flagged in rows:
        s = cell / max(img.shape)
        size = (int(img.shape[1] * s), int(img.shape[0] * s))
        a = cv2.cvtColor(cv2.resize(img, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        b = cv2.cvtColor(cv2.resize(out, size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        m = cv2.resize((out > 0).astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(a, contours, -1, (0, 200, 0), 1)
        for x, row, r in lesions:
            for c in (a, b):
                cv2.circle(c, (int(x * s), int(row * s)), max(2, int(r * s)), (0, 0, 255), 1)
        cv2.putText(a, name, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255) if flagged else (0, 255, 255), 1)
        cells.append(np.hstack([a, b, np.full((size[1], 4, 3), (255, 0, 0), np.uint8)]))
    per, lines = 4, []
    for i in range(0, len(cells), per):
        chunk = cells[i:i + per] + [np.zeros_like(cells[0])] * (per - len(cells[i:i + per]))
        lines.append(np.hstack(chunk))
    path.parent.mkdir(parents=True, exist_ok=True)
    for j in range(0, len(lines), 5):
        cv2.imwrite(str(path.with_name(f"{path.stem}_{j // 5:02d}.png")), np.vstack(lines[j:j + 5]))


def half(name: str) -> str:
    """'A' or 'B': which hold-out half a mini-MIAS film ``mdbNNN`` belongs to (by patient)."""
    patient = (int(name[3:]) + 1) // 2
    return "A" if patient % 4 == 1 else "B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/*.png and Info.txt")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' ops ('' to skip)")
    ap.add_argument("--sheets", type=Path, default=None, help="write before|after contact sheets here")
    ap.add_argument("--limit", type=int, default=0, help="only the first N films (0: all)")
    args = ap.parse_args()
    images = sorted((args.data / "images").glob("*.png"))
    if not images or not (args.data / "Info.txt").is_file():
        print(f"segmentation benchmark: no films at {args.data} (../shared is not here); nothing to measure")
        return
    if args.limit:
        images = images[: args.limit]
    info = read_info(args.data / "Info.txt")
    from mammolab.preprocess.ops import segmentation_residue

    versions = [("after (working tree)", None)] + ([(f"before ({args.baseline[:8]})", args.baseline)]
                                                    if args.baseline else [])
    for title, rev in versions:
        ops = load_ops(rev)
        flagged, lesions, kept, lost, rows, cut = [], 0, 0, [], [], []
        per = {h: {"films": 0, "flagged": 0, "slivers": 0, "lesions": 0, "kept": 0} for h in "AB"}
        t0 = time.perf_counter()
        for path in images:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            out = segment(ops, img)
            res = segmentation_residue(out)
            ph = per[half(path.stem)]
            ph["films"] += 1
            if res["suspect"]:
                flagged.append(path.stem)
                ph["flagged"] += 1
            ph["slivers"] += int(res.get("sliver", 0) > 0)
            check = ops.remove_annotations(ops.crop_border(ops.Sample(img))).meta.get("segmentation")
            if check and check["tissue_removed"] > 0.05:
                cut.append(f"{path.stem}:{check['tissue_removed']:.0%}")
            for x, row, r in info.get(path.stem, []):
                lesions += 1
                ph["lesions"] += 1
                if lesion_kept(img, out, x, row, r):
                    kept += 1
                    ph["kept"] += 1
                else:
                    lost.append(f"{path.stem}@({x},{row})")
            if args.sheets:
                rows.append((path.stem[3:], img, out, info.get(path.stem, []), bool(res["suspect"])))
        dt = time.perf_counter() - t0
        n = len(images)
        print(f"{title}: {n} films, residue (automatic) {len(flagged)}/{n} = {len(flagged) / n:.1%}; "
              f"lesions kept {kept}/{lesions} = {kept / max(1, lesions):.1%}; {dt / n * 1000:.0f} ms/film")
        for h, f in per.items():
            print(f"  half {h}: {f['films']} films, clean (not flagged) {1 - f['flagged'] / max(1, f['films']):.1%}, "
                  f"chest-wall sliver left {f['slivers']}, lesions kept {f['kept']}/{f['lesions']}")
        print(f"  flagged: {' '.join(flagged) or '-'}")
        if lost:
            print(f"  lesions lost: {' '.join(lost)}")
        if cut:
            print(f"  more than 5% of the first-guess breast removed (pipeline suspects): {' '.join(cut)}")
        if args.sheets:
            sheet(rows, args.sheets / ("after" if rev is None else "before"))


if __name__ == "__main__":
    main()
