"""mammolab serve with a two-view (CC + MLO) breast model, over real HTTP: the fields cc and mlo, one breast
probability equal to the run's evaluation, a missing view, the page's two inputs, every limit on both files,
an exported breast model, and the page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mammolab.app.serve import MammoServer, make_server

from helpers import png_bomb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # the two-view dataset of tests/train

SINGLE_KEYS = {"file", "probability", "class", "probs", "threshold", "warnings", "model", "run", "version",
               "mammolab_version", "heatmap_method", "heatmap_png"}


def _form(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart body of ``(field, filename, bytes)`` parts."""
    boundary = uuid.uuid4().hex
    body = b""
    for field, filename, data in parts:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, parts: list[tuple[str, str, bytes]]) -> tuple[int, dict[str, Any], dict[str, str]]:
    body, ctype = _form(parts)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pd.DataFrame]]:
    """A tiny two-view run on tests/train's two-view dataset, evaluated on test: (run, dataset, predictions)."""
    import torch
    from train_fixtures import make_lesion_dataset

    from mammolab.data.manifest import load_manifest, write_manifest
    from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
    from mammolab.train.config import resolve_train_config
    from mammolab.train.fit import train

    with pytest.MonkeyPatch.context() as mp:  # an isolated image cache, one torch thread (as tests/train does)
        mp.setenv("MAMMOLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # tests/train/test_views.py's two_view_ds: in test, patients merged in pairs (two breasts), one MLO dropped
            ds = make_lesion_dataset(tmp_path_factory.mktemp("views") / "ds", patients=30, size=32, seed=4)
            df = load_manifest(ds)
            test_pids = sorted(df.loc[df["split"] == "test", "patient_id"].unique())
            for a, b in zip(test_pids[0::2], test_pids[1::2], strict=False):
                sel = df["patient_id"] == b
                df.loc[sel, "side"] = "RIGHT"
                df.loc[sel, "patient_id"] = a
            write_manifest(df.drop(index=df.index[(df["split"] == "test") & (df["view"] == "MLO")][0]), ds)
            cfg = resolve_train_config(overrides={
                "model": "mammoresnet", "views": "cc+mlo", "fusion": "concat", "image_size": 32, "batch_size": 8,
                "epochs": 2, "lr": 0.01, "patience": 0, "accelerator": "cpu", "weights": "none"})
            run = train(ds, cfg, tmp_path_factory.mktemp("serve-2v") / "run").run_dir
            evaluate_run(run, "test", n_boot=50)
            _, preds = load_evaluation(run, "test")
            yield run, ds, preds
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(breast_run: tuple[Path, Path, pd.DataFrame]) -> Iterator[MammoServer]:
    srv = make_server(breast_run[0], port=0).start()
    yield srv
    srv.stop()


def _files(breast_run: tuple[Path, Path, pd.DataFrame], views: str) -> tuple[pd.Series, bytes, bytes | None]:
    _, ds, preds = breast_run
    row = preds[preds["views"] == views].iloc[0]
    mlo = (ds / row["mlo_path"]).read_bytes() if views == "cc+mlo" else None
    return row, (ds / row["cc_path"]).read_bytes(), mlo


def test_breast_api_gives_the_run_probability(server: MammoServer, breast_run: tuple[Path, Path, pd.DataFrame]) -> None:
    row, cc, mlo = _files(breast_run, "cc+mlo")
    assert mlo is not None
    parts = [("cc", "left_cc.png", cc), ("mlo", "left_mlo.png", mlo)]
    status, res, _ = _post(server.url + "/api/predict?heatmap=1", parts)
    assert status == 200, res
    assert set(res) >= SINGLE_KEYS and abs(res["probability"] - row["prob"]) < 1e-4
    assert res["views_present"] == ["CC", "MLO"] and res["missing_view"] is None and res["warnings"] == []
    assert res["file"] == "left_cc.png + left_mlo.png" and (res["cc"], res["mlo"]) == ("left_cc.png", "left_mlo.png")
    assert res["class"] == ("malignant" if res["probability"] >= res["threshold"] else "benign")
    assert res["heatmap_method"] == "gradcam" and res["heatmap_png"]  # the breast's figure (see *_heatmap.py)
    assert res["run"] == "run" and res["model"] == "mammoresnet_cft_ccmlo"

    # A breast filmed in CC only: the evaluation's probability, the missing view named.
    one, cc_only, _ = _files(breast_run, "cc")
    status, res, _ = _post(server.url + "/api/predict", [("cc", "right_cc.png", cc_only)])
    assert status == 200, res
    assert abs(res["probability"] - one["prob"]) < 1e-4
    assert res["views_present"] == ["CC"] and res["missing_view"] == "MLO" and res["mlo"] is None
    assert any("no MLO view" in w for w in res["warnings"])
    # MLO only; and an unchosen browser input (an empty part without a file name) counts as missing.
    status, res, _ = _post(server.url + "/api/predict", [("cc", "", b""), ("mlo", "m.png", mlo)])
    assert status == 200 and res["views_present"] == ["MLO"] and res["missing_view"] == "CC", res


@pytest.mark.parametrize(("parts", "status", "message"), [
    ([], 422, "no file was chosen (or the files are empty): a breast needs its CC and/or MLO image"),
    ([("cc", "", b""), ("mlo", "", b"")], 422, "either may be missing, not both"),
    ([("file", "x.png", b"PNG")], 422, "send the breast's images as the fields cc and mlo (got field(s) file)"),
    ([("cc", "a.png", b"")], 422, "cc: a.png is empty"),
    ([("cc", "bad.png", b"not an image")], 422, "cc: bad.png: not a DICOM, PNG, JPEG, PGM or TIFF image"),
    ([("mlo", "bomb.png", png_bomb(25000, 25000))], 413, "mlo: bomb.png"),
])
def test_breast_api_errors_are_one_line(server: MammoServer, breast_run: tuple[Path, Path, pd.DataFrame],
                                        parts: list[tuple[str, str, bytes]], status: int, message: str) -> None:
    _, cc, _ = _files(breast_run, "cc+mlo")
    if parts and parts[0][0] == "mlo":  # the pixel bomb comes with a good CC image: still refused
        parts = [("cc", "cc.png", cc), *parts]
    got, res, _ = _post(server.url + "/api/predict", parts)
    assert got == status and message in res["detail"] and "\n" not in res["detail"], res
    if status == 413:
        assert "25000x25000" in res["detail"]
    status, res, _ = _post(server.url + "/api/predict", [("cc", "a.png", cc), ("cc", "b.png", cc)])
    assert status == 422 and "cc: one file per view, got 2" in res["detail"]


def test_page_shows_two_inputs_and_says_why_no_heatmap(server: MammoServer) -> None:
    status, page = _get(server.url + "/")
    assert status == 200 and b'id="cc" name="cc"' in page and b'id="mlo" name="mlo"' in page
    assert b'id="file"' not in page and b"two-view breast model (CC + MLO)" in page
    assert b"Heatmaps: per view maps of the breast's score" in page
    _, script = _get(server.url + "/page.js")
    assert b"['cc', 'mlo']" in script and b"heatmap=1" in script
    spec = json.loads(_get(server.url + "/openapi.json")[1])
    op = spec["paths"]["/api/predict"]["post"]
    ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    assert set(spec["components"]["schemas"][ref]["properties"]) == {"cc", "mlo"}
    out = spec["components"]["schemas"]["BreastPrediction"]["properties"]
    assert {"views_present", "missing_view", "cc", "mlo", "probability"} <= set(out)


def test_limits_apply_to_both_files(breast_run: tuple[Path, Path, pd.DataFrame]) -> None:
    from mammolab.evaluate.predict import Predictor

    row, cc, mlo = _files(breast_run, "cc+mlo")
    assert mlo is not None
    predictor = Predictor.load(breast_run[0])
    # Body size: the two files count together (each alone is under the limit).
    filler = b"\0" * 700
    srv = make_server(breast_run[0], port=0, predictor=predictor, max_bytes=1024 + len(cc)).start()
    try:
        status, res, _ = _post(srv.url + "/api/predict", [("cc", "cc.png", cc), ("mlo", "mlo.png", cc + filler)])
        assert status == 413 and "the limit is" in res["detail"]
        status, res, _ = _post(srv.url + "/api/predict", [("cc", "cc.png", cc)])
        assert status == 200, res
    finally:
        srv.stop()

    # Concurrency: one breast holds the only slot; the next waits queue_timeout, then 503.
    class GatedBackend:
        def __init__(self, real: Any) -> None:
            self.real, self.gate, self.entered = real, threading.Event(), threading.Event()

        def logits(self, *args: Any) -> Any:
            self.entered.set()
            assert self.gate.wait(30)
            return self.real.logits(*args)

    gated = GatedBackend(predictor.backend)
    predictor.backend = gated
    srv = make_server(breast_run[0], port=0, predictor=predictor, max_concurrent=1, queue_timeout=1.0).start()
    results: dict[str, Any] = {}
    parts = [("cc", "cc.png", cc), ("mlo", "mlo.png", mlo)]
    try:
        first = threading.Thread(target=lambda: results.update(first=_post(srv.url + "/api/predict", parts)))
        first.start()
        assert gated.entered.wait(30)
        start = time.perf_counter()
        status, res, headers = _post(srv.url + "/api/predict", parts)
        assert status == 503 and "busy: 1 prediction(s) running" in res["detail"] and headers["retry-after"] == "5"
        assert 0.9 < time.perf_counter() - start < 5
        gated.gate.set()
        first.join(30)
        assert results["first"][0] == 200 and abs(results["first"][1]["probability"] - row["prob"]) < 1e-4
    finally:
        gated.gate.set()
        srv.stop()


def test_exported_breast_model_is_served(breast_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mammolab.evaluate.export import export_run

    row, cc, mlo = _files(breast_run, "cc+mlo")
    assert mlo is not None
    out = export_run(breast_run[0], tmp_path / "exported", "onnx").out
    srv = make_server(out, port=0).start()
    try:
        status, res, _ = _post(srv.url + "/api/predict?heatmap=1", [("cc", "cc.png", cc), ("mlo", "mlo.png", mlo)])
        page = _get(srv.url + "/")[1]
    finally:
        srv.stop()
    assert status == 200, res
    assert abs(res["probability"] - row["prob"]) < 1e-4 and res["views_present"] == ["CC", "MLO"]
    assert res["heatmap_method"] == "occlusion" and res["heatmap_png"] and b'id="mlo"' in page  # no layers to hook


def _chromedriver() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromedriver() is None, reason="needs chromium, chromium-driver and selenium")
def test_breast_upload_in_headless_chromium(server: MammoServer, breast_run: tuple[Path, Path, pd.DataFrame],
                                            tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, ds, preds = breast_run
    row = preds[preds["views"] == "cc+mlo"].iloc[0]
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
        driver.find_element(By.ID, "submit").click()  # nothing chosen: said on the page, no request
        WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "error")))
        assert "choose a CC and/or an MLO image" in driver.find_element(By.ID, "error").text
        driver.find_element(By.ID, "cc").send_keys(str(ds / row["cc_path"]))
        driver.find_element(By.ID, "mlo").send_keys(str(ds / row["mlo_path"]))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "probability")))
        assert abs(float(driver.find_element(By.ID, "probability").text) - row["prob"]) < 1e-3
        assert driver.find_element(By.ID, "views").text == "views: CC and MLO"
        assert "heatmap: gradcam of the breast score, per view" in driver.find_element(By.ID, "model").text
        assert driver.find_element(By.ID, "overlay").size["width"] > 300
        shot = tmp_path / "serve_two_view.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000

        driver.get(server.url + "/")  # one view: the page says which is missing
        driver.find_element(By.ID, "mlo").send_keys(str(ds / row["mlo_path"]))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "views")))
        assert driver.find_element(By.ID, "views").text == "views: MLO only (CC missing)"
        assert "no CC view" in driver.find_element(By.ID, "warnings").text

        # Two views above --max-mb together: refused by the page itself, nothing uploaded (sparse files).
        for view in ("cc", "mlo"):
            with (tmp_path / f"{view}.dcm").open("wb") as f:
                f.truncate(30 * 1024 * 1024)
        driver.get(server.url + "/")
        driver.find_element(By.ID, "cc").send_keys(str(tmp_path / "cc.dcm"))
        driver.find_element(By.ID, "mlo").send_keys(str(tmp_path / "mlo.dcm"))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "error")))
        text = driver.find_element(By.ID, "error").text
        assert "the images are 60.0 MB together; this server takes at most 50.0 MB (serve --max-mb)" in text, text
    finally:
        driver.quit()
