"""Heatmaps of a served two-view breast model over HTTP: ``?heatmap=1`` returns the breast's figure (CC and
MLO maps of the breast score side by side), equal to what ``predict --views --heatmap`` draws; none without
the flag; a missing view shown as such; the OpenAPI description says what the PNG holds."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_serve_two_view import _files, _get, _post, breast_run  # noqa: F401  (the module-scoped two-view run)

from mammolab.app.serve import MammoServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


@pytest.fixture(scope="module")
def occlusion_server(breast_run: tuple[Path, Path, pd.DataFrame]) -> Iterator[MammoServer]:  # noqa: F811
    srv = make_server(breast_run[0], port=0, method="occlusion").start()
    yield srv
    srv.stop()


def _png(b64: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_breast_heatmap_over_http(occlusion_server: MammoServer, breast_run: tuple[Path, Path, pd.DataFrame],  # noqa: F811
                                  tmp_path: Path) -> None:
    from mammolab.evaluate.breast import predict_breast_files

    run, ds, _ = breast_run
    row, cc, mlo = _files(breast_run, "cc+mlo")
    assert mlo is not None
    url = occlusion_server.url + "/api/predict"
    status, res, _ = _post(url + "?heatmap=1", [("cc", row["cc_path"].split("/")[-1], cc),
                                                ("mlo", row["mlo_path"].split("/")[-1], mlo)])
    assert status == 200, res
    assert res["heatmap_method"] == "occlusion" and abs(res["probability"] - row["prob"]) < 1e-4
    served = _png(res["heatmap_png"])
    # the same figure as predict --views cc+mlo --heatmap draws for these files
    written = predict_breast_files(run, [ds / row["cc_path"], ds / row["mlo_path"]], heatmap_dir=tmp_path,
                                   method="occlusion")[0]
    assert np.array_equal(served, cv2.imread(written["heatmap"], cv2.IMREAD_COLOR))
    status, plain, _ = _post(url, [("cc", "cc.png", cc), ("mlo", "mlo.png", mlo)])
    assert status == 200 and plain["heatmap_png"] is None and plain["heatmap_method"] is None
    # one view: a narrower figure (a "no MLO view" tile instead of an image | map panel)
    status, one, _ = _post(url + "?heatmap=1", [("cc", "cc.png", cc)])
    assert status == 200 and one["missing_view"] == "MLO"
    assert _png(one["heatmap_png"]).shape[1] < served.shape[1]
    # the limits still hold with heatmap=1: an unreadable file is one 422 line, nothing drawn
    status, bad, _ = _post(url + "?heatmap=1", [("cc", "cc.png", b"not an image"), ("mlo", "mlo.png", mlo)])
    assert status == 422 and "cc: " in bad["detail"] and "\n" not in bad["detail"]


def test_openapi_and_page_describe_the_breast_figure(occlusion_server: MammoServer) -> None:
    spec = json.loads(_get(occlusion_server.url + "/openapi.json")[1])
    desc = spec["components"]["schemas"]["BreastPrediction"]["properties"]["heatmap_png"]["description"]
    assert "CC and MLO views side by side" in desc
    params = {p["name"]: p for p in spec["paths"]["/api/predict"]["post"]["parameters"]}
    assert "per view maps of the breast's score" in params["heatmap"]["description"]
    _, script = _get(occlusion_server.url + "/page.js")
    assert b"/api/predict?heatmap=1" in script and b"id: 'overlay'" in script
