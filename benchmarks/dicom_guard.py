"""Decode time of every mammography transfer syntax on a synthetic 2000x3000 12-bit film, as a ratio to
the uncompressed file read the same way in the same run; and what refusing a DICOM bomb costs.

    python benchmarks/dicom_guard.py [--repeat 3]

Encoders: pydicom's (RLE, JPEG-LS, JPEG 2000), imagecodecs (HTJ2K), DCMTK's dcmcjpeg when installed
(JPEG lossless SV1 and process 14, 12-bit JPEG extended). Times are of ``mammolab.io.read_image``
(guarded parse, frame check, decode, the display stretch), median of ``--repeat`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))


def film(rows: int = 3000, cols: int = 2000) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    dome = np.exp(-(((xx - 0.1 * cols) / (0.7 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2))
    grain = np.random.default_rng(0).normal(0, 0.01, dome.shape).astype(np.float32)
    return np.clip(np.rint((dome + grain) * 4095), 0, 4095).astype(np.uint16)


def write(path: Path, arr: np.ndarray) -> Path:
    from helpers import write_dicom

    write_dicom(path, arr)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    return path


def variants(tmp: Path, arr: np.ndarray) -> dict[str, Path]:
    base = write(tmp / "native.dcm", arr)
    out = {"uncompressed": base}
    for name, uid, kw in (("RLE", pydicom.uid.RLELossless, {}), ("JPEG-LS lossless", pydicom.uid.JPEGLSLossless, {}),
                          ("JPEG-LS near-lossless", pydicom.uid.JPEGLSNearLossless, {"jls_error": 2}),
                          ("JPEG 2000 lossless", pydicom.uid.JPEG2000Lossless, {}),
                          ("JPEG 2000 lossy", pydicom.uid.JPEG2000, {"j2k_psnr": [60]})):
        ds = pydicom.dcmread(base)
        ds.compress(uid, arr, **kw)
        path = tmp / f"{len(out)}.dcm"
        ds.save_as(path)
        out[name] = path
    try:
        import imagecodecs

        ds = pydicom.dcmread(base)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(arr, level=0)])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp / "ht.dcm", enforce_file_format=True)
        out["HTJ2K lossless"] = tmp / "ht.dcm"
    except Exception as exc:  # no HTJ2K encoder here
        print(f"HTJ2K: not measured ({exc})")
    if shutil.which("dcmcjpeg"):
        for name, opt in (("JPEG lossless SV1", "+e1"), ("JPEG lossless (process 14)", "+el"),
                          ("JPEG extended 12-bit", "+ee")):
            path = tmp / f"{opt[1:]}.dcm"
            subprocess.run(["dcmcjpeg", opt, str(base), str(path)], check=True, capture_output=True)
            out[name] = path
    else:
        print("dcmcjpeg not installed: JPEG lossless and 12-bit extended not measured (apt-get install dcmtk)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from mammolab.io import read_image

    arr = film()
    with tempfile.TemporaryDirectory() as tmp:
        files = variants(Path(tmp), arr)
        times = {}
        for name, path in files.items():
            read_image(path)  # warm: imports, plug-in registration
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                read_image(path)
                runs.append(time.perf_counter() - start)
            times[name] = statistics.median(runs)
        base = times["uncompressed"]
        print(f"{'syntax':30s} {'file MB':>8s} {'decode ms':>10s} {'x uncompressed':>15s}")
        for name, t in times.items():
            size = files[name].stat().st_size / 1e6
            print(f"{name:30s} {size:8.2f} {t * 1000:10.1f} {t / base:15.2f}")

        from test_dicom_bombs import j2k_bomb, jpeg_bomb

        from mammolab.errors import MammoLabError

        for make in (j2k_bomb, jpeg_bomb):
            bomb = make(Path(tmp))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            with contextlib.suppress(MammoLabError):
                read_image(bomb)
            took = time.perf_counter() - start
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            print(f"bomb {bomb.name} ({bomb.stat().st_size} bytes, declares 13000x13000): refused in "
                  f"{took * 1000:.1f} ms, peak RSS grew {grown:.1f} MB (decoding needs >= 338 MB); "
                  f"ratio to one uncompressed film read: {took / base:.3f}")


if __name__ == "__main__":
    main()
