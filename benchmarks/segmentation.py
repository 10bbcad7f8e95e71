"""Benchmark: breast segmentation (``crop_border`` + ``remove_annotations``) on real digitised films.

Runs today's ops and a baseline revision's ops (``git show REV:src/mammolab/preprocess/ops.py``) on
the mini-MIAS dev films in ``../shared/data/mias-dev`` (162 films, 1024x1024, with ``Info.txt``), and
prints for each, over all films and per hold-out half (patient = (n+1) div 2; half A: patients
1, 5, 9 ...; half B: 3, 7, 11 ...; the rules were designed looking at half A and checked on half B):

* nothing but the breast: the share of films where nothing besides the breast is left, as estimated
  by :func:`mammolab.preprocess.ops.segmentation_residue` on the result (label-like patches; pieces
  not connected to the breast; a straight edge along a side; a film-edge sliver at the chest wall,
  judged on the input's pixels, the report's looser check); ``chest-wall sliver left`` counts the
  last kind alone;
* lesions kept whole: of the lesions whose centre lies on the breast (the input there is tissue:
  at least half the film's Otsu level; the y origin of ``Info.txt`` is at the bottom), those whose
  whole box (centre +- radius) keeps every tissue pixel after the two steps;
* tissue cut by the border crop: films where the crop window leaves out more than 0.1% of the breast
  as segmented without the crop (the chest wall, the pectoral region, the top edge);
* speed: films per second on one core (one process, OpenCV on one thread) for the two steps alone,
  and the ratio to the baseline measured in the same run (the goal: at least 8 films/s/core).

``--sheets DIR`` writes before | after contact sheets (lesion circles red, kept outline green, flagged
films' names red) to look at: the automatic figure is an estimate, the visual count is the measure.
Exits 0 with a note when ``../shared`` is absent (a user's clone). Run: ``python benchmarks/segmentation.py``.
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


def on_breast(img: np.ndarray, x: int, row: int, level: float) -> bool:
    """Whether a lesion centre lies on the breast: the input there is tissue (at least half the film's
    Otsu level), not the film base beside the skin line nor the black matrix (a few mini-MIAS centres
    are given there)."""
    h, w = img.shape
    y0, y1, x0, x1 = max(0, row - 2), min(h, row + 3), max(0, x - 2), min(w, x + 3)
    return float(np.median(img[y0:y1, x0:x1])) >= 0.5 * level


def lesion_kept(img: np.ndarray, out: np.ndarray, x: int, row: int, r: int, level: float) -> bool:
    """The lesion's whole box (centre +- radius, clipped to the image) is kept: every tissue pixel in
    it (at least half the film's Otsu level: not the film base nor the matrix a box near the skin line
    or the film's side reaches into, which no segmentation keeps) is non-black after the two steps."""
    h, w = out.shape
    y0, y1, x0, x1 = max(0, row - r), min(h, row + r + 1), max(0, x - r), min(w, x + r + 1)
    tissue = img[y0:y1, x0:x1] >= 0.5 * level
    return not tissue.any() or bool((out[y0:y1, x0:x1][tissue] > 0).all())


def crop_cut(ops: ModuleType, img: np.ndarray, crop: list[int]) -> float:
    """The share of the breast (as segmented without the border crop) that the crop window leaves out:
    tissue cut at the chest wall or at the top/bottom edge. 0 when the crop removes only border."""
    whole = ops.remove_annotations(ops.Sample(img)).image > 0
    x0, y0, x1, y1 = crop
    inside = int(whole[y0:y1, x0:x1].sum())
    total = int(whole.sum())
    return (total - inside) / max(1, total)


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
    from mammolab.preprocess.ops import segmentation_residue, thumbnail

    versions = [("after (working tree)", None)] + ([(f"before ({args.baseline[:8]})", args.baseline)]
                                                    if args.baseline else [])
    films = [(p.stem, cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in images]
    speed: dict[str | None, float] = {}
    for title, rev in versions:
        ops = load_ops(rev)
        # Speed: the two steps alone, one process, one thread for OpenCV (films/s on one core).
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        segment(ops, films[0][1])  # warm-up
        t0 = time.perf_counter()
        results = [(name, img, ops.remove_annotations(ops.crop_border(ops.Sample(img)))) for name, img in films]
        speed[rev] = len(films) / (time.perf_counter() - t0)
        cv2.setNumThreads(threads)
        flagged, lesions, kept, lost, rows, cut, off = [], 0, 0, [], [], [], []
        per = {h: {"films": 0, "flagged": 0, "slivers": 0, "lesions": 0, "kept": 0, "cut": 0} for h in "AB"}
        for name, img, res in results:
            x0, y0, x1, y1 = res.meta["crop"]
            out = np.zeros_like(img)
            out[y0:y1, x0:x1] = res.image
            # The residue estimate, judging a chest-wall band's edge and brightness on the input (the
            # per-image check does the same with the thumbnail it has).
            check = segmentation_residue(out, source=thumbnail(img)[0])
            ph = per[half(name)]
            ph["films"] += 1
            if check["suspect"]:
                flagged.append(name)
                ph["flagged"] += 1
            ph["slivers"] += int(check.get("sliver", 0) > 0)
            share = crop_cut(ops, img, [x0, y0, x1, y1])
            if share > 0.001:
                cut.append(f"{name}:{share:.1%}")
                ph["cut"] += 1
            level, _ = cv2.threshold(img[img > 0], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            for x, row, r in info.get(name, []):
                if not on_breast(img, x, row, level):
                    off.append(f"{name}@({x},{row})")
                    continue
                lesions += 1
                ph["lesions"] += 1
                if lesion_kept(img, out, x, row, r, level):
                    kept += 1
                    ph["kept"] += 1
                else:
                    lost.append(f"{name}@({x},{row})")
            if args.sheets:
                rows.append((name[3:], img, out, info.get(name, []), bool(check["suspect"])))
        n = len(results)
        print(f"{title}: {n} films, nothing but the breast (not flagged) {1 - len(flagged) / n:.1%}; lesions on the "
              f"breast kept whole {kept}/{lesions}; {speed[rev]:.1f} films/s/core")
        for h, f in per.items():
            clean = 1 - f["flagged"] / max(1, f["films"])
            print(f"  half {h}: {f['films']} films, nothing but the breast {clean:.1%}, "
                  f"chest-wall sliver left {f['slivers']}, lesions kept whole {f['kept']}/{f['lesions']}, "
                  f"tissue cut by the border crop {f['cut']}")
        print(f"  flagged: {' '.join(flagged) or '-'}")
        if lost:
            print(f"  lesions not kept whole: {' '.join(lost)}")
        if off:
            print(f"  lesion centres off the breast (not counted): {' '.join(off)}")
        if cut:
            print(f"  tissue cut by the border crop (share of the breast): {' '.join(cut)}")
        if args.sheets:
            sheet(rows, args.sheets / ("after" if rev is None else "before"))
    if args.baseline:
        print(f"speed: {speed[None]:.1f} vs {speed[args.baseline]:.1f} films/s/core (baseline "
              f"{args.baseline[:8]}), ratio {speed[None] / speed[args.baseline]:.2f}; goal >= 8 films/s/core")


if __name__ == "__main__":
    main()
