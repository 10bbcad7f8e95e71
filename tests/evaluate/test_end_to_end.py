"""End to end on real (tiny) runs: train -> evaluate -> explain -> compare -> predict, API and CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from evaluate_fixtures import make_box_dataset
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import eval_dir, evaluate_run, load_evaluation
from mammolab.evaluate.predict import predict_files
from mammolab.evaluate.report import compare_runs
from mammolab.explain.runner import explain_run, to_image_space

pytestmark = pytest.mark.slow

train_mod = pytest.importorskip("mammolab.train.fit")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A dataset with lesion boxes and two one-epoch runs on it (resnet18, mammoresnet) at 48 px."""
    os.environ["MAMMOLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    root = tmp_path_factory.mktemp("e2e")
    # 44 images: below the image cache's pool threshold, so it decodes in-process. Forking its decode
    # pool after OpenCV's thread pool has run in this process (overlays do) hangs the workers.
    ds = make_box_dataset(root / "ds", patients=22)
    out = []
    for model in ("resnet18", "mammoresnet"):
        cfg = {"model": model, "weights": "none", "image_size": 48, "epochs": 1, "batch_size": 16,
               "accelerator": "cpu", "patience": 0, "num_workers": 0, "cache": "ram"}
        train_mod.train(ds, cfg, root / model)
        out.append(root / model)
    return ds, out[0], out[1]


def test_evaluate_run_writes_and_skips(runs) -> None:
    ds, run, _ = runs
    folder = evaluate_run(run, "test", n_boot=200)
    metrics, preds = load_evaluation(run)
    assert folder == eval_dir(run, "test") and (folder / "val_predictions.csv").is_file()
    assert metrics["n"] == 12 and metrics["n_patients"] == 6 and metrics["split"] == "test"
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(preds["target"], preds["prob"]))
    assert metrics["operating_points"]["youden"]["source"] == "val"
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    evaluate_run(run, "test", n_boot=200)  # same checkpoint and settings: skipped
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp
    tta = evaluate_run(run, "test", tta=True, n_boot=100)
    assert tta.name == "test-tta" and json.loads((tta / "metrics.json").read_text())["tta"] is True


def test_explain_split_and_files(runs, tmp_path: Path) -> None:
    ds, run, _ = runs
    s = explain_run(run, split="test", method="gradcam", out_dir=tmp_path / "cam")
    assert s["n_images"] == 12 and s["n_with_box"] == 12 and not s["errors"]
    assert 0.0 <= s["energy_in_box_mean"] <= 1.0 and 0.0 <= s["pointing_game_hit_rate"] <= 1.0
    overlays = sorted((tmp_path / "cam" / "overlays").glob("*.png"))
    assert len(overlays) == 12
    img = cv2.imread(str(overlays[0]))
    assert img.shape[0] >= 256 and img.shape[1] > 2 * 256
    table = pd.read_csv(tmp_path / "cam" / "localisation.csv")
    assert len(table) == 12 and table["energy_in_box"].between(0, 1).all()
    assert (eval_dir(run, "test") / "localisation_gradcam.json").is_file()  # for the comparison report
    files = [ds / p for p in table["path"][:2]] + [tmp_path / "missing.png"]
    s2 = explain_run(run, files, method="occlusion", out_dir=tmp_path / "occ", grid=4)
    assert s2["n_images"] == 2 and s2["n_with_box"] == 2 and len(s2["errors"]) == 1
    assert "missing.png" in s2["errors"][0]["error"]
    with pytest.raises(MammoLabError, match="--method"):
        explain_run(run, method="lime", out_dir=tmp_path / "x")


def test_explain_limit_targets_and_cli(runs, tmp_path: Path) -> None:
    from mammolab.cli import app

    _, run, _ = runs
    s = explain_run(run, split="test", method="gradcam", out_dir=tmp_path / "few", limit=4, target="malignant")
    table = pd.read_csv(tmp_path / "few" / "localisation.csv")
    # Four images of the split, both classes among them, every one explained as malignant.
    assert s["n_images"] == 4 and s["limit"] == 4 and s["split"] == "test" and s["target"] == "malignant"
    assert set(table["label"]) == {"benign", "malignant"} and set(table["explained"]) == {"malignant"}
    truth = explain_run(run, split="test", method="occlusion", grid=4, out_dir=tmp_path / "true", limit=4)
    table = pd.read_csv(tmp_path / "true" / "localisation.csv")
    assert truth["target"] == "true" and (table["explained"] == table["label"]).all()
    with pytest.raises(MammoLabError, match="--limit"):
        explain_run(run, split="test", out_dir=tmp_path / "x", limit=0)
    with pytest.raises(MammoLabError, match="--target"):
        explain_run(run, split="test", out_dir=tmp_path / "x", target="cancer")
    res = CliRunner().invoke(app, ["explain", str(run), "--out", str(tmp_path / "cli"), "--limit", "2",
                                   "--target", "predicted", "--layer", "body.layer3"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "localisation.json").read_text())["key"]["layer"] == "body.layer3"
    res = CliRunner().invoke(app, ["explain", str(run), "--out", str(tmp_path / "bad"), "--layer", "layer9"])
    # (main() turns this into one red line and exit code 2; the runner sees the exception itself)
    assert isinstance(res.exception, MammoLabError) and "did you mean body.layer4" in str(res.exception)


def test_to_image_space_inverts_pad_resize() -> None:
    from mammolab.train.imagecache import resize_image

    img = np.zeros((40, 80), dtype=np.uint8)
    img[10:14, 60:66] = 255  # a marker right of centre
    small = resize_image(img, 32, "pad").astype(np.float32) / 255
    back = to_image_space(small, img.shape, 32, "pad")
    r, c = np.unravel_index(np.argmax(back), back.shape)
    assert back.shape == img.shape and 8 <= r <= 16 and 57 <= c <= 68


def test_compare_real_runs_with_localisation(runs, tmp_path: Path) -> None:
    _, a, b = runs
    explain_run(a, split="test", method="gradcam", out_dir=tmp_path / "cam")
    paths = compare_runs([a, b], tmp_path / "report")  # b is evaluated on the fly
    table = pd.read_csv(paths["csv"])
    assert set(table["run"]) == {"resnet18", "mammoresnet"}
    assert table["params"].notna().all() and (table["epochs"] == 1).all() and table["throughput_img_s"].notna().all()
    loc = table.set_index("run").loc["resnet18", "localisation_energy"]
    assert 0 <= loc <= 1
    assert "data:image/png;base64," in paths["html"].read_text()


def test_predict_formats_and_errors(runs, tmp_path: Path) -> None:
    from helpers import write_dicom

    ds, run, _ = runs
    _, preds = load_evaluation(run)
    row = preds.iloc[0]
    png = ds / row["path"]
    arr16 = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    dcm = write_dicom(tmp_path / "case.dcm", arr16)
    jpg = tmp_path / "case.jpg"
    cv2.imwrite(str(jpg), (arr16 >> 8).astype(np.uint8))
    pgm = tmp_path / "case.pgm"
    cv2.imwrite(str(pgm), arr16)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    res = predict_files(run, [png, dcm, bad, jpg, pgm, txt], heatmap_dir=tmp_path / "heat")
    assert [("error" in r) for r in res] == [False, False, True, False, False, True]
    # The run's own preprocessing: a dataset image gets the probability its evaluation gave it.
    assert res[0]["prob"] == pytest.approx(row["prob"], abs=1e-4)
    assert res[4]["prob"] == pytest.approx(row["prob"], abs=1e-4)  # same 16-bit pixels via PGM
    assert res[1]["class"] in ("benign", "malignant") and 0 <= res[1]["prob"] <= 1
    assert "broken.png" in res[2]["error"] and "unsupported" in res[5]["error"]
    assert len(list((tmp_path / "heat").glob("*_gradcam.png"))) == 4


def test_cli_commands(runs, tmp_path: Path) -> None:
    from mammolab.cli import app

    ds, a, b = runs
    cli = CliRunner()
    r = cli.invoke(app, ["evaluate", str(a), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    assert "AUC" in r.output and "results:" in r.output
    r = cli.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp" / "report.html").is_file() and "report:" in r.output
    r = cli.invoke(app, ["explain", str(a), "--method", "gradcam++", "--out", str(tmp_path / "ex")])
    assert r.exit_code == 0, r.output
    assert "pointing game" in r.output and len(list((tmp_path / "ex" / "overlays").glob("*.png"))) == 12
    png = next(iter((ds / "test").rglob("*.png")))
    r = cli.invoke(app, ["predict", str(a), str(png), str(tmp_path / "nope.png"), "--json"])
    assert r.exit_code == 1  # one file failed, the other was still predicted
    payload = json.loads(r.stdout[r.stdout.index("["):])
    assert "prob" in payload[0] and "error" in payload[1]
    r = cli.invoke(app, ["predict", str(a), str(png)])
    assert r.exit_code == 0 and png.name in r.output
    for cmd in ("evaluate", "compare", "explain", "predict"):
        r = cli.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "--" in r.output


def test_predict_heatmap_explains_the_printed_class(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict --heatmap`` explains the class it prints, decided at the run's threshold, not at 0.5."""
    import mammolab.explain.common as common

    ds, run, _ = runs
    png = ds / pd.read_csv(ds / "manifest.csv")["path"].iloc[0]
    prob = predict_files(run, [png])[0]["prob"]
    explained: list[int] = []
    real = common.compute_heatmaps  # where single-view heatmaps are computed (explain/common.py)

    def spy(model, x, method, targets, **kw):  # noqa: ANN001, ANN003, ANN202
        explained.extend(targets)
        return real(model, x, method, targets, **kw)

    monkeypatch.setattr(common, "compute_heatmaps", spy)
    # A threshold on the other side of the probability from 0.5, so the two decisions differ.
    threshold = min(1.0, prob + 0.01) if prob >= 0.5 else max(0.0, prob - 0.01)
    (res,) = predict_files(run, [png], heatmap_dir=tmp_path / "heat", threshold=threshold)
    assert res["threshold"] == pytest.approx(threshold)
    assert explained == [list(("benign", "malignant")).index(res["class"])]
    assert res["class"] == ("malignant" if prob >= threshold else "benign")
