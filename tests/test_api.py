"""The Python API: what ``from mammolab import ...`` gives, and a notebook walking through a whole study."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import mammolab

API_NAMES = ("organize", "preprocess", "train", "evaluate", "explain", "predict", "compare", "load_run")


def test_import_mammolab_stays_light() -> None:
    code = ("import sys, mammolab; heavy = [m for m in ('torch', 'lightning', 'cv2', 'pandas', 'timm') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_api_names_are_documented_callables() -> None:
    assert set(API_NAMES) <= set(mammolab.__all__) and set(API_NAMES) <= set(dir(mammolab))
    for name in API_NAMES:
        obj = getattr(mammolab, name)
        assert callable(obj), name
        assert inspect.signature(obj).parameters, name
        assert (obj.__doc__ or "").strip(), name
    # train, evaluate, explain and preprocess are the subpackages, callable; their modules still import.
    import importlib

    metrics = importlib.import_module("mammolab.evaluate.metrics")
    fit = importlib.import_module("mammolab.train.fit")
    assert inspect.ismodule(mammolab.train) and mammolab.train.fit is fit
    assert "loggers" in inspect.signature(mammolab.train).parameters
    assert inspect.signature(mammolab.evaluate).return_annotation == "Evaluation"
    assert metrics.auc_score([0, 1], [0.2, 0.8]) == 1.0
    assert mammolab.predict.__name__ == "predict_files"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        mammolab.trian  # noqa: B018


@pytest.mark.parametrize("package", ["data", "train", "evaluate", "explain"])
def test_subpackages_export_what_they_list(package: str) -> None:
    import importlib

    mod = importlib.import_module(f"mammolab.{package}")
    assert mod.__all__ and list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"mammolab.{package}.{name}"


@pytest.mark.slow
def test_a_study_from_a_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's notebook walk-through, on a tiny generated download."""
    monkeypatch.setenv("MAMMOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAMMOLAB_QUIET", "1")
    from mammolab import compare, evaluate, explain, load_run, organize, predict, preprocess, train
    from mammolab.data import synthesize

    raw = synthesize(tmp_path / "raw", patients=16, image_size=256, seed=1, workers=1)
    data = organize(raw.download_dir, csv_dir=raw.csv_dir, out=tmp_path / "dataset", kind="roi", roi_size=48,
                    bit_depth=8, workers=1, allow_degenerate=True)
    assert set(data.manifest["split"]) == {"train", "val", "test"}
    pp = preprocess(data.out, tmp_path / "dataset-pp", "patch", size=(32, 32), workers=1)
    assert len(pp.manifest) == len(data.manifest)

    runs = []
    for model in ("mammocnn", "resnet18"):
        run = train(pp.out, out=tmp_path / "runs" / model, model=model, regime="cft", weights="none",
                    image_size=32, epochs=1, batch_size=8, patience=0, accelerator="cpu", cache="ram")
        assert run.epochs_run == 1 and run.best_checkpoint.is_file()
        runs.append(run.run_dir)
    # The same call again is a finished run: returned, not retrained.
    assert train(pp.out, out=runs[0], model="mammocnn", regime="cft", weights="none", image_size=32, epochs=1,
                 batch_size=8, patience=0, accelerator="cpu", cache="ram").skipped

    ev = evaluate(runs[0], n_boot=100)
    assert ev.folder.name == "test" and len(ev.predictions) == ev.metrics["n"]
    assert ev.auc == ev.metrics["auc"]["value"] and len(ev.auc_ci) == 2
    assert all(f.is_file() for f in ev.figures)

    ex = explain(runs[0], limit=4)
    assert ex.folder == runs[0] / "explain" / "test-gradcam" and len(ex.records) == 4
    assert all(p.is_file() for p in ex.overlays)

    rep = compare(runs, tmp_path / "report")
    assert rep.html.is_file() and set(rep.table["run"]) == {"mammocnn", "resnet18"}
    assert 'id="heatmaps"' in rep.html.read_text()  # the explained run's gallery

    files = [pp.out / p for p in pp.manifest["path"][:2]]
    preds = predict(runs[0], files)
    assert [Path(r["path"]).name for r in preds] == [f.name for f in files]
    test = ev.predictions.set_index("path")["prob"]
    for r, f in zip(preds, files, strict=True):
        rel = str(f.relative_to(pp.out))
        if rel in test.index:  # a test image: the same probability the evaluation gave it
            assert r["prob"] == pytest.approx(test[rel], abs=1e-5)

    model = load_run(runs[0])
    assert tuple(model.classes) == ("benign", "malignant")
    assert isinstance(pd.read_csv(rep.csv), pd.DataFrame)
    assert os.environ["MAMMOLAB_QUIET"] == "1"
