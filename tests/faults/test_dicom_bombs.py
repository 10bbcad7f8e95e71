"""Decompression bombs inside DICOMs (issue #22 part 2): a few-KB file whose header says 64x64 and whose
JPEG 2000 / JPEG / JPEG-LS frame declares 13000x13000 is refused before any decoder sees it, fast and with
bounded memory, by every reader (``read_image`` serves organize and ``evaluate --dataset``) and by the
``mammolab predict`` CLI in a fresh process (its peak RSS measured)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fault_tools import base_env
from pydicom.encaps import encapsulate

from mammolab.errors import MammoLabError
from mammolab.io import read_image, read_image_bytes

from helpers import write_dicom

BIG = 13000
#: What decoding the bomb's frame would allocate at least: 13000 x 13000 16-bit samples (338 MB).
DECODED = BIG * BIG * 2


def _small(tmp: Path) -> tuple[Path, np.ndarray]:
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
    return write_dicom(tmp / "small.dcm", arr), arr


def _encapsulated(tmp: Path, name: str, frame: bytes, uid: str) -> Path:
    """A 64x64 DICOM whose one encapsulated frame is ``frame``."""
    path, _ = _small(tmp)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    out = tmp / name
    ds.save_as(out, enforce_file_format=True)
    return out


def j2k_bomb(tmp: Path) -> Path:
    """A real 64x64 JPEG 2000 codestream whose SIZ is rewritten to declare 13000x13000 (one tile)."""
    path, arr = _small(tmp)
    ds = pydicom.dcmread(path)
    ds.compress(pydicom.uid.JPEG2000Lossless, arr)
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    assert frame[:4] == b"\xff\x4f\xff\x51"
    struct.pack_into(">II", frame, 8, BIG, BIG)  # Xsiz, Ysiz
    struct.pack_into(">II", frame, 24, BIG, BIG)  # XTsiz, YTsiz
    return _encapsulated(tmp, "j2k_bomb.dcm", bytes(frame), pydicom.uid.JPEG2000Lossless)


def jpeg_bomb(tmp: Path, uid: str = "1.2.840.10008.1.2.4.50") -> Path:
    """A real 64x64 JPEG whose SOF is rewritten to declare 13000x13000."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 128, np.uint8))
    assert ok
    frame = bytearray(buf.tobytes())
    sof = frame.index(b"\xff\xc0")
    struct.pack_into(">HH", frame, sof + 5, BIG, BIG)
    path = _encapsulated(tmp, "jpeg_bomb.dcm", bytes(frame), uid)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.save_as(path)
    return path


def jpeg_ls_bomb(tmp: Path) -> Path:
    path, arr = _small(tmp)
    ds = pydicom.dcmread(path)
    ds.compress(pydicom.uid.JPEGLSLossless, arr)
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xf7")
    struct.pack_into(">HH", frame, sof + 5, BIG, BIG)
    return _encapsulated(tmp, "jls_bomb.dcm", bytes(frame), pydicom.uid.JPEGLSLossless)


@pytest.mark.parametrize("make", [j2k_bomb, jpeg_bomb, jpeg_ls_bomb])
def test_frame_bomb_is_refused_fast_with_bounded_memory(tmp_path: Path, make) -> None:
    bomb = make(tmp_path)
    assert bomb.stat().st_size < 8000
    tracemalloc.start()
    start = time.perf_counter()
    for read in (lambda: read_image(bomb), lambda: read_image_bytes(bomb.read_bytes(), bomb.name)):
        with pytest.raises(MammoLabError) as err:
            read()
        msg = str(err.value)
        assert bomb.name in msg and "the header says 64x64" in msg and f"declares {BIG}x{BIG}" in msg, msg
        assert "refused before decoding" in msg and "\n" not in msg
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 20e6, (elapsed, peak)


def test_rle_bomb_is_bounded(tmp_path: Path) -> None:
    """An RLE segment that would decode to 64x its size (replicate runs) gives at most the header's
    64x64 pixels or a one-line refusal, never a 20 MB allocation."""
    runs = b"\x81\x07" * 160_000  # 160000 runs of 128 bytes: 20 MB from 320 KB
    header = struct.pack("<16I", 2, 64, 64 + len(runs), *([0] * 13))
    bomb = _encapsulated(tmp_path, "rle_bomb.dcm", header + runs + runs, pydicom.uid.RLELossless)
    tracemalloc.start()
    try:
        out = read_image(bomb)
    except MammoLabError as exc:
        assert "rle_bomb.dcm" in str(exc) and "\n" not in str(exc)
    else:
        assert out.shape == (64, 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8e6, peak


def test_segment_count_must_match_the_header(tmp_path: Path) -> None:
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    bad = _encapsulated(tmp_path, "rle1.dcm", header + b"\x00\x00" * 10, pydicom.uid.RLELossless)
    with pytest.raises(MammoLabError, match=r"rle1\.dcm: the RLE frame has 1 segment\(s\) where the header says "
                                            r"64x64, 1 sample\(s\) of 16 bits \(2 segments\)"):
        read_image(bad)


def test_deflate_bomb_is_refused_before_inflating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    path, _ = _small(tmp_path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    # Replace the deflated data set by 40 MB of zeros deflated (40 KB): more than a 1 MP limit's budget.
    uid = b"1.2.840.10008.1.2.1.99"  # the last element of the file meta (22 bytes: no padding)
    meta_end = raw.index(uid) + len(uid)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = tmp_path / "deflate_bomb.dcm"
    bomb.write_bytes(raw[:meta_end] + comp.compress(bytes(40 << 20)) + comp.flush())
    assert bomb.stat().st_size < 100_000
    monkeypatch.setenv("MAMMOLAB_MAX_PIXELS", "1000000")
    tracemalloc.start()
    with pytest.raises(MammoLabError, match=r"deflate_bomb\.dcm: the deflated DICOM inflates to more than"):
        read_image(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10e6, peak


#: Runs ``mammolab ARGS`` as its only child and writes that child's peak RSS (RUSAGE_CHILDREN) to a file:
#: the CLI may leave through os._exit, so the child cannot be asked to report it itself.
DRIVER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run([sys.executable, '-c', 'from mammolab.cli import main; main()', *sys.argv[2:]]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))\n"
    "sys.exit(code)\n"
)


def _predict(run: Path, files: list[Path], tmp: Path) -> list[tuple[subprocess.CompletedProcess, int]]:
    """``mammolab predict RUN FILE`` for each file, in separate processes started together (each one's
    peak RSS is its own): the exit status and output, and the peak RSS in bytes."""
    started = []
    for file in files:
        peak = tmp / f"{file.stem}.hwm"
        args = [sys.executable, "-c", DRIVER, str(peak), "predict", str(run), str(file)]
        started.append((args, peak, subprocess.Popen(args, env=base_env(tmp), stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True, cwd=str(tmp))))
    results = []
    for args, peak, proc in started:
        out, err = proc.communicate(timeout=300)
        results.append((subprocess.CompletedProcess(args, proc.returncode, out, err), int(peak.read_text())))
    return results


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_predict_cli_refuses_the_bomb_with_the_memory_of_a_small_file(trained, tmp_path: Path) -> None:
    small, _ = _small(tmp_path)
    bomb = j2k_bomb(tmp_path)
    (ok, base), (refused, peak) = _predict(trained.run, [small, bomb], tmp_path)
    assert ok.returncode == 0, ok.stderr
    out = refused.stdout + refused.stderr
    assert "j2k_bomb.dcm" in out and f"declares {BIG}x{BIG}" in out, out
    # The same process reading a 64x64 film is the baseline; decoding the bomb would add 338 MB or more.
    assert peak < base + 40e6 and peak - base < DECODED / 8, (base, peak)
