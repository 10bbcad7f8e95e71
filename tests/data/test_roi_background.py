"""``organize --kind roi --roi-background N``: normal-tissue patches at the fixed scale, away from every lesion.

The oracle for "away from every lesion" is independent of the placement code: the lesion boxes of each film
(patient, side, view) from ``--kind full`` runs of each abnormality kind, every CSV row included.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolab.cli import app, main
from mammolab.config import config_hash
from mammolab.data.manifest import load_manifest, read_info
from mammolab.data.organize import ImportConfig, OrganizeConfig, organize_cbis, organize_manifest
from mammolab.errors import MammoLabError
from mammolab.io import read_image

#: 256-px films cut as at 128 px tall: 64 source px per side, saved at 32 px.
BG = {"kind": "roi", "roi_size": 32, "roi_film_height": 128, "roi_background": 3}
Box = tuple[float, float, float, float]


def _run(synth, out: Path, csv_dir: Path | None = None, workers: int = 1, **kw):
    return organize_cbis(synth.download_dir, csv_dir or synth.csv_dir, out, OrganizeConfig(**kw),
                         metadata=synth.metadata, workers=workers)


def _digest(folder: Path) -> dict[str, str]:
    """Every output file of a dataset (not the work folder, whose index cache holds absolute paths)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".mammolab" not in p.parts
            and p.name != "mammolab.json"}


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _film_box(row: pd.Series) -> Box:
    return tuple(json.loads(row["film_box"])[0])


@pytest.fixture(scope="module")
def films(synth_legacy, tmp_path_factory) -> pd.DataFrame:
    """One row per film copy (case) of both kinds: its film key, size and every lesion box (all CSV rows)."""
    root = tmp_path_factory.mktemp("films")
    parts = [_run(synth_legacy, root / kind, kind="full", abnormality=kind, allow_degenerate=True).manifest
             for kind in ("mass", "calc")]
    df = pd.concat(parts, ignore_index=True)
    df["key"] = list(zip(df["patient_id"], df["side"], df["view"], strict=True))
    return df


def _boxes_of(films: pd.DataFrame, key: tuple[str, str, str], width: int, height: int) -> list[Box]:
    """Every lesion box of the film ``key`` (both kinds), in the pixels of a copy of size ``width`` x ``height``."""
    boxes: list[Box] = []
    for _, r in films[films["key"] == key].iterrows():
        sx, sy = width / r["width"], height / r["height"]
        boxes += [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in json.loads(r["boxes"])]
    return boxes


def _check_patches(df: pd.DataFrame, films: pd.DataFrame, out: Path, n: int) -> pd.DataFrame:
    """Normal rows: fixed scale, at most ``n`` per film, inside the film, none on a lesion of either kind."""
    normal = df[df["label"] == "normal"]
    assert len(normal) > 0
    film_of = normal["image_id"].str.rsplit("_bg", n=1).str[0]
    assert film_of.value_counts().max() <= n
    size = films.set_index("image_id")[["width", "height"]]
    for (_, r), film in zip(normal.iterrows(), film_of, strict=True):
        fw, fh = size.loc[film]
        side = round(32 * fh / 128)
        x0, y0, x1, y1 = _film_box(r)
        assert (x1 - x0, y1 - y0) == (side, side) and x0 >= 0 and y0 >= 0 and x1 <= fw and y1 <= fh
        assert read_image(out / r["path"]).shape == (32, 32) and (r["width"], r["height"]) == (32, 32)
        lesions = _boxes_of(films, (r["patient_id"], r["side"], r["view"]), fw, fh)
        assert lesions  # every film of this dataset has a lesion: the test is not vacuous
        assert not any(_overlap((x0, y0, x1, y1), b) for b in lesions), (r["image_id"], lesions)
        assert r["path"] == f"{r['split']}/normal/{r['image_id']}.png" and r["mask"] == ""
        assert r["boxes"] == "[]" and r["n_abnormalities"] == 0 and pd.isna(r["bbox_x0"])
    return normal


def test_background_patches_scale_count_labels_and_no_lesion(synth_legacy, films, tmp_path: Path) -> None:
    out = tmp_path / "bg"
    res = _run(synth_legacy, out, **BG)
    df = res.manifest
    normal = _check_patches(df, films, out, 3)
    # labels, targets and the class order: normal first, the lesion targets shifted by one
    assert read_info(out)["classes"] == ["normal", "benign", "malignant"]
    assert (df["target"] == df["label"].map({"normal": 0, "benign": 1, "malignant": 2})).all()
    assert set(df["label"]) == {"normal", "benign", "malignant"}
    lesion = df[df["label"] != "normal"]
    plain = _run(synth_legacy, tmp_path / "plain", kind="roi", roi_size=32, roi_film_height=128).manifest
    assert list(lesion["image_id"]) == list(plain["image_id"])
    assert (lesion["target"].to_numpy() == plain["target"].to_numpy() + 1).all()
    # a patch carries its film's patient, side, view, split and fold
    film_rows = films.set_index("image_id")
    for _, r in normal.iterrows():
        f = film_rows.loc[r["image_id"].rsplit("_bg", 1)[0]]
        assert (r["patient_id"], r["side"], r["view"]) == (f["patient_id"], f["side"], f["view"])
    by_patient = df.groupby("patient_id")
    assert (by_patient["split"].nunique() == 1).all() and (by_patient["fold"].nunique(dropna=False) == 1).all()
    # the quality report counts them and names the films that got fewer than asked
    q = res.quality
    assert q["background_patches"] == len(normal)
    films_used = normal["image_id"].str.rsplit("_bg", n=1).str[0].value_counts()
    short = {s.split(":")[0] for s in q["background_short"]}
    n_films = df.loc[df["label"] != "normal", "image_id"].str.rsplit("_", n=1).str[0].nunique()
    assert short == {f for f in set(plain["image_id"].str.rsplit("_", n=1).str[0]) if films_used.get(f, 0) < 3}
    assert len(films_used) + sum(1 for s in short if s not in films_used) == n_films
    md = (out / "quality_report.md").read_text()
    assert f"Background (normal-tissue) patches: {len(normal)}." in md
    assert all(f"- {s}" in md for s in q["background_short"])
    assert "| split | patients | normal | benign | malignant | total |" in md


def test_dropped_rows_are_avoided_too(synth_legacy, films, tmp_path: Path) -> None:
    """--bwc drop leaves BENIGN_WITHOUT_CALLBACK lesions out of the dataset, not out of the films."""
    out = tmp_path / "drop"
    df = _run(synth_legacy, out, bwc="drop", allow_degenerate=True, **BG).manifest
    _check_patches(df, films, out, 3)


def test_4class_all_kinds_gives_five_classes(synth_legacy, films, tmp_path: Path) -> None:
    """Shen et al.'s five classes; the training rows dropped for patient overlap are avoided as well."""
    out = tmp_path / "five"
    res = _run(synth_legacy, out, labels="4class", abnormality="all", allow_degenerate=True, **BG)
    assert res.quality["dropped_for_patient_overlap"]["rows"] > 0
    classes = ["normal", "benign_calc", "benign_mass", "malignant_calc", "malignant_mass"]
    assert read_info(out)["classes"] == classes
    df = res.manifest
    assert (df["target"] == df["label"].map({c: i for i, c in enumerate(classes)})).all()
    assert set(df["label"]) == set(classes)
    _check_patches(df, films, out, 3)


def test_a_calcification_on_a_mass_film_stays_out_of_its_normal_patches(synth_legacy, films,
                                                                         tmp_path: Path) -> None:
    """Move a calcification case onto a mass film (same patient, side, view in the CSV) where a normal patch
    was cut before: organizing masses only now keeps its patches off the calcification."""
    base = _run(synth_legacy, tmp_path / "base", **BG).manifest
    normal = base[base["label"] == "normal"]
    mass = films[films["image_id"].str.startswith("Mass-Training")].set_index("image_id")
    calcs = films[films["image_id"].str.startswith("Calc-Training")]
    pair = None
    for _, p in normal.iterrows():
        film = p["image_id"].rsplit("_bg", 1)[0]
        if film not in mass.index:
            continue
        fw, fh = mass.loc[film, ["width", "height"]]
        for _, c in calcs.iterrows():
            scaled = _boxes_of(films, c["key"], fw, fh)
            if any(_overlap(_film_box(p), b) for b in scaled):
                pair = (film, c)
                break
        if pair:
            break
    assert pair is not None, "no calcification lies where a normal patch of a mass film was cut"
    film, calc = pair
    target = mass.loc[film]
    csv_dir = tmp_path / "csv"
    shutil.copytree(synth_legacy.csv_dir, csv_dir)
    path = csv_dir / "calc_case_description_train_set.csv"
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    moved = rows["image file path"].str.startswith(calc["image_id"] + "/")
    assert moved.any()
    rows.loc[moved, ["patient_id", "left or right breast", "image view"]] = \
        [target["patient_id"], target["side"], target["view"]]
    rows.to_csv(path, index=False)
    out = tmp_path / "moved"
    df = _run(synth_legacy, out, csv_dir=csv_dir, **BG).manifest
    assert (df.loc[df["label"] != "normal", "image_id"].tolist()
            == base.loc[base["label"] != "normal", "image_id"].tolist())  # masses only, as before
    fw, fh = target["width"], target["height"]
    calc_boxes = _boxes_of(films, calc["key"], fw, fh)
    mine = df[df["image_id"].str.startswith(film + "_bg")]
    assert not any(_overlap(_film_box(r), b) for _, r in mine.iterrows() for b in calc_boxes)
    assert not any(_overlap(_film_box(r), b) for _, r in mine.iterrows()
                   for b in _boxes_of(films, target["key"], fw, fh))
    # --abnormality all: the film is two cases (units); one of them cuts its normal patches, off both kinds
    both = _run(synth_legacy, tmp_path / "both", csv_dir=csv_dir, abnormality="all", allow_degenerate=True,
                **BG).manifest
    bg = both[both["label"] == "normal"]
    cut_from = set(bg["image_id"].str.rsplit("_bg", n=1).str[0])
    assert len({film, calc["image_id"]} & cut_from) == 1
    cw, ch = calc["width"], calc["height"]
    for _, r in bg[bg["image_id"].str.rsplit("_bg", n=1).str[0].isin([film, calc["image_id"]])].iterrows():
        w, h = (fw, fh) if r["image_id"].startswith(film) else (cw, ch)
        lesions = _boxes_of(films, calc["key"], w, h) + _boxes_of(films, target["key"], w, h)
        assert not any(_overlap(_film_box(r), b) for b in lesions)


def test_deterministic_across_runs_and_workers(synth_legacy, tmp_path: Path) -> None:
    a = _run(synth_legacy, tmp_path / "a", workers=1, **BG)
    b = _run(synth_legacy, tmp_path / "b", workers=2, **BG)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    again = _run(synth_legacy, tmp_path / "a", workers=1, **BG)  # a re-run reuses every film, same bytes
    assert again.processed_units == 0 and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (a.manifest["label"] == "normal").sum() == (b.manifest["label"] == "normal").sum() > 0
    # another seed places them elsewhere (the seed is the placement's, with the film's id)
    c = _run(synth_legacy, tmp_path / "c", workers=1, seed=1, **BG).manifest
    boxes = lambda m: sorted(m.loc[m["label"] == "normal", "film_box"])  # noqa: E731
    assert boxes(c) != boxes(a.manifest)


def test_errors_and_hash(synth_legacy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MammoLabError, match="--roi-background: needs --roi-film-height"):
        _run(synth_legacy, tmp_path / "x", kind="roi", roi_size=32, roi_background=2)
    with pytest.raises(MammoLabError, match=r"--roi-background: .*--kind roi only \(got --kind full\)"):
        _run(synth_legacy, tmp_path / "y", kind="full", roi_film_height=128, roi_background=2)
    with pytest.raises(MammoLabError, match=r"--roi-film-height: .*--kind roi only \(got --kind crop\)"):
        _run(synth_legacy, tmp_path / "w", kind="crop", roi_film_height=128)
    assert not any((tmp_path / n).exists() for n in "wxy")
    # the real console entry point: one line, exit code 2, nothing written
    monkeypatch.setattr("sys.argv", ["mammolab", "organize", str(synth_legacy.download_dir), "--csv-dir",
                                     str(synth_legacy.csv_dir), "--out", str(tmp_path / "z"), "--kind", "roi",
                                     "--roi-background", "2"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--roi-film-height" in err, err
    assert "--roi-background" in err and not (tmp_path / "z").exists()
    with pytest.raises(ValueError, match="roi_background"):
        OrganizeConfig(roi_background=51)
    # configs that leave it at 0 keep their hash (datasets made before the option are reused)
    for cls, stage in ((OrganizeConfig, "organize"), (ImportConfig, "organize-manifest")):
        plain = cls(kind="roi", roi_size=32, roi_film_height=128)
        dump = plain.model_dump(exclude={"png", "allow_degenerate", "roi_background", "allow_duplicates"})
        assert plain.content_hash(stage) == config_hash({"stage": stage, **dump})
        assert cls(kind="roi", roi_size=32, roi_film_height=128, roi_background=0).content_hash(stage) == \
            plain.content_hash(stage)
        assert cls(kind="roi", roi_size=32, roi_film_height=128, roi_background=2).content_hash(stage) != \
            plain.content_hash(stage)


# ----------------------------------------------------------------------------------------- --manifest

def _breast(path: Path, seed: int) -> np.ndarray:
    """A 96x64 8-bit film: black background, a bright half-ellipse 'breast' on the left, a burnt-in label."""
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 64), np.uint8)
    cv2.ellipse(img, (0, 48), (56, 44), 0, -90, 90, 150, -1)
    img = np.where(img > 0, img + rng.integers(0, 40, img.shape), 0).astype(np.uint8)
    img[2:8, 50:62] = 255  # a label: bright, small, apart from the breast
    cv2.imwrite(str(path), img)
    return img


def test_manifest_import_avoids_every_lesion_row_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    rows = []
    for p in range(12):
        name = f"p{p:02d}.png"
        _breast(tmp_path / "img" / name, p)
        lab = "malignant" if p % 2 else "benign"
        common = {"path": f"img/{name}", "label": lab, "patient_id": f"P{p:02d}", "side": "L", "view": "CC"}
        rows.append({**common, "bbox_x0": "4", "bbox_y0": "30", "bbox_x1": "14", "bbox_y1": "40"})
        rows.append({**common, "bbox_x0": "20", "bbox_y0": "56", "bbox_x1": "30", "bbox_y1": "66"})
    rows.append({**rows[-1], "bbox_x0": "", "bbox_y0": "", "bbox_x1": "", "bbox_y1": ""})  # place unknown
    csv = tmp_path / "list.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    cfg = ImportConfig(kind="roi", roi_size=16, roi_film_height=96, roi_background=4)  # 16-px windows
    res = organize_manifest(csv, tmp_path / "ds", cfg, workers=1)
    df = res.manifest
    assert read_info(tmp_path / "ds")["classes"] == ["normal", "benign", "malignant"]
    assert (df["target"] == df["label"].map({"normal": 0, "benign": 1, "malignant": 2})).all()
    normal = df[df["label"] == "normal"]
    lesions = [(4, 30, 14, 40), (20, 56, 30, 66)]
    film = np.zeros((96, 64), np.uint8)
    cv2.ellipse(film, (0, 48), (56, 44), 0, -90, 90, 1, -1)
    for _, r in normal.iterrows():
        x0, y0, x1, y1 = (int(v) for v in _film_box(r))
        assert (x1 - x0, y1 - y0) == (16, 16)
        assert not any(_overlap((x0, y0, x1, y1), b) for b in lesions)
        assert film[y0:y1, x0:x1].mean() >= 0.6  # in the breast, not on the black or the label
        assert (r["side"], r["view"], r["n_abnormalities"], r["boxes"]) == ("L", "CC", 0, "[]")
        src = cv2.imread(str(tmp_path / "img" / f"{r['image_id'].rsplit('_bg', 1)[0]}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(read_image(tmp_path / "ds" / r["path"]), src[y0:y1, x0:x1].astype(np.uint16) * 257)
    per_file = normal["image_id"].str.rsplit("_bg", n=1).str[0].value_counts()
    assert per_file.max() <= 4 and "p11" not in per_file  # the file with a row of unknown place gets none
    assert any("p11" in s and "line" in s for s in res.quality["background_short"])
    assert set(normal["patient_id"]) <= set(df.loc[df["label"] != "normal", "patient_id"])
    for _, r in normal.iterrows():
        assert r["split"] == df.loc[(df["label"] != "normal") & (df["patient_id"] == r["patient_id"]),
                                    "split"].iloc[0]


def test_a_three_class_dataset_trains_and_evaluates(synth_legacy, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAMMOLAB_QUIET", "1")
    from mammolab import compare, preprocess

    ds = tmp_path / "ds"
    _run(synth_legacy, ds, allow_degenerate=True, bit_depth=8, **BG)
    pp = preprocess(ds, tmp_path / "pp", "patch", size=(32, 32), workers=1)
    assert read_info(pp.out)["classes"] == ["normal", "benign", "malignant"]
    assert (pp.manifest["target"] == pp.manifest["label"].map({"normal": 0, "benign": 1, "malignant": 2})).all()
    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(pp.out), "--model", "mammocnn", "--weights", "none", "--image-size", "32",
                            "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(run), "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    test = load_manifest(pp.out).query("split == 'test'")
    assert metrics["n"] == len(test)
    assert metrics["classes"] == ["normal", "benign", "malignant"] and len(metrics["auc_per_class"]) == 3
    preds = pd.read_csv(run / "eval" / "test" / "predictions.csv")
    assert len(preds) == len(test)
    assert set(preds["label"]) == set(test["label"]) == {"normal", "benign", "malignant"}
    rep = compare([run], tmp_path / "report")
    assert rep.html.is_file() and len(rep.table) == 1
    # the 3-class patch model's backbone starts a binary whole-film model (patch-to-whole transfer)
    _run(synth_legacy, tmp_path / "films", kind="full", allow_degenerate=True, bit_depth=8)
    r = runner.invoke(app, ["train", str(tmp_path / "films"), "--model", "mammocnn", "--init-from", str(run),
                            "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu",
                            "--out", str(tmp_path / "xfer")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "xfer" / "run.json").read_text())
    assert info["init_from"]["source_classes"] == ["normal", "benign", "malignant"]
    assert info["classes"] == ["benign", "malignant"]


def test_an_experiment_may_explain_the_normal_class() -> None:
    from pydantic import ValidationError

    from mammolab.app.experiment import ExplainSection

    assert ExplainSection(target="normal").target == "normal"
    with pytest.raises(ValidationError, match="expected one of .*normal"):
        ExplainSection(target="healthy")
