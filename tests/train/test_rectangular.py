"""Rectangular training inputs (``--image-size HxW``, height x width): parsing, resizing, the image cache,
augmentation, a real run on generated whole films (synth -> organize -> preprocess -> train at 48x32),
predict from the source DICOMs = evaluate, ONNX export, Grad-CAM, two views, tune and the wizard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw, parse_image_size, size_text
from mammolab.train.config import resolve_train_config, result_hash
from mammolab.train.imagecache import build_image_store, cache_key, pad_placement, resize_image

H, W = 48, 32  # the runs' input: taller than wide, like a film


# ----------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize(("value", "expected"), [
    (32, 32), ("32", 32), ("64x48", (64, 48)), ("64X48", (64, 48)), (" 64 x 48 ", (64, 48)), ([64, 48], (64, 48)),
    ((48, 64), (48, 64)), ("40x40", 40), ([40, 40], 40),
])
def test_image_size_forms(value: object, expected: object) -> None:
    cfg = resolve_train_config(overrides={"model": "mammocnn", "image_size": value})
    assert cfg.image_size == expected
    assert cfg.model_dump(mode="json")["image_size"] == (list(expected) if isinstance(expected, tuple) else expected)


@pytest.mark.parametrize("value", ["12x", "x12", "64x48x2", "abc", "64*48", 0, "4x32", "32x7", True, [64], [64, 48, 2],
                                   [64.0, 48.0], -32])
def test_image_size_errors_are_one_line_naming_the_option(value: object) -> None:
    with pytest.raises(MammoLabError) as info:
        resolve_train_config(overrides={"model": "mammocnn", "image_size": value})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == f"--image-size: expected N or HxW (height x width) with integers of at least 8, got {value!r}"


def test_model_minimum_applies_to_each_side() -> None:
    with pytest.raises(MammoLabError, match=r"^--image-size: resnet18 needs at least 32 px on each side, got "
                                            r"64x16 \(width\)$"):
        resolve_train_config(overrides={"model": "resnet18", "image_size": "64x16"})
    with pytest.raises(MammoLabError, match=r"needs at least 32 px on each side, got 16x64 \(height\)$"):
        resolve_train_config(overrides={"model": "resnet18", "image_size": [16, 64]})
    with pytest.raises(MammoLabError, match=r"needs at least 32 px on each side, got 16$"):
        resolve_train_config(overrides={"model": "resnet18", "image_size": 16})
    assert resolve_train_config(overrides={"model": "resnet18", "image_size": "64x32"}).image_size == (64, 32)


def test_square_sizes_keep_their_hash_and_yaml_forms(tmp_path: Path) -> None:
    """An int size is stored and hashed as it always was; a square pair is the same run; HxW is another run."""
    base = {"model": "mammocnn", "epochs": 1}
    h32 = result_hash(resolve_train_config(overrides={**base, "image_size": 32}))
    assert h32 == result_hash(resolve_train_config(overrides={**base, "image_size": "32x32"}))
    assert h32 == result_hash(resolve_train_config(overrides={**base, "image_size": [32, 32]}))
    # the hash a run of mammocnn at 32 px had before rectangles existed (what its run.json recorded)
    assert result_hash(resolve_train_config(overrides={"model": "mammocnn", "image_size": 32})) == "451ac97dc7a5d19b"
    from mammolab.config import dump_yaml

    assert "image_size: 32\n" in dump_yaml(resolve_train_config(overrides={**base, "image_size": "32x32"}))
    rect = resolve_train_config(overrides={**base, "image_size": "48x32"})
    assert result_hash(rect) not in (h32, result_hash(resolve_train_config(overrides={**base, "image_size": "32x48"})))
    # YAML: a list or a string
    for text in ("image_size: [48, 32]", "image_size: '48x32'", "image_size: 48x32"):
        f = tmp_path / "c.yaml"
        f.write_text(f"model: mammocnn\n{text}\n")
        assert resolve_train_config(f).image_size == (48, 32), text
    f.write_text("model: mammocnn\nimage_size: [48, 0]\n")
    with pytest.raises(MammoLabError, match=r"^--image-size: expected N or HxW .* got \[48, 0\]$"):
        resolve_train_config(f)


def test_helpers() -> None:
    assert as_hw(224) == (224, 224) and as_hw((1152, 896)) == (1152, 896) and as_hw("1152x896") == (1152, 896)
    assert size_text(224) == "224" and size_text((1152, 896)) == "1152x896" and size_text([64, 64]) == "64"
    assert parse_image_size("1152x896", option="size") == (1152, 896)
    with pytest.raises(MammoLabError, match="^size: expected"):
        parse_image_size("1152x", option="size")


# ----------------------------------------------------------------------------------- resizing

def test_resize_stretch_and_pad_placement() -> None:
    img = np.full((30, 30), 200, np.uint8)  # a square into a 64x48 rectangle: 48x48, centred vertically
    out = resize_image(img, (64, 48), "pad")
    assert out.shape == (64, 48) and out.dtype == np.uint8
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 55, 0, 47)
    assert pad_placement((30, 30), (64, 48)) == (8, 0, 48, 48)

    tall = np.full((100, 30), 60000, np.uint16)  # scale 0.64 (height-bound): 64x19, bars of 14 and 15 px
    out = resize_image(tall, (64, 48), "pad")
    rows, cols = np.nonzero(out)
    assert out.dtype == np.uint16 and (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 63, 14, 32)
    assert pad_placement((100, 30), (64, 48)) == (0, 14, 64, 19)

    exact = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)  # already the target's aspect: no bars at all
    assert np.array_equal(resize_image(exact, (64, 48), "pad"), exact)
    assert resize_image(tall, (64, 48), "stretch").shape == (64, 48)
    assert resize_image(tall, (48, 64), "stretch").shape == (48, 64)
    # an int is the square it always was, and a square pair is the same square
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 255, (37, 23)).astype(np.uint8)
    for mode in ("stretch", "pad"):
        assert np.array_equal(resize_image(odd, 32, mode), resize_image(odd, (32, 32), mode))
    with pytest.raises(MammoLabError, match="resize: expected 'stretch' or 'pad', got 'crop'"):
        resize_image(odd, (64, 48), "crop")


def test_to_image_space_inverts_a_rectangular_pad() -> None:
    from mammolab.explain.runner import to_image_space

    img_shape = (100, 30)
    heat = np.zeros((64, 48), np.float32)
    heat[:, 14:33] = 1.0  # exactly the image's columns inside the canvas
    back = to_image_space(heat, img_shape, (64, 48), "pad")
    assert back.shape == img_shape and back.min() > 0.99
    assert to_image_space(heat, img_shape, None, "pad").shape == img_shape  # size read from the heatmap


# ----------------------------------------------------------------------------------- cache and augmentation

def _tiny_dataset(root: Path, n: int = 6) -> tuple[Path, list[str]]:
    from mammolab.data.manifest import write_info, write_manifest
    from mammolab.io.images import write_png

    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        rel = f"img{i}.png"
        write_png(root / rel, rng.integers(0, 65535, (90, 60)).astype(np.uint16))
        rows.append({"path": rel, "split": "train", "label": "benign", "patient_id": f"P{i}", "width": 60,
                     "height": 90, "image_id": f"I{i}"})
    import pandas as pd

    write_manifest(pd.DataFrame(rows), root)
    write_info(root, {"stage": "test-fixture", "config_hash": "rect", "classes": ["benign", "malignant"]})
    return root, [r["path"] for r in rows]


def test_cache_key_and_store_shape(tmp_path: Path) -> None:
    ds, paths = _tiny_dataset(tmp_path / "ds")
    k = {s: cache_key(ds, paths, s, "pad") for s in ((64, 48), (48, 64), 48, (48, 48))}
    assert k[(64, 48)] != k[(48, 64)] and k[48] == k[(48, 48)] and len({k[(64, 48)], k[(48, 64)], k[48]}) == 3
    ram = build_image_store(ds, paths, image_size=(64, 48), resize="pad", cache="ram")
    assert ram.array.shape == (6, 64, 48)
    disk = build_image_store(ds, paths, image_size=(64, 48), resize="pad", cache="disk", cache_dir=tmp_path / "c")
    assert isinstance(disk.array, np.memmap) and disk.array.shape == (6, 64, 48) and not disk.in_ram
    assert disk.file is not None and disk.file.name == f"{k[(64, 48)]}.npy"
    from mammolab.io import read_image

    np.testing.assert_array_equal(disk.array[2], resize_image(read_image(ds / paths[2]), (64, 48), "pad"))
    np.testing.assert_array_equal(ram.array, disk.array)
    again = build_image_store(ds, paths, image_size=(64, 48), resize="pad", cache="disk", cache_dir=tmp_path / "c")
    assert again.reused
    other = build_image_store(ds, paths, image_size=(48, 64), resize="pad", cache="disk", cache_dir=tmp_path / "c")
    assert not other.reused and other.array.shape == (6, 48, 64)


def test_augmentation_keeps_the_rectangle() -> None:
    from mammolab.train.config import AugmentConfig
    from mammolab.train.datamodule import build_augment

    aug = build_augment(AugmentConfig(crop_scale=(0.5, 0.8), rotate=20), (64, 48))
    assert aug is not None
    crop = aug.transforms[0]
    assert tuple(crop.size) == (64, 48) and crop.ratio == pytest.approx((0.9 * 48 / 64, 1.1 * 48 / 64))
    x = torch.rand(1, 64, 48)
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == (1, 64, 48) and not torch.equal(x, y)
    square = build_augment(AugmentConfig(), 32)  # an int: the transform of earlier versions
    assert square is not None and tuple(square.transforms[0].size) == (32, 32)
    assert square.transforms[0].ratio == (0.9, 1.1)


# ----------------------------------------------------------------------------------- a real rectangular run

def _source_dicom(synth, case_id: str) -> Path:
    (path,) = (Path(synth.download_dir) / case_id).rglob("*.dcm")
    return path


@pytest.fixture(scope="module")
def rect_run(synth_legacy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Whole films (256x154) organized, preprocessed to 96x64, then trained at 48x32 through the CLI."""
    from mammolab.cli import app
    from mammolab.data.organize import OrganizeConfig, organize_cbis
    from mammolab.evaluate.evaluation import evaluate_run
    from mammolab.preprocess.pipeline import preprocess

    root = tmp_path_factory.mktemp("rect")
    organized, pp, run = root / "org", root / "pp", root / "run"
    organize_cbis(synth_legacy.download_dir, synth_legacy.csv_dir, organized,
                  OrganizeConfig(kind="full", allow_degenerate=True), metadata=synth_legacy.metadata, workers=1)
    preprocess(organized, pp, "full", size=(96, 64), workers=1)
    res = CliRunner().invoke(app, ["train", str(pp), "--model", "mammoresnet", "--image-size", f"{H}x{W}",
                                   "--out", str(run), "--epochs", "1", "--batch-size", "4", "--weights", "none",
                                   "--accelerator", "cpu", "--patience", "0", "--cache", "disk",
                                   "--set", f"cache_dir={root / 'cache'}"])
    assert res.exit_code == 0, res.output
    evaluate_run(run, "val", n_boot=20)  # val holds both classes (the 12-patient test split is all malignant)
    return {"organized": organized, "pp": pp, "run": run, "root": root}


def test_cli_rejects_a_bad_size_in_one_line(rect_run: dict[str, Path], tmp_path: Path) -> None:
    from mammolab.cli import app

    res = CliRunner().invoke(app, ["train", str(rect_run["pp"]), "--model", "mammoresnet", "--image-size", "12x",
                                   "--out", str(tmp_path / "bad")])
    assert res.exit_code != 0 and isinstance(res.exception, MammoLabError)
    assert str(res.exception) == "--image-size: expected N or HxW (height x width) with integers of at least 8, " \
                                 "got '12x'"
    assert not (tmp_path / "bad" / "run.json").exists()


def test_run_records_the_rectangle(rect_run: dict[str, Path]) -> None:
    from mammolab.recipe import load_recipe

    run = rect_run["run"]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "eval" / "val" / "predictions.csv").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["image_size"] == [H, W]
    recipe_json = json.loads((run / "recipe.json").read_text())
    assert recipe_json["transform"]["image_size"] == [H, W]
    recipe = load_recipe(run)
    assert recipe.transform.image_size == (H, W) and recipe.transform.hw == (H, W)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["mammolab"]["image_size"] == [H, W]
    # the cache holds [N, 48, 32] films (disk cache), keyed by the rectangle
    (cached,) = (rect_run["root"] / "cache").glob("*.npy")
    assert np.load(cached, mmap_mode="r").shape[1:] == (H, W)
    # an older recipe with an int still loads
    old = dict(recipe_json, transform=dict(recipe_json["transform"], image_size=32))
    (rect_run["root"] / "old").mkdir(exist_ok=True)
    (rect_run["root"] / "old" / "recipe.json").write_text(json.dumps(old))
    assert load_recipe(rect_run["root"] / "old").transform.image_size == 32


def test_predict_from_source_dicoms_matches_evaluate(rect_run: dict[str, Path], synth_legacy) -> None:
    from mammolab.evaluate.evaluation import load_evaluation
    from mammolab.evaluate.predict import Predictor
    from mammolab.infer import load_run, predict_split
    from mammolab.io import read_image

    run = rect_run["run"]
    _, preds = load_evaluation(run, "val")
    assert len(preds) >= 4 and set(preds["label"]) == {"benign", "malignant"}
    p = Predictor.load(run)
    dicoms = [_source_dicom(synth_legacy, str(i)) for i in preds["image_id"]]
    got = p.predict_files(dicoms)
    assert not any("error" in r for r in got)
    np.testing.assert_allclose([r["prob"] for r in got], preds["prob"].to_numpy(), atol=1e-4, rtol=0)
    assert np.ptp(preds["prob"].to_numpy()) > 1e-3  # not one constant output
    assert p.prepare(read_image(dicoms[0])).tensor.shape == (1, H, W)
    # the training cache path (datamodule, [N, H, W] store) gives the same probabilities
    cached = predict_split(load_run(run), "val")
    np.testing.assert_allclose(cached.set_index("path").loc[preds["path"], "prob"].to_numpy(),
                               preds["prob"].to_numpy(), atol=1e-4, rtol=0)


def test_serve_scores_a_film_as_predict_does(rect_run: dict[str, Path], synth_legacy) -> None:
    from fastapi.testclient import TestClient

    from mammolab.app.serve import create_app
    from mammolab.evaluate.evaluation import load_evaluation
    from mammolab.evaluate.predict import Predictor

    _, preds = load_evaluation(rect_run["run"], "val")
    film = _source_dicom(synth_legacy, str(preds["image_id"].iloc[0]))
    with TestClient(create_app(Predictor.load(rect_run["run"])), base_url="http://127.0.0.1") as client:
        res = client.post("/api/predict?heatmap=1", files={"file": ("film.dcm", film.read_bytes())})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["probability"] == pytest.approx(float(preds["prob"].iloc[0]), abs=1e-4) and body.get("heatmap_png")


def test_export_onnx_at_hxw(rect_run: dict[str, Path], synth_legacy, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mammolab.evaluate.evaluation import load_evaluation
    from mammolab.evaluate.export import export_run
    from mammolab.evaluate.predict import Predictor

    res = export_run(rect_run["run"], tmp_path / "onnx", "onnx")
    assert res.max_abs_diff <= 1e-3
    card = json.loads((tmp_path / "onnx" / "model_card.json").read_text())
    assert card["input"].startswith(f"[N, 1, {H}, {W}] float32")
    assert f"resize to {H}x{W} px (height x width)" in (tmp_path / "onnx" / "model_card.md").read_text()
    sess = ort.InferenceSession(str(res.model_file), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == [H, W]
    x = np.random.default_rng(3).normal(0, 1, (2, 1, H, W)).astype(np.float32)
    model = Predictor.load(rect_run["run"]).model.cpu().eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, atol=1e-4, rtol=0)
    _, preds = load_evaluation(rect_run["run"], "val")
    exported = Predictor.load(tmp_path / "onnx").predict_files([_source_dicom(synth_legacy, str(i))
                                                                for i in preds["image_id"]])
    np.testing.assert_allclose([r["prob"] for r in exported], preds["prob"].to_numpy(), atol=1e-4, rtol=0)


def test_explain_heatmaps_at_hxw(rect_run: dict[str, Path], synth_legacy, tmp_path: Path) -> None:
    from mammolab.evaluate.predict import Predictor
    from mammolab.explain.cam import compute_heatmaps
    from mammolab.explain.runner import explain_run, heatmaps_for_arrays
    from mammolab.infer import load_run
    from mammolab.io import read_image

    run = load_run(rect_run["run"])
    images = [read_image(p) for p in sorted((rect_run["pp"] / "val").rglob("*.png"))[:3]]
    x = torch.stack([run.preprocess(a) for a in images])
    assert x.shape == (3, 1, H, W)
    for method in ("gradcam", "occlusion"):
        assert compute_heatmaps(run.model, x, method, grid=4).shape == (3, H, W)
    _, heats, _ = heatmaps_for_arrays(run, images, "gradcam")
    assert [h.shape for h in heats] == [a.shape for a in images] == [(96, 64)] * 3
    assert all(h.max() > 0 for h in heats)
    summary = explain_run(rect_run["run"], split="val", method="gradcam", out_dir=tmp_path / "cam", limit=2)
    assert summary["n_images"] == 2 and len(list((tmp_path / "cam" / "overlays").glob("*.png"))) == 2
    film = next((Path(synth_legacy.download_dir)).rglob("*full mammogram images*/*.dcm"))
    from mammolab.explain.predicted import heatmapper

    predictor = Predictor.load(rect_run["run"])
    res = predictor.predict_file(film, heatmap=heatmapper(predictor))
    assert res["heatmap"].ndim == 3 and res["heatmap"].shape[2] == 3


def test_two_view_run_at_hxw(rect_run: dict[str, Path], tmp_path: Path) -> None:
    from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
    from mammolab.infer import load_run
    from mammolab.train.fit import train
    from mammolab.train.inference import run_datamodule
    from mammolab.train.views import TwoViewDataModule

    cfg = resolve_train_config(overrides={
        "model": "mammoresnet", "views": "cc+mlo", "image_size": [H, W], "batch_size": 2, "epochs": 1,
        "patience": 0, "accelerator": "cpu", "weights": "none", "cache": "ram"})
    result = train(rect_run["pp"], cfg, tmp_path / "2v")
    assert result.info["n_breasts"]["train"] >= 2
    dm = run_datamodule(load_run(result.run_dir), TwoViewDataModule)
    x, _, present = dm.dataset("train", augment=True)[0]
    assert x.shape == (2, 1, H, W) and present.dtype == torch.bool
    evaluate_run(result.run_dir, "val", n_boot=20)
    _, preds = load_evaluation(result.run_dir, "val")
    assert len(preds) == result.info["n_breasts"]["val"] and preds["prob"].between(0, 1).all()
    assert json.loads((result.run_dir / "recipe.json").read_text())["transform"]["image_size"] == [H, W]


# ----------------------------------------------------------------------------------- tune, experiment, wizard

def test_tune_config_and_experiment_take_hxw(tmp_path: Path) -> None:
    from mammolab.app.experiment import load_experiment, resolved_runs
    from mammolab.tune.runner import tune_config

    assert tune_config({}, {"model": "mammocnn", "image_size": "64x48"}, {"lr": 0.01}).image_size == (64, 48)
    exp = tmp_path / "e.yaml"
    exp.write_text("name: e\nout: out\ndata: {manifest: m.csv}\ntrain:\n  defaults: {image_size: 64x48}\n"
                   "  runs:\n    - {model: mammocnn}\n    - {model: mammocnn, name: wide, image_size: [48, 64]}\n")
    runs = dict(resolved_runs(load_experiment(exp)))
    assert runs["mammocnn"].image_size == (64, 48) and runs["wide"].image_size == (48, 64)
    exp.write_text(exp.read_text().replace("image_size: [48, 64]", "image_size: 48x"))
    with pytest.raises(MammoLabError, match="--image-size: expected N or HxW"):
        resolved_runs(load_experiment(exp))


def test_wizard_accepts_hxw() -> None:
    from mammolab.app.wizard import Asker, build_experiment, equivalent_commands

    said: list[str] = []
    answers = iter(["12x", "1152x4000", "10", "1152x896"])
    a = Asker(read=lambda _q: next(answers), write=said.append)
    assert a.image_size("Training image size in pixels", 224, 32, 2048) == (1152, 896)
    assert "is not N or HxW" in said[0] and "each side from 32 to 2048" in said[1]
    assert "expected a number from 32 to 2048" in said[2]  # an int is told as before
    exp = build_experiment({
        "source": "cbis-ddsm", "download": "/d", "csv_dir": "/c", "labels": "binary", "abnormality": "mass",
        "kind": "full", "preprocess": "full", "models": ["mammocnn"], "plain_models": [], "regime": "cft",
        "weights": "none", "image_size": (1152, 896), "epochs": 3, "name": "w", "out": "/tmp/w", "tta": False,
        "explain": False})
    assert exp["train"]["defaults"]["image_size"] == [1152, 896] and exp["preprocess"]["size"] == [1152, 896]
    cmds = " ".join(equivalent_commands(exp))
    assert "--image-size 1152x896" in cmds and "--size 1152x896" in cmds
