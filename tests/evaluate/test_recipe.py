"""The recipe on its own: built from a dataset chain, saved and read back, applied, and its warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from evaluate_fixtures import make_box_dataset

from mammolab.data.manifest import read_info, write_info
from mammolab.errors import MammoLabError
from mammolab.infer.apply import apply_recipe, input_warnings
from mammolab.preprocess.pipeline import preprocess
from mammolab.recipe import (
    RECIPE_VERSION,
    SizeRange,
    build_recipe,
    dataset_chain,
    load_recipe,
    parse_box,
    write_recipe,
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chain")
    ds = make_box_dataset(root / "ds", patients=12, size=40, seed=3)
    info = read_info(ds)
    info.update(stage="organize", config={"kind": "crop", "bit_depth": 16})  # as organize records it
    write_info(ds, info)
    pp = root / "pp"
    preprocess(ds, pp, "patch", size=(24, 24), workers=1)
    return ds, pp


def _recipe(dataset: Path, **kw):
    args = {"name": "r", "model": "m", "classes": ["benign", "malignant"], "num_outputs": 1, "image_size": 16,
            "resize": "stretch", "mean": 0.5, "std": 0.25}
    return build_recipe(dataset, **{**args, **kw})


def test_build_from_chain_roundtrip_and_apply(chain, tmp_path: Path) -> None:
    ds, pp = chain
    assert [p for p, _ in dataset_chain(pp)] == [pp, ds]
    r = _recipe(pp)
    assert r.source.kind == "crop" and r.source.bit_depth == 16 and r.complete
    assert r.source.sizes.width_max == 40 and r.source.sizes.aspect_min == 1.0
    assert [n for s in r.steps() for n in s] == ["resize", "denoise", "clahe"]
    assert r.steps()[0]["resize"]["height"] == 24
    write_recipe(tmp_path, r)
    assert load_recipe(tmp_path) == r and json.loads((tmp_path / "recipe.json").read_text())["version"] == 1
    # Applying from the organized image gives the tensor of the preprocessed image (what training read).
    from mammolab.io import read_image

    rel = "train/" + next(p.relative_to(ds / "train").as_posix() for p in (ds / "train").rglob("*.png"))
    a = apply_recipe(r, read_image(ds / rel))
    b = apply_recipe(r, read_image(pp / rel), start="preprocessed")
    assert a.tensor.shape == (1, 16, 16) and a.image.dtype == np.uint8 and a.image.shape == (24, 24)
    assert np.array_equal(a.tensor, b.tensor)
    with pytest.raises(MammoLabError, match="start"):
        apply_recipe(r, read_image(ds / rel), start="raw")
    with pytest.raises(MammoLabError, match="--box: the model was trained on crop"):
        apply_recipe(r, read_image(ds / rel), box=(0, 0, 4, 4))
    with pytest.raises(MammoLabError, match="all black"):
        apply_recipe(r, np.zeros((40, 40), np.uint16))


def test_missing_source_makes_an_incomplete_recipe_that_warns(chain, tmp_path: Path) -> None:
    _, pp = chain
    lonely = tmp_path / "pp-copy"
    shutil.copytree(pp, lonely)
    info = read_info(lonely)
    info["source"]["dataset"] = str(tmp_path / "gone")
    write_info(lonely, info)
    r = _recipe(lonely)
    assert not r.complete and r.source.kind == "unknown" and "not there any more" in r.notes[0]
    assert any("incomplete" in w for w in input_warnings(r, (40, 40)))
    # A source folder re-made with other options is not taken for the one the images came from.
    info["source"]["dataset"] = str(chain[0])
    info["source"]["config_hash"] = "something-else"
    write_info(lonely, info)
    assert [p for p, _ in dataset_chain(lonely)] == [lonely]


def test_load_errors(tmp_path: Path, chain) -> None:
    with pytest.raises(MammoLabError, match="recipe.json: not found"):
        load_recipe(tmp_path)
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(MammoLabError, match="not a valid JSON recipe"):
        load_recipe(tmp_path)
    data = _recipe(chain[1]).model_dump(mode="json")
    (tmp_path / "recipe.json").write_text(json.dumps({**data, "version": RECIPE_VERSION + 1}))
    with pytest.raises(MammoLabError, match="newer than this MammoLab reads"):
        load_recipe(tmp_path)
    (tmp_path / "recipe.json").write_text(json.dumps({**data, "threshold": 3}))
    with pytest.raises(MammoLabError, match="threshold"):
        load_recipe(tmp_path)


def test_parse_box() -> None:
    assert parse_box("10,20,110,220") == (10, 20, 110, 220)
    assert parse_box(None) is None and parse_box([1, 2, 3, 4]) == (1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "10,10,5,20", "-1,0,4,4"):
        with pytest.raises(MammoLabError, match="--box"):
            parse_box(bad)


def test_input_warnings_by_size_and_aspect(chain) -> None:
    r = _recipe(chain[1])
    r = r.model_copy(update={"source": r.source.model_copy(update={
        "sizes": SizeRange(n=10, width_min=60, width_max=300, height_min=50, height_max=320,
                           aspect_min=0.7, aspect_max=1.4)})})
    assert input_warnings(r, (200, 180)) == []
    film = input_warnings(r, (5000, 3000))
    assert len(film) == 1 and "whole film given to a patch model" in film[0] and "3000x5000" in film[0]
    assert "outside the recipe" in input_warnings(r, (100, 400))[0]  # aspect 4: not a crop's shape
    assert input_warnings(r, (5000, 3000), box=True) == []
    full = r.model_copy(update={"source": r.source.model_copy(update={"kind": "full", "sizes": SizeRange(
        n=10, width_min=2000, width_max=3500, height_min=3500, height_max=5500, aspect_min=0.5, aspect_max=0.7)})})
    assert "patch given to a whole-film model" in input_warnings(full, (300, 300))[0]
    roi = r.model_copy(update={"source": r.source.model_copy(update={"kind": "roi", "sizes": None})})
    assert "--box" in input_warnings(roi, (500, 300))[0] and input_warnings(roi, (64, 64)) == []


def test_predictor_four_classes_and_tta(chain) -> None:
    import torch

    from mammolab.infer import Predictor
    from mammolab.infer.backends import TorchBackend
    from mammolab.models.registry import create_model

    torch.manual_seed(0)
    classes = ["benign_calc", "benign_mass", "malignant_calc", "malignant_mass"]
    model = create_model("mammoresnet", regime="cft", weights="none", in_chans=1, num_outputs=4).eval()
    r = _recipe(chain[1], classes=classes, num_outputs=4, image_size=32)
    p = Predictor(r, TorchBackend(model, torch.device("cpu")), path=chain[1], torch_model=model)
    image = (np.random.default_rng(0).random((40, 40)) * 60000).astype(np.uint16)
    res = p.predict_array(image)
    probs = np.array([res["probs"][c] for c in classes])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and res["class"] == classes[int(probs.argmax())]
    assert res["prob"] == pytest.approx(probs[2] + probs[3], abs=1e-6)
    tta = p.predict_array(image, tta=True)
    x = torch.from_numpy(p.prepare(image).tensor[None])
    with torch.no_grad():
        views = [torch.softmax(model(v), 1)[0].numpy() for v in (x, x.flip(-1), x.flip(-2))]
    np.testing.assert_allclose([tta["probs"][c] for c in classes], np.mean(views, 0), atol=1e-6)


def test_predictor_load_and_read_errors(chain, tmp_path: Path) -> None:
    import torch

    from mammolab.infer import Predictor
    from mammolab.infer.backends import TorchBackend
    from mammolab.models.registry import create_model

    with pytest.raises(MammoLabError, match="not a folder"):
        Predictor.load(tmp_path / "missing")
    with pytest.raises(MammoLabError, match="neither a training run"):
        Predictor.load(tmp_path)
    r = _recipe(chain[1], image_size=32)
    write_recipe(tmp_path, r)
    (tmp_path / "model.pt").write_bytes(b"truncated")
    with pytest.raises(MammoLabError, match="incomplete export"):
        Predictor.load(tmp_path)  # no export.json: a killed export is refused
    (tmp_path / "export.json").write_text("{}")
    with pytest.raises(MammoLabError, match="model.pt: unreadable TorchScript model"):
        Predictor.load(tmp_path)
    model = create_model("mammoresnet", regime="cft", weights="none", in_chans=1, num_outputs=1).eval()
    p = Predictor(r, TorchBackend(model, torch.device("cpu")), path=tmp_path, torch_model=model)
    with pytest.raises(MammoLabError, match="scan.png") as err:
        p.predict_file(b"not an image at all", filename="scan.png")
    assert "\n" not in str(err.value)
    png = tmp_path / "img.png"
    from mammolab.io import write_png

    write_png(png, (np.random.default_rng(1).random((40, 40)) * 60000).astype(np.uint16))
    by_path, by_bytes = p.predict_file(png), p.predict_file(png.read_bytes(), filename="img.png")
    assert by_path["prob"] == by_bytes["prob"] and by_path["threshold"] == 0.5
    res = p.predict_files([png, tmp_path / "nope.png", png])
    assert [("error" in x) for x in res] == [False, True, False] and "nope.png" in res[1]["error"]
    assert res[0]["prob"] == res[2]["prob"] == by_path["prob"]
