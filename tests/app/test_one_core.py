"""One inference core (#24): the same files through ``predict`` (CLI), ``serve`` (HTTP), ``evaluate``,
``explain`` and the Python API give the same probabilities and classes at the same threshold (the
recipe's), and ``predict --heatmap`` explains the class it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import mammolab as ml
from mammolab.recipe import load_recipe

from helpers import post_file


def test_every_entry_point_gives_the_same_probability_and_class(trained_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from mammolab.app.serve import make_server
    from mammolab.cli import app
    from mammolab.evaluate.predict import predict_files

    ev = ml.evaluate(trained_run, n_boot=50)
    dataset = Path(json.loads((trained_run / "run.json").read_text())["dataset"])
    rows = ev.predictions.sort_values("path").head(4)
    files = [dataset / p for p in rows["path"]]
    threshold = load_recipe(trained_run).threshold
    # evaluate recorded its validation-chosen threshold in the recipe: the one every output decides at
    assert threshold == pytest.approx(ev.metrics["operating_points"]["youden"]["threshold"])
    want = {str(f): float(p) for f, p in zip(files, rows["prob"], strict=True)}
    classes = {k: ("malignant" if p >= threshold else "benign") for k, p in want.items()}

    predictor = ml.load_run(trained_run)
    api = predictor.predict_files(files)
    cli = CliRunner().invoke(app, ["predict", str(trained_run), *map(str, files), "--json"])
    assert cli.exit_code == 0, cli.output
    cli_res = json.loads(cli.stdout[cli.stdout.index("["):])
    srv = make_server(trained_run, port=0).start()
    try:
        served = {str(f): post_file(srv.url + "/api/predict", f.name, f.read_bytes()) for f in files}
    finally:
        srv.stop()
    summary = ml.explain(trained_run, files, method="occlusion", out=tmp_path / "ex", target="predicted",
                         grid=2)
    explained = summary.records.set_index("path")
    for res_api, res_cli in zip(api, cli_res, strict=True):
        key = res_api["path"]
        assert res_api["prob"] == pytest.approx(want[key], abs=1e-5)
        assert res_cli["prob"] == pytest.approx(want[key], abs=1e-5)
        # an upload's bytes cannot say they are a preprocessed dataset image: they take the whole recipe,
        # as predict_file(bytes) does (the same number), within the recipe contract's 1e-4 of evaluation
        upload = predictor.predict_file(Path(key).read_bytes(), filename=Path(key).name)
        assert served[key]["probability"] == pytest.approx(upload["prob"], abs=1e-6)
        assert served[key]["probability"] == pytest.approx(want[key], abs=1e-4)
        assert explained.loc[key, "prob_malignant"] == pytest.approx(want[key], abs=1e-5)
        assert res_api["class"] == res_cli["class"] == served[key]["class"] == classes[key]
        assert explained.loc[key, "predicted"] == explained.loc[key, "explained"] == classes[key]
        assert res_api["threshold"] == res_cli["threshold"] == served[key]["threshold"] == threshold

    # predict --heatmap explains the class it prints (decided at the same threshold)
    import mammolab.explain.predicted as predicted

    asked: list[str] = []
    real = predicted.heatmaps_for_arrays

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["target"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predicted, "heatmaps_for_arrays", spy)
    heat = predict_files(trained_run, files, heatmap_dir=tmp_path / "heat", method="occlusion")
    assert asked == [r["class"] for r in heat] == [classes[str(f)] for f in files]
    assert all(Path(r["heatmap"]).is_file() for r in heat)
    # at another threshold the printed class and the explained class move together
    asked.clear()
    low = predict_files(trained_run, files, heatmap_dir=tmp_path / "heat0", method="occlusion", threshold=0.0)
    assert asked == [r["class"] for r in low] == ["malignant"] * len(files)
    assert pd.Series([r["threshold"] for r in low]).eq(0.0).all()
