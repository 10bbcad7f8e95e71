"""serve over real HTTP gives every single-frame greyscale DICOM of pydicom's test files exactly what
``predict`` gives it (the same Predictor), or the same one-line refusal; CT_small.dcm and MR_small.dcm
(TIFF header in their preamble) get a probability; the upload path uses the one sniffer; a DICOM bomb
is refused with the server's memory at its idle level (issues #22, #26)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from mammolab.app.serve import MammoServer, make_server
from mammolab.errors import MammoLabError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _post(url: str, filename: str, data: bytes) -> tuple[int, dict[str, Any]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _grey_single_frame() -> list[Path]:
    """pydicom's wheel files that hold one greyscale frame (whether or not they decode)."""
    out = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                grey = "Rows" in ds and int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1 \
                    and str(getattr(ds, "PhotometricInterpretation", "")).startswith("MONOCHROME")
                frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception:  # a damaged header (badVR.dcm's NumberOfFrames '1A'): not a film to compare
            continue
        if grey and frames == 1:
            out.append(path)
    return out


FILES = _grey_single_frame()


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Any:
    from mammolab.evaluate.predict import Predictor

    return Predictor.load(trained_run)


@pytest.fixture(scope="module")
def server(trained_run: Path, predictor: Any) -> Iterator[MammoServer]:
    srv = make_server(trained_run, port=0, predictor=predictor).start()
    yield srv
    srv.stop()


def test_there_are_files_to_check() -> None:
    names = {p.name for p in FILES}
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "JPGExtended.dcm"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_serve_gives_what_predict_gives(server: MammoServer, predictor: Any, path: Path) -> None:
    try:
        direct: dict[str, Any] | str = predictor.predict_file(path)
    except MammoLabError as exc:
        direct = str(exc).replace(str(path), path.name)
    status, res = _post(server.url + "/api/predict", path.name, path.read_bytes())
    if isinstance(direct, str):
        assert status in (413, 422) and res["detail"] == direct and "\n" not in direct, (res, direct)
    else:
        assert status == 200, res
        assert res["probability"] == pytest.approx(direct["prob"], abs=1e-4)
        assert res["class"] == direct["class"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_tiff_in_the_preamble_still_gets_a_probability(server: MammoServer, name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    status, res = _post(server.url + "/api/predict", name, data)
    assert status == 200 and 0.0 <= res["probability"] <= 1.0, res
    status, res = _post(server.url + "/api/predict", "no-suffix", data)  # the name plays no part
    assert status == 200, res


def test_the_upload_path_calls_the_one_sniffer(server: MammoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammolab.io.header as header
    import mammolab.io.images as images

    calls: list[str] = []
    real = header.sniff_format

    def spy(head: bytes, suffix: str = "") -> str | None:
        calls.append(suffix)
        return real(head, suffix)

    monkeypatch.setattr(header, "sniff_format", spy)
    monkeypatch.setattr(images, "sniff_format", spy)
    status, _ = _post(server.url + "/api/predict", "ct.dcm", (TEST_FILES / "CT_small.dcm").read_bytes())
    assert status == 200
    assert calls.count(".dcm") >= 2  # the route's header check and the reader both asked the one sniffer


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux)")
def test_dicom_bomb_over_http_leaves_the_server_at_idle_memory(server: MammoServer, tmp_path: Path) -> None:
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).parents[1] / "faults"))
    from test_dicom_bombs import BIG, j2k_bomb, jpeg_bomb

    for make in (j2k_bomb, jpeg_bomb):
        bomb = make(tmp_path)
        _post(server.url + "/api/predict", "warm.dcm", bomb.read_bytes())  # first call: lazy imports
        before = _rss()
        start = time.perf_counter()
        for _ in range(6):
            status, res = _post(server.url + "/api/predict", bomb.name, bomb.read_bytes())
            assert status == 422 and f"declares {BIG}x{BIG}" in res["detail"], res
        elapsed = time.perf_counter() - start
        grown = _rss() - before
        assert elapsed < 6.0 and grown < 30e6, (elapsed, grown)  # decoding one would take 338 MB or more
