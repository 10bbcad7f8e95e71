"""mammolab serve: the upload page over real HTTP (urllib) and in headless Chromium (Selenium)."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammolab.app.serve import detect_type, make_server, parse_multipart
from mammolab.errors import MammoLabError


def _post(url: str, filename: str, data: bytes) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    srv = make_server(trained_run, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _test_png(trained_run: Path) -> Path:
    dataset = trained_run.parents[1] / "dataset-pp"
    return sorted((dataset / "test").rglob("*.png"))[0]


def test_page_and_png_upload(server: str, trained_run: Path) -> None:
    with urllib.request.urlopen(server + "/", timeout=30) as resp:
        page = resp.read().decode()
    assert resp.status == 200 and 'type="file"' in page and "mammocnn" in page
    status, html = _post(server + "/predict", "lesion.png", _test_png(trained_run).read_bytes())
    assert status == 200, html
    assert 'id="probability"' in html and "data:image/png;base64," in html
    assert "MammoLab 0." in html and "lesion.png" in html


def test_dicom_upload(server: str, trained_run: Path) -> None:
    dcm = next((trained_run.parents[1] / "download").rglob("*.dcm"))
    status, html = _post(server + "/predict", "scan.dcm", dcm.read_bytes())
    assert status == 200, html
    assert 'id="predicted"' in html


@pytest.mark.parametrize(("data", "message"), [
    (b"just some text, not an image", "not a DICOM, PNG, JPEG, PGM or TIFF"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be read"),
    (b"", "no file was chosen"),
])
def test_bad_files_get_a_readable_400(server: str, data: bytes, message: str) -> None:
    status, html = _post(server + "/predict", "bad.png", data)
    assert status == 400
    assert 'class="error"' in html and message in html
    assert 'type="file"' in html  # the form is there to try again


def test_oversized_upload_is_refused_with_413(trained_run: Path) -> None:
    srv = make_server(trained_run, port=0, max_bytes=4096)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        status, html = _post(f"http://127.0.0.1:{srv.server_address[1]}/predict", "big.png", b"\0" * 20000)
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 413 and "too large" in html


def test_type_detection_and_multipart_parser() -> None:
    assert detect_type(b"\x89PNG\r\n\x1a\nxxxx") == "png"
    assert detect_type(b"\0" * 128 + b"DICMxxxx") == "dicom"
    assert detect_type(b"P5\n4 4\n255\n") == "pgm"
    assert detect_type(b"GIF89a") is None
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nABC\r\n--b--\r\n'
    assert parse_multipart(body, "multipart/form-data; boundary=b") == {"file": ("a.png", b"ABC")}
    with pytest.raises(MammoLabError, match="multipart"):
        parse_multipart(body, "application/json")


def test_bad_run_folder_and_port(tmp_path: Path, trained_run: Path) -> None:
    with pytest.raises(MammoLabError, match="not a training run"):
        make_server(tmp_path, port=0)
    with pytest.raises(MammoLabError, match="--method"):
        make_server(trained_run, port=0, method="magic")


def _chromedriver() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromedriver() is None, reason="needs chromium, chromium-driver and selenium")
def test_upload_in_headless_chromium(server: str, trained_run: Path, tmp_path: Path) -> None:
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
                 "--disable-dev-shm-usage", "--window-size=1000,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(_test_png(trained_run)))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "overlay")))
        prob = float(driver.find_element(By.ID, "probability").text)
        assert 0.0 <= prob <= 1.0
        assert driver.find_element(By.ID, "predicted").text in ("benign", "malignant")
        width = driver.execute_script("return document.getElementById('overlay').naturalWidth")
        assert width > 100  # the overlay image decoded in the browser
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000

        junk = tmp_path / "notes.png"
        junk.write_bytes(b"not an image at all")
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(junk))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".error")))
        assert "not a DICOM, PNG" in driver.find_element(By.CSS_SELECTOR, ".error").text
    finally:
        driver.quit()
