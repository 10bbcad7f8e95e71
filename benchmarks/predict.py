"""Benchmark: predict time per image on CPU with the recipe applied, against the model's forward pass alone.

Two cases, each through :meth:`mammolab.evaluate.predict.Predictor.predict_files` exactly as
``mammolab predict`` runs it (read the file, organize's conversion, the preprocessing steps, the
training transform, the model):

* film: a 3000x5000 16-bit DICOM through the ``full`` preprocessing preset (border crop, label
  removal, orientation, resize to 1024x640 8-bit, median denoise, CLAHE) into ``mammoresnet`` at
  1024 px (the whole-image model);
* patch: a 600x600 16-bit PNG lesion crop through the ``patch`` preset (resize to 512 8-bit, median,
  CLAHE) into ``resnet18`` at 224 px.

The baseline, measured in the same run on the same prepared tensor, is the model's forward pass
alone (what ``predict`` cost before the recipe travelled with the run, minus reading). Prints the
median time per image of each part and the ratio recipe-applied / model-only. Untrained weights:
the time does not depend on them. Run: ``python benchmarks/predict.py [--repeats 9] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("MAMMOLAB_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import mammolab  # noqa: E402
from mammolab.infer import Predictor  # noqa: E402
from mammolab.infer.backends import TorchBackend  # noqa: E402
from mammolab.io import read_image, write_png  # noqa: E402
from mammolab.models.registry import create_model  # noqa: E402
from mammolab.preprocess.pipeline import load_preprocess_config  # noqa: E402
from mammolab.recipe import PreprocessStage, Recipe, SourceSpec, TransformSpec  # noqa: E402
from preprocess import make_film  # noqa: E402  (the same synthetic 3000x5000 film as the preprocessing benchmark)


def write_dicom(path: Path, arr: np.ndarray) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def predictor(kind: str, preset: str, model_name: str, size: int) -> Predictor:
    model = create_model(model_name, regime="cft", weights="none", in_chans=1, num_outputs=1).eval()
    steps = load_preprocess_config(preset).model_dump(mode="json")["steps"]
    recipe = Recipe(mammolab_version=mammolab.__version__, name=f"bench-{kind}", model=model_name,
                    classes=["benign", "malignant"], num_outputs=1,
                    source=SourceSpec(stage="organize", kind=kind, bit_depth=16),
                    preprocess=[PreprocessStage(steps=steps)],
                    transform=TransformSpec(image_size=size, resize="stretch", mean=model.mean, std=model.std))
    cpu = torch.device("cpu")
    return Predictor(recipe, TorchBackend(model, cpu), path=Path("."), torch_model=model, device=cpu)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(label: str, p: Predictor, file: Path, repeats: int) -> None:
    image = read_image(file)
    prepared = p.prepare(image)
    x = torch.from_numpy(prepared.tensor[None])
    model = p.model

    def forward() -> None:
        with torch.no_grad():
            model(x)

    parts: dict[str, Callable[[], object]] = {
        "read file": lambda: read_image(file),
        "read + recipe (no model)": lambda: p.prepare(read_image(file)),
        "model forward only (baseline)": forward,
        "predict, recipe applied": lambda: p.predict_files([file]),
    }
    for fn in parts.values():  # warm-up: first-call allocations, OpenCV and torch kernels
        fn()
    # Round-robin: every round times each part once, so a burst of load from other work on a shared
    # machine hits all of them alike; the ratio is taken per round and its median reported.
    rounds = [{name: timed(fn) for name, fn in parts.items()} for _ in range(repeats)]
    print(f"\n{label}: {file.name} {image.shape[1]}x{image.shape[0]} {image.dtype} -> "
          f"{p.recipe.transform.image_size} px {p.recipe.model}")
    for name in parts:
        ts = [r[name] for r in rounds]
        print(f"  {name:32s} {statistics.median(ts) * 1000:8.1f} ms  (min {min(ts) * 1000:.1f}, "
              f"max {max(ts) * 1000:.1f})")
    ratios = [r["predict, recipe applied"] / r["model forward only (baseline)"] for r in rounds]
    share = [1 - r["model forward only (baseline)"] / r["predict, recipe applied"] for r in rounds]
    print(f"  ratio recipe-applied / model-only: {statistics.median(ratios):.2f}x (median of {repeats} rounds, "
          f"{min(ratios):.2f}-{max(ratios):.2f}); read + recipe: {statistics.median(share):.0%} of the time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1: per-core figures, "
                    "steady on a shared machine); 0 keeps the libraries' defaults")
    args = ap.parse_args()
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s); median of "
          f"{args.repeats} rounds per figure")
    with tempfile.TemporaryDirectory(prefix="mammolab-bench-predict-") as tmp:
        film, mask, box = make_film(0, 5000, 3000)
        dcm = write_dicom(Path(tmp) / "film.dcm", film)
        x0, y0, x1, y1 = (int(v) for v in box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        patch = np.ascontiguousarray(film[cy - 300:cy + 300, cx - 300:cx + 300])
        png = Path(tmp) / "patch.png"
        write_png(png, patch)
        bench("film", predictor("full", "full", "mammoresnet", 1024), dcm, args.repeats)
        bench("patch", predictor("crop", "patch", "resnet18", 224), png, args.repeats)


if __name__ == "__main__":
    main()
