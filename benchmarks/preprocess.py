"""Benchmark: the fused preprocessing pipeline against the classic one-script-per-step recipe.

Generates full-size 16-bit films (3000x5000 by default: film edge, breast with texture and noise,
burnt-in label, lesion with mask), writes them as an organized dataset, then in the same run:

* fused: ``mammolab.preprocess.preprocess`` with the default config (read once, every step in memory,
  write once), end to end from the dataset's PNGs to the output dataset and manifest;
* staged: the classic scripts, one pass per step, each pass reading the previous step's PNGs and
  writing its own (16-bit PNG at OpenCV's default compression), with the same steps and parameters,
  so the final images are the same (checked pixel for pixel).

Prints images/s/core for both, their ratio, and where the fused pipeline's time goes (PNG decode,
each step, PNG encode). Run: ``python benchmarks/preprocess.py [--n 4] [--workers 1]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

os.environ.setdefault("MAMMOLAB_QUIET", "1")

from mammolab.data import manifest as mf  # noqa: E402
from mammolab.data.organize import OrganizeConfig  # noqa: E402
from mammolab.io.images import read_image, write_png  # noqa: E402
from mammolab.io.png import decode_plain_png  # noqa: E402
from mammolab.preprocess.ops import Sample  # noqa: E402
from mammolab.preprocess.pipeline import Pipeline, load_preprocess_config, load_sample, preprocess  # noqa: E402
from mammolab.progress import parallel_map  # noqa: E402


def make_film(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A full-size 16-bit film: noisy film base, breast, slanted film edge, label, lesion (+ its mask)."""
    rng = np.random.default_rng(seed)
    wall_left = seed % 2 == 0
    yy, xx = np.ogrid[0:h, 0:w]
    wall_x = 0 if wall_left else w - 1
    r2 = ((xx - wall_x) / (0.7 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2
    breast = r2 < 1.0
    tex = cv2.resize(cv2.GaussianBlur(rng.standard_normal((h // 16, w // 16), dtype=np.float32), (0, 0), 2.0),
                     (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.where(breast, 14000 + 26000 * (1 - r2) + 4000 * tex, 900).astype(np.float32)
    img += rng.standard_normal((h, w), dtype=np.float32) * 350  # film grain and scanner noise
    cx, cy = int(w * (0.3 if wall_left else 0.7)), int(h * 0.55)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, cy), (140, 180), 20, 0, 360, 255, -1)
    img[mask > 0] += 9000
    label = np.zeros((h, w), np.uint8)
    lx = w - 900 if wall_left else 100
    cv2.putText(label, "R MLO", (lx, 300), cv2.FONT_HERSHEY_SIMPLEX, 6.0, 255, 14, cv2.LINE_AA)
    img[label > 0] = 60000
    edge = np.arange(h)[:, None] * 20 // h + 30  # a slanted film edge, 30-50 px, on the chest-wall side
    cols = np.arange(w)[None, :]
    img[(cols < edge) if wall_left else (cols >= w - edge)] = 65535
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return np.clip(img, 0, 65535).astype(np.uint16), mask, box


def write_dataset(root: Path, n: int, h: int, w: int) -> Path:
    rows = []
    for i in range(n):
        img, mask, box = make_film(i, h, w)
        split, label = ("train", "val", "test")[i % 3], mf.BINARY_CLASSES[i % 2]
        rel = f"{split}/{label}/film_{i:03d}.png"
        # As 'mammolab organize' writes them by default: images 'stored', masks run-length coded.
        write_png(root / rel, img, mode=OrganizeConfig().png)
        write_png(root / "masks" / rel, mask, mode="rle")
        rows.append({"path": rel, "split": split, "label": label, "patient_id": f"P{i:03d}", "mask": f"masks/{rel}",
                     **dict(zip(mf.BBOX_COLUMNS, box, strict=True)), "boxes": mf.format_boxes([box]),
                     "width": w, "height": h, "image_id": f"film_{i:03d}", "target": i % 2})
    mf.write_manifest(pd.DataFrame(rows), root)
    mf.write_info(root, {"stage": "organize", "config": {"kind": "full"}, "classes": list(mf.BINARY_CLASSES),
                         "labels": "binary"})
    return root


def cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes: a per-core cost that other
    programs sharing the machine do not inflate (wall time is printed too)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------------ staged baseline

def _staged_step(job: tuple[str, str, str, dict, int]) -> tuple[str, list[list[float]]]:
    """One classic script on one image: read its PNGs, apply one step, write PNGs (default compression)."""
    src, dst, rel, row, index = job
    cv2.setNumThreads(1)
    img = cv2.imread(str(Path(src) / rel), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(Path(src) / "masks" / rel), cv2.IMREAD_UNCHANGED)
    op = _STEPS[index]
    out = op(Sample(img, mask, row["boxes"]))
    (Path(dst) / rel).parent.mkdir(parents=True, exist_ok=True)
    (Path(dst) / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(Path(dst) / rel), out.image)
    cv2.imwrite(str(Path(dst) / "masks" / rel), out.mask)
    return rel, out.boxes.tolist()


_STEPS = load_preprocess_config().ops()


def staged(dataset: Path, work: Path, workers: int) -> Path:
    df = mf.load_manifest(dataset)
    boxes = {r["path"]: mf.parse_boxes(r["boxes"]) for _, r in df.iterrows()}
    src = dataset
    for i in range(len(_STEPS)):
        dst = work / f"step{i + 1}_{_STEPS[i].name}"
        jobs = [(str(src), str(dst), rel, {"boxes": boxes[rel]}, i) for rel in boxes]
        results, errors = parallel_map(_staged_step, jobs, workers=workers, description=_STEPS[i].name)
        if errors:
            raise SystemExit(f"staged baseline failed: {errors[0]}")
        boxes = dict(results)
        src = dst
    return src


# ------------------------------------------------------------------------------------------ breakdown

def breakdown(dataset: Path) -> dict[str, float]:
    """CPU milliseconds per image of each part of the fused pipeline, single-threaded, in one process."""
    cv2.setNumThreads(1)
    pipeline = Pipeline.from_config(load_preprocess_config())
    df = mf.load_manifest(dataset)
    times: dict[str, list[float]] = {"decode (image + mask PNG)": []}
    times.update({op.name: [] for op in pipeline.ops})
    times["encode (image + mask PNG)"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in df.to_dict(orient="records"):
            t = time.process_time()
            s = load_sample(dataset, row)
            times["decode (image + mask PNG)"].append(time.process_time() - t)
            for op in pipeline.ops:
                t = time.process_time()
                s = op(s)
                times[op.name].append(time.process_time() - t)
            t = time.process_time()
            write_png(Path(tmp) / "a.png", s.image)
            write_png(Path(tmp) / "m.png", s.mask)
            times["encode (image + mask PNG)"].append(time.process_time() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def decode_ms(dataset: Path) -> tuple[float, float, float]:
    """Median CPU ms to decode one input film: as written (``write_png``) by MammoLab's reader and by
    OpenCV, and by OpenCV when written with OpenCV's default PNG settings."""
    cv2.setNumThreads(1)
    ours, opencv, default = [], [], []
    for path in sorted(p for p in dataset.rglob("*.png") if "masks" not in p.parts):
        data = path.read_bytes()
        t = time.process_time()
        decode_plain_png(data)
        ours.append(time.process_time() - t)
        buf = np.frombuffer(data, np.uint8)
        t = time.process_time()
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        opencv.append(time.process_time() - t)
        enc = cv2.imencode(".png", img)[1]
        t = time.process_time()
        cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
        default.append(time.process_time() - t)
    return tuple(1000 * float(np.median(v)) for v in (ours, opencv, default))  # type: ignore[return-value]


def fast_png_ms(dataset: Path, work: Path, repeats: int = 3) -> tuple[float, float]:
    """Median CPU ms to read one film written with ``--png fast`` (compressed, rows filtered): by
    ``read_image`` (MammoLab's reader must notice it cannot read the file and hand it to OpenCV) and
    by ``cv2.imread`` alone, the baseline it must not be slower than."""
    cv2.setNumThreads(1)
    ours, opencv = [], []
    for i, path in enumerate(sorted(p for p in dataset.rglob("*.png") if "masks" not in p.parts)):
        fast = work / f"fast_{i}.png"
        write_png(fast, read_image(path), mode="fast")
        for _ in range(repeats):
            t = time.process_time()
            read_image(fast)
            ours.append(time.process_time() - t)
            t = time.process_time()
            cv2.imread(str(fast), cv2.IMREAD_UNCHANGED)
            opencv.append(time.process_time() - t)
    return 1000 * float(np.median(ours)), 1000 * float(np.median(opencv))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="number of generated films (default 4)")
    ap.add_argument("--height", type=int, default=5000)
    ap.add_argument("--width", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes for both runs (default 1: a clean per-core figure)")
    ap.add_argument("--rounds", type=int, default=3, help="fused runs; the median is reported (default 3)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated data and outputs in this folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mammolab-bench-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"generating {args.n} films of {args.width}x{args.height} 16-bit ...", flush=True)
        dataset = write_dataset(work / "dataset", args.n, args.height, args.width)
        mb = sum(p.stat().st_size for p in (dataset).rglob("*.png") if "masks" not in p.parts) / args.n / 1e6
        cfg = load_preprocess_config()
        steps = " -> ".join(op.name for op in cfg.ops())
        print(f"default pipeline: {steps}; {args.workers} worker(s); input PNG {mb:.1f} MB/image")

        # The fused pipeline several times (a fresh output each time): the median is the figure, the
        # spread shows how much the machine's load moved it. The staged baseline takes ~15x longer: once.
        fused_runs = []
        for r in range(args.rounds):
            out = work / f"fused{r}"
            t, c = time.perf_counter(), cpu_seconds()
            res = preprocess(dataset, out, workers=args.workers)
            fused_runs.append((time.perf_counter() - t, cpu_seconds() - c))
            assert res.processed == args.n and not res.skipped, res.skipped
            if r < args.rounds - 1:
                shutil.rmtree(out)
        fused_s = float(np.median([w for w, _ in fused_runs]))
        fused_cpu = float(np.median([c for _, c in fused_runs]))
        ms = breakdown(dataset)  # in the fused runs' warm process state, before the staged baseline

        t, c = time.perf_counter(), cpu_seconds()
        final = staged(dataset, work / "staged", args.workers)
        staged_s, staged_cpu = time.perf_counter() - t, cpu_seconds() - c

        same = True
        for _, row in res.manifest.iterrows():
            a, b = read_image(out / row["path"]), read_image(final / row["path"])
            ma, mb_ = read_image(out / row["mask"]), read_image(final / "masks" / row["path"])
            same &= bool(np.array_equal(a, b) and np.array_equal(ma, mb_))

        cores = args.workers
        fused_rate, staged_rate = args.n / fused_s / cores, args.n / staged_s / cores
        fused_cpu_rate, staged_cpu_rate = args.n / fused_cpu, args.n / staged_cpu
        spread = ", ".join(f"{args.n / w / cores:.2f}" for w, _ in fused_runs)
        print(f"fused  (read once, all steps in memory, write once): wall {fused_s:6.2f} s = {fused_rate:5.2f} "
              f"images/s/core; cpu {fused_cpu:6.2f} s = {fused_cpu_rate:5.2f} images/cpu-s "
              f"(median of {args.rounds} runs: {spread} images/s/core)")
        print(f"staged (one pass per step, PNGs between steps):      wall {staged_s:6.2f} s = {staged_rate:5.2f} "
              f"images/s/core; cpu {staged_cpu:6.2f} s = {staged_cpu_rate:5.2f} images/cpu-s")
        print(f"ratio fused/staged: {fused_rate / staged_rate:.1f}x by wall time, "
              f"{fused_cpu_rate / staged_cpu_rate:.1f}x by cpu time (goal >= 10x); same output: "
              f"{'yes' if same else 'NO'}")
        print(f"end to end (the fused run: manifest in, PNGs + manifest out): {fused_rate:.2f} images/s/core by wall "
              f"time, {fused_cpu_rate:.2f} by cpu time (goal >= 8)")
        total = sum(ms.values())
        steps_ms = sum(v for k, v in ms.items() if not k.startswith(("decode", "encode")))
        print("where the time goes, per image, 1 core (median cpu ms of each part, timed on its own): "
              + ", ".join(f"{k} {v:.0f}" for k, v in ms.items()) + f"; total {total:.0f}")
        decode = ms["decode (image + mask PNG)"]
        print(f"decode alone {decode:.0f} ms = {1000 / decode:.1f} images/s/core at most; steps + encode "
              f"{1000 / (total - decode):.1f} images/s/core; steps alone {1000 / steps_ms:.1f} images/s/core")
        ours, opencv, as_default = decode_ms(dataset)
        print(f"PNG decode of one input film as 'mammolab organize' writes it (png: {OrganizeConfig().png}): "
              f"{ours:.0f} ms by MammoLab's reader, {opencv:.0f} ms by OpenCV; {as_default:.0f} ms by OpenCV when "
              "written with OpenCV's default PNG settings")
        fast_ours, fast_cv = fast_png_ms(dataset, work)
        print(f"PNG read of one film written with --png fast (compressed, filtered rows): {fast_ours:.0f} ms by "
              f"read_image, {fast_cv:.0f} ms by OpenCV alone: ratio {fast_ours / fast_cv:.3f} (goal <= 1.0: "
              "MammoLab's reader declines before inflating)")
        if not same:
            sys.exit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
