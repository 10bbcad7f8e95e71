"""mammolab serve over real HTTP: the JSON API, the page (also in headless Chromium), the docs, and every
limit (body size whatever Content-Length says, pixel bombs, concurrent predictions, stalled clients)."""

from __future__ import annotations

import base64
import json
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mammolab.app.serve import MammoServer, make_server
from mammolab.errors import MammoLabError

from helpers import png_bomb


def _form(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _post(url: str, filename: str, data: bytes, timeout: float = 60) -> tuple[int, dict[str, Any], dict[str, str]]:
    body, ctype = _form(filename, data)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read(), dict(resp.headers)


def _raw(port: int, head: bytes, chunks: Iterator[bytes] | None = None, wait: float = 10.0) -> tuple[int, bytes]:
    """Send a hand-made request (``chunks`` only while the server has not answered); return the status and
    everything the server sent before closing (or ``wait`` seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        for chunk in chunks or ():
            if select.select([s], [], [], 0)[0]:
                break  # the server answered: stop sending
            try:
                s.sendall(chunk)
            except OSError:
                break
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not select.select([s], [], [], 0.2)[0]:
                continue
            try:
                part = s.recv(65536)
            except OSError:
                break
            if not part:
                break
            data += part
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Any:
    from mammolab.evaluate.predict import Predictor

    return Predictor.load(trained_run)


@pytest.fixture(scope="module")
def server(trained_run: Path, predictor: Any) -> Iterator[MammoServer]:
    srv = make_server(trained_run, port=0, predictor=predictor).start()
    yield srv
    srv.stop()


def _test_png(trained_run: Path) -> Path:
    return sorted((trained_run.parents[1] / "dataset-pp" / "test").rglob("*.png"))[0]


def test_api_predicts_like_the_predictor_with_heatmap(server: MammoServer, trained_run: Path, predictor: Any) -> None:
    png = _test_png(trained_run)
    status, res, _ = _post(server.url + "/api/predict?heatmap=1", "lesion.png", png.read_bytes())
    assert status == 200, res
    direct = predictor.predict_file(png)
    assert res["probability"] == pytest.approx(direct["prob"], abs=1e-4)  # threads may sum in another order
    assert res["class"] == direct["class"] and res["threshold"] == pytest.approx(predictor.threshold)
    assert set(res["probs"]) == set(predictor.classes) and res["warnings"] == direct["warnings"]
    assert res["model"] == "mammocnn" and res["run"] == "cnn" and res["version"] == predictor.version
    assert res["file"] == "lesion.png" and res["heatmap_method"] == "gradcam"
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(res["heatmap_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape[1] > 32 and overlay.std() > 0
    status, plain, _ = _post(server.url + "/api/predict", "lesion.png", png.read_bytes())
    assert status == 200 and plain["heatmap_png"] is None and plain["probability"] == res["probability"]


def test_dicom_upload_and_out_of_recipe_warning(server: MammoServer, trained_run: Path) -> None:
    films = sorted((trained_run.parents[1] / "download").rglob("*.dcm"), key=lambda p: p.stat().st_size)
    status, res, _ = _post(server.url + "/api/predict", "film.dcm", films[-1].read_bytes())
    assert status == 200, res
    assert 0.0 <= res["probability"] <= 1.0
    assert res["warnings"], "a whole film given to a 32 px patch model must carry a warning"


def test_page_health_and_docs(server: MammoServer) -> None:
    status, page, headers = _get(server.url + "/")
    assert status == 200 and b'type="file"' in page and b"mammocnn" in page and b'src="/page.js"' in page
    assert "script-src 'self'" in headers["content-security-policy"]
    status, script, _ = _get(server.url + "/page.js")
    assert status == 200 and b"/api/predict?heatmap=1" in script
    status, health, _ = _get(server.url + "/health")
    assert json.loads(health) == {"status": "ok", "model": "mammocnn", "run": "cnn", "version": "0.1.0",
                                  "busy": 0, "max_concurrent": 2}
    status, docs, _ = _get(server.url + "/docs")
    assert status == 200 and b"swagger" in docs.lower() and b"cdn." not in docs  # bundled: works offline
    js = docs.split(b'<script src="')[1].split(b'"')[0].decode()
    assert _get(server.url + js)[0] == 200
    spec = json.loads(_get(server.url + "/openapi.json")[1])
    op = spec["paths"]["/api/predict"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"heatmap"}
    assert {"200", "408", "413", "422", "503"} <= set(op["responses"])
    assert "/health" in spec["paths"]


@pytest.mark.parametrize(("data", "message"), [
    (b"just some text, not an image", "bad.png: not a DICOM, PNG, JPEG, PGM or TIFF image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "bad.png: truncated or damaged PNG"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x40\x00\x00\x00\x40\x08\x00\x00\x00\x00" + b"\x00" * 40,
     "bad.png: "),
    (b"", "no file was chosen"),
])
def test_bad_files_get_a_readable_422(server: MammoServer, data: bytes, message: str) -> None:
    status, res, _ = _post(server.url + "/api/predict", "bad.png", data)
    assert status == 422 and message in res["detail"] and "\n" not in res["detail"], res
    assert _get(server.url + "/health")[0] == 200


def test_pixel_bomb_is_refused_fast_with_little_memory(server: MammoServer) -> None:
    bomb = png_bomb(25000, 25000)
    assert len(bomb) > 900_000
    tracemalloc.start()  # the server runs in this process: its allocations are traced too
    start = time.perf_counter()
    status, res, _ = _post(server.url + "/api/predict?heatmap=1", "bomb.png", bomb)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert status == 413 and "25000x25000" in res["detail"] and "limit of" in res["detail"]
    assert elapsed < 1.0 and peak < 200e6, (elapsed, peak)  # decoding it would take 625 MB and more


def test_exported_model_is_served_with_occlusion_heatmaps(trained_run: Path, tmp_path: Path, predictor: Any) -> None:
    from mammolab.evaluate.export import export_run

    export_run(trained_run, tmp_path / "exported", "torchscript")
    srv = make_server(tmp_path / "exported", port=0).start()
    try:
        png = _test_png(trained_run)
        status, res, _ = _post(srv.url + "/api/predict?heatmap=1", "lesion.png", png.read_bytes())
    finally:
        srv.stop()
    assert status == 200, res
    assert res["probability"] == pytest.approx(predictor.predict_file(png)["prob"], abs=1e-4)
    assert res["heatmap_method"] == "occlusion" and res["heatmap_png"]


def _hdr(port: int, extra: str) -> bytes:
    return (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n{extra}\r\n").encode()


def test_body_limit_holds_whatever_content_length_says(trained_run: Path, predictor: Any) -> None:
    srv = make_server(trained_run, port=0, predictor=predictor, max_bytes=64 * 1024, read_timeout=2).start()
    port = srv.server_address[1]
    big = b"x" * 300_000
    try:
        # Declared far above the limit (beyond what is drained): refused before one byte of the body is read.
        start = time.perf_counter()
        status, raw = _raw(port, _hdr(port, "Content-Length: 10000000000\r\n"))
        assert status == 413 and b"the limit is 0.0625 MB" in raw and time.perf_counter() - start < 2
        # Declared above the limit and sent by a plain client that writes its whole body before it reads:
        # the rest is read and thrown away, so it gets the 413, never a reset connection (5 of 5).
        for _ in range(5):  # 4 MB: more than the sockets' buffers hold, so unread bytes would reset it
            status, res, _ = _post(srv.url + "/api/predict", "big.png", b"x" * 4_000_000)
            assert status == 413 and "3.8 MB declared" in res["detail"], res  # 4,000,000 bytes and the form
        # Declared above the limit, the body never sent: the 413 once the read timeout has passed.
        start = time.perf_counter()
        status, raw = _raw(port, _hdr(port, "Content-Length: 300000\r\n"))
        assert status == 413 and b"the limit is 0.0625 MB" in raw and 1.9 < time.perf_counter() - start < 6
        # Negative, or not a number: a malformed request, never a way around the limit.
        for value in ("-1", "abc", "1e9"):
            status, _ = _raw(port, _hdr(port, f"Content-Length: {value}\r\n"), iter([big]))
            assert status == 400, value
        # Missing (chunked): the bytes are counted as they arrive. The body is valid multipart (a file part
        # whose content never ends), so only the limit can stop it, whichever chunk the parser sees first.
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        chunks = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in [part] + [b"y" * 8192] * 64)
        status, raw = _raw(port, _hdr(port, "Transfer-Encoding: chunked\r\n"), chunks)
        assert status == 413 and b"more than that sent" in raw, raw[:400]
        # False: claims 1000 bytes, sends 300 kB; only 1000 are read as this request's body.
        status, _ = _raw(port, _hdr(port, "Content-Length: 1000\r\n"), iter([big]))
        assert status in (400, 422)
        # Both a length and chunks: rejected as ambiguous.
        status, _ = _raw(port, _hdr(port, "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"), iter([big]))
        assert status in (400, 413)
        # A normal small upload still works on the same server.
        status, res, _ = _post(srv.url + "/api/predict", "ok.png", _test_png(trained_run).read_bytes())
        assert status == 200, res
    finally:
        srv.stop()


class _GatedPredictor:
    """The real predictor, made to wait for a gate: lets the test hold a prediction slot."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def predict_file(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.entered.set()
        assert self.gate.wait(30)
        return self.real.predict_file(*args, **kwargs)


def test_at_most_n_predictions_others_wait_or_get_503(trained_run: Path, predictor: Any) -> None:
    gated = _GatedPredictor(predictor)
    srv = make_server(trained_run, port=0, predictor=gated, max_concurrent=1, queue_timeout=1.0).start()
    data = _test_png(trained_run).read_bytes()
    results: dict[str, Any] = {}

    def client(key: str) -> None:
        results[key] = _post(srv.url + "/api/predict", f"{key}.png", data)

    try:
        first = threading.Thread(target=client, args=("first",))
        first.start()
        assert gated.entered.wait(30)
        start = time.perf_counter()
        status, res, headers = _post(srv.url + "/api/predict", "second.png", data)
        waited = time.perf_counter() - start
        assert status == 503 and "busy: 1 prediction(s) running" in res["detail"] and headers["retry-after"] == "5"
        assert 0.9 < waited < 5, waited
        health = json.loads(_get(srv.url + "/health")[1])  # health is answered while the slot is taken
        assert health["busy"] == 1 and health["max_concurrent"] == 1
        third = threading.Thread(target=client, args=("third",))
        third.start()
        time.sleep(0.3)
        gated.gate.set()  # the first finishes; the waiting third gets its slot
        first.join(30)
        third.join(30)
        assert results["first"][0] == 200 and results["third"][0] == 200
    finally:
        gated.gate.set()
        srv.stop()


def test_stalled_clients_time_out_and_do_not_block_others(trained_run: Path, predictor: Any) -> None:
    srv = make_server(trained_run, port=0, predictor=predictor, header_timeout=1.0, read_timeout=1.0).start()
    port = srv.server_address[1]
    data = _test_png(trained_run).read_bytes()
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        half_head = socket.create_connection(("127.0.0.1", port))
        half_head.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        body, ctype = _form("slow.png", data)
        stalled_body = socket.create_connection(("127.0.0.1", port))
        stalled_body.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        # Meanwhile another client is served at once.
        start = time.perf_counter()
        status, res, _ = _post(srv.url + "/api/predict", "other.png", data)
        assert status == 200 and time.perf_counter() - start < 0.9, res
        for sock in (idle, half_head, stalled_body):
            sock.settimeout(5)
        assert idle.recv(100) == b""  # closed by the server after the header timeout
        assert half_head.recv(100) == b""
        reply = b""
        while part := stalled_body.recv(1000):  # until the server closes it
            reply += part
        assert reply.startswith(b"HTTP/1.1 408") and b"the request body stalled" in reply
        assert time.perf_counter() - start < 4
        for sock in (idle, half_head, stalled_body):
            sock.close()
        assert _get(srv.url + "/health")[0] == 200
    finally:
        srv.stop()


def test_bad_options_and_folders(tmp_path: Path, trained_run: Path, predictor: Any) -> None:
    with pytest.raises(MammoLabError, match="not a folder|neither a training run"):
        make_server(tmp_path / "nope", port=0)
    with pytest.raises(MammoLabError, match="--method"):
        make_server(trained_run, port=0, method="magic", predictor=predictor)
    with pytest.raises(MammoLabError, match="--max-concurrent"):
        make_server(trained_run, port=0, max_concurrent=0, predictor=predictor)
    with pytest.raises(MammoLabError, match="--max-pixels"):
        make_server(trained_run, port=0, max_pixels=0, predictor=predictor)
    srv = make_server(trained_run, port=0, predictor=predictor)
    try:
        with pytest.raises(MammoLabError, match=f"--port {srv.server_address[1]}"):
            make_server(trained_run, port=srv.server_address[1], predictor=predictor)
    finally:
        srv.sock.close()


def test_cli_serves_until_interrupted(trained_run: Path, tmp_path: Path) -> None:
    """``mammolab serve RUN`` with its options, as a user starts it; Ctrl-C stops it cleanly."""
    import signal

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mammolab", "serve", str(trained_run), "--port", str(port), "--max-mb", "1",
           "--max-concurrent", "1", "--max-pixels", "2000000", "--read-timeout", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                health = json.loads(_get(f"http://127.0.0.1:{port}/health")[1])
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        else:
            pytest.fail("serve did not start")
        assert health["max_concurrent"] == 1
        status, res, _ = _post(f"http://127.0.0.1:{port}/api/predict", "bomb.png", png_bomb(2000, 1001, pad_to=0))
        assert status == 413 and "limit of 2000000 pixels" in res["detail"]
        status, res, _ = _post(f"http://127.0.0.1:{port}/api/predict", "big.png", b"\0" * 1_200_000)
        assert status == 413 and "the limit is 1 MB" in res["detail"]
        # Just over the limit: the size is said in the limit's unit, with the decimals that show it is over.
        status, res, _ = _post(f"http://127.0.0.1:{port}/api/predict", "edge.png", b"\0" * 1_048_500)
        assert status == 413 and re.search(r"\(1\.000\d+ MB declared\); the limit is 1 MB", res["detail"]), res
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/" in out and "stopped" in out
    from typer.testing import CliRunner

    from mammolab.cli import app

    bad = CliRunner().invoke(app, ["serve", str(trained_run), "--max-concurrent", "0"])
    assert bad.exit_code != 0 and isinstance(bad.exception, MammoLabError)  # main() prints it as one line
    assert "--max-concurrent: expected an integer from 1 to 256, got 0" in str(bad.exception)


def _chromedriver() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromedriver() is None, reason="needs chromium, chromium-driver and selenium")
def test_upload_in_headless_chromium(server: MammoServer, trained_run: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromedriver()  # type: ignore[misc]
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "file").send_keys(str(_test_png(trained_run)))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "overlay")))
        prob = float(driver.find_element(By.ID, "probability").text)
        assert 0.0 <= prob <= 1.0
        assert driver.find_element(By.ID, "predicted").text in ("benign", "malignant")
        assert "mammocnn" in driver.find_element(By.ID, "model").text
        assert driver.find_element(By.ID, "warnings").text
        width = driver.execute_script("return document.getElementById('overlay').naturalWidth")
        assert width > 32  # the overlay image decoded in the browser
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000

        junk = tmp_path / "notes.png"
        junk.write_bytes(b"not an image at all")
        driver.get(server.url + "/")
        driver.find_element(By.ID, "file").send_keys(str(junk))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "error")))
        assert "not a DICOM, PNG" in driver.find_element(By.ID, "error").text
        assert not driver.find_elements(By.ID, "overlay")

        # A file above --max-mb is refused by the page itself, before a useless upload (sparse: no disk used).
        big = tmp_path / "big.dcm"
        with big.open("wb") as f:
            f.truncate(51 * 1024 * 1024)
        driver.get(server.url + "/")
        driver.find_element(By.ID, "file").send_keys(str(big))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "error")))
        text = driver.find_element(By.ID, "error").text
        assert "big.dcm is 51.0 MB; this server takes at most 50.0 MB (serve --max-mb)" in text, text
    finally:
        driver.quit()
