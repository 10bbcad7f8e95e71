"""The light runtime: an exported ONNX model predicts and serves without torch, with the full install's
probabilities, and its model card states the preprocessing precisely enough to re-implement it.

Without torch is proved in a subprocess whose ``sys.meta_path`` refuses torch, torchvision, timm and
lightning (and the rest of the training stack): any import of them on the predict or serve path fails
the command. The fresh-virtual-environment test (the runtime wheel and its dependencies from PyPI) needs
the network and runs only with ``MAMMOLAB_TEST_NETWORK=1``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest

from helpers import write_dicom

REPO = Path(__file__).resolve().parents[2]
#: What the runtime install leaves out; an import of any of them fails the subprocess.
HEAVY = ("torch", "torchvision", "timm", "lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics",
         "pytorch_grad_cam", "optuna", "optuna_integration", "sklearn", "scipy", "matplotlib", "safetensors")
#: ``python -c`` wrapper: installs the blocker, runs the mammolab CLI with the remaining arguments, and
#: fails if a heavy module got in some other way.
BLOCKED_CLI = f"""
import sys
HEAVY = {HEAVY!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError("No module named " + repr(name) + " (runtime test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["mammolab", *sys.argv[1:]]
from mammolab.cli import main
try:
    main()
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    assert not loaded, loaded
"""


def _predictor_class() -> Any:
    from mammolab.infer.predictor import Predictor

    return Predictor


def _apply_recipe() -> Any:
    from mammolab.infer.apply import apply_recipe

    return apply_recipe


def _env() -> dict[str, str]:
    env = dict(os.environ, MAMMOLAB_QUIET="1", PYTHONPATH=str(REPO / "src"))
    env.pop("MAMMOLAB_VERBOSE", None)
    return env


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ROI-patch run on 16-bit organized patches (resize, median, CLAHE), exported to ONNX."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mammolab.data.organize import OrganizeConfig, organize_cbis
    from mammolab.data.synth import synthesize
    from mammolab.evaluate.export import export_run
    from mammolab.preprocess.pipeline import preprocess
    from mammolab.train.fit import train

    root = tmp_path_factory.mktemp("runtime")
    os.environ.setdefault("MAMMOLAB_CACHE", str(root / "cache"))
    synth = synthesize(root / "synth", patients=8, image_size=128, layout="legacy", seed=3, workers=1)
    organize_cbis(synth.download_dir, synth.csv_dir, root / "org",
                  OrganizeConfig(kind="roi", roi_size=48, bit_depth=16, allow_degenerate=True),
                  metadata=synth.metadata, workers=1)
    preprocess(root / "org", root / "pp", "patch", size=(40, 40), workers=1)
    train(root / "pp", {"model": "mammocnn", "weights": "none", "image_size": 32, "epochs": 1, "batch_size": 8,
                        "accelerator": "cpu", "patience": 0, "num_workers": 0, "cache": "ram"}, root / "run")
    export_run(root / "run", root / "exp", "onnx")
    return root / "exp"


def _film(h: int = 72, w: int = 60, seed: int = 0) -> np.ndarray:
    """A 16-bit film-like image: tissue ramp, a bright blob, noise, a black background corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 9000 + 30000 * (xx / w) + 18000 * np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / 60.0)
    img += rng.normal(0, 1500, (h, w))
    img[: h // 5, : w // 4] = 0
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-bit PNG and a 12-bit MONOCHROME1 DICOM with a rescale and a window (every read rule used)."""
    root = tmp_path_factory.mktemp("runtime-inputs")
    png = root / "film16.png"
    assert cv2.imwrite(str(png), _film())
    stored = (_film(64, 56, seed=1) >> 4).astype(np.uint16)  # 12-bit values
    dcm = write_dicom(root / "film12.dcm", stored, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=-100,
                      WindowCenter=1800, WindowWidth=3000)
    return {"png": png, "dcm": dcm}


# ------------------------------------------------------------------------------------------- without torch

def test_predict_without_torch_matches_the_full_install(exported: Path, inputs: dict[str, Path]) -> None:
    files = [inputs["png"], inputs["dcm"]]
    proc = subprocess.run([sys.executable, "-c", BLOCKED_CLI, "predict", str(exported), *map(str, files), "--json"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    light = json.loads(proc.stdout)
    full = _predictor_class().load(exported).predict_files(files)
    assert [r["path"] for r in light] == [str(f) for f in files]
    for got, want in zip(light, full, strict=True):
        assert "error" not in got and "error" not in want
        assert abs(got["prob"] - want["prob"]) <= 1e-6
        assert got["class"] == want["class"] and got["threshold"] == want["threshold"]
        assert got["checkpoint"] == "model.onnx"
    # the two inputs differ, so matching both is not matching a constant
    assert abs(light[0]["prob"] - light[1]["prob"]) > 1e-6


def test_a_training_command_without_torch_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKED_CLI.replace("    assert not loaded, loaded\n", ""),
                           "train", str(tmp_path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert "mammolab train needs" in err and "pip install" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, name: str, data: bytes) -> dict[str, Any]:
    return _post_fields(url, {"file": (name, data)})


def _post_fields(url: str, fields: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    boundary = "mammolab-runtime-test"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for field, (name, data) in fields.items()) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _start_blocked_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``mammolab serve FOLDER`` in the import-blocked subprocess, once /health answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_CLI, "serve", str(folder), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"serve did not start without torch: {err[-3000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> str:
    """Stop the server; its stderr (the blocker's exit check writes there)."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_serve_without_torch_matches_the_full_install(exported: Path, inputs: dict[str, Path]) -> None:
    proc, url = _start_blocked_server(exported)
    try:
        full = _predictor_class().load(exported)
        for path in (inputs["png"], inputs["dcm"]):
            got = _post(url + "/api/predict", path.name, path.read_bytes())
            want = full.predict_file(path)
            assert abs(got["probability"] - want["prob"]) <= 1e-6
            assert got["class"] == want["class"] and got["checkpoint"] == "model.onnx"
        # a heatmap needs torch: the light runtime answers the prediction and says why there is none
        got = _post(url + "/api/predict?heatmap=1", "film16.png", inputs["png"].read_bytes())
        assert got["heatmap_png"] is None and any("no heatmap" in w for w in got["warnings"])
        assert abs(got["probability"] - full.predict_file(inputs["png"])["prob"]) <= 1e-6
    finally:
        err = _stop(proc)
    # the server's own check at exit: no heavy module was loaded while it served
    assert "AssertionError" not in err, err[-3000:]


@pytest.fixture(scope="module")
def two_view_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny two-view (CC + MLO, attention fusion) run exported to ONNX, and its dataset."""
    pytest.importorskip("onnxruntime")
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_fixtures", REPO / "tests" / "train" / "train_fixtures.py")
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    from mammolab.evaluate.export import export_run
    from mammolab.train.config import resolve_train_config
    from mammolab.train.fit import train

    root = tmp_path_factory.mktemp("runtime-two-view")
    ds = fixtures.make_lesion_dataset(root / "ds", patients=12, size=32, seed=4)
    cfg = resolve_train_config(overrides={"model": "mammoresnet", "views": "cc+mlo", "fusion": "attention",
                                          "image_size": 32, "batch_size": 8, "epochs": 1, "patience": 0,
                                          "accelerator": "cpu", "weights": "none"})
    run = train(ds, cfg, root / "run").run_dir
    return export_run(run, root / "exp", "onnx").out, ds


def test_two_view_export_predicts_and_serves_without_torch(two_view_export: tuple[Path, Path]) -> None:
    from mammolab.evaluate.breast import predict_breast_files

    exp, ds = two_view_export
    breasts = [(ds / "test" / d / f"{p}_CC.png", ds / "test" / d / f"{p}_MLO.png")
               for d in ("benign", "malignant") for p in sorted({f.stem[:5] for f in (ds / "test" / d).glob("*.png")})]
    files = [f for pair in breasts[:3] for f in pair]
    want = predict_breast_files(exp, files, "cc+mlo")
    proc = subprocess.run([sys.executable, "-c", BLOCKED_CLI, "predict", str(exp), *map(str, files),
                           "--file-views", "cc+mlo", "--json"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert len(got) == len(want) == len(files) // 2 >= 2
    for g, w in zip(got, want, strict=True):
        assert abs(g["prob"] - w["prob"]) <= 1e-6 and g["class"] == w["class"] and g["views"] == "cc+mlo"
    server, url = _start_blocked_server(exp)
    try:
        cc, mlo = breasts[0]
        both = _post_fields(url + "/api/predict",
                            {"cc": (cc.name, cc.read_bytes()), "mlo": (mlo.name, mlo.read_bytes())})
        assert abs(both["probability"] - want[0]["prob"]) <= 1e-6
        alone = _post_fields(url + "/api/predict", {"cc": (cc.name, cc.read_bytes())})
        ref = predict_breast_files(exp, [cc], "cc")[0]
        assert abs(alone["probability"] - ref["prob"]) <= 1e-6 and ref["missing_view"] == "MLO"
    finally:
        err = _stop(server)
    assert "AssertionError" not in err, err[-3000:]


# ------------------------------------------------------------------------------------------- the card alone

def _read_by_card(card: dict[str, Any], path: Path) -> np.ndarray:
    """The card's ``read`` rules, nothing of mammolab: pydicom for DICOM, OpenCV for the rest."""
    if path.suffix == ".dcm":
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = pydicom.dcmread(path)
        v = ds.pixel_array
        if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
            v = apply_modality_lut(v, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            v = apply_voi_lut(v, ds, index=0)
        v = v.astype(np.float64)
        lo, hi = v.min(), v.max()
        out = np.rint((v - lo) * (65535.0 / (hi - lo))).astype(np.uint16)
        return 65535 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def _depth(img: np.ndarray, bits: int | None) -> np.ndarray:
    if bits == 8 and img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if bits == 16 and img.dtype == np.uint8:
        return img.astype(np.uint16) * 257
    return img


def _prepare_by_card(card: dict[str, Any], img: np.ndarray) -> np.ndarray:
    """The model input ``[1, H, W]`` from the card's ``preprocessing.steps`` alone (a client's code)."""
    for st in card["preprocessing"]["steps"]:
        op, p = st["op"], st.get("params", {})
        if op == "roi_cut":
            continue  # only with --box
        if op == "bit_depth":
            img = _depth(img, st["bit_depth"])
        elif op == "refuse_all_black":
            assert img.any()
        elif op == "resize":
            h, w = img.shape
            ratio = max(w / p["width"], h / p["height"]) if p["keep_aspect"] else min(w / p["width"], h / p["height"])
            k = min(int(ratio), h, w)
            if k >= 2:
                h, w = h // k * k, w // k * k
                img = cv2.resize(img[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)
            if p["keep_aspect"]:
                scale = min(p["width"] / w, p["height"] / h)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            else:
                nw, nh = p["width"], p["height"]
            small = nw < img.shape[1] or nh < img.shape[0]
            img = _depth(cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if small else cv2.INTER_LINEAR),
                         p["bit_depth"])
            if (nw, nh) != (p["width"], p["height"]):
                x0 = (p["width"] - nw) // 2 if p["align"] == "center" else 0
                y0 = (p["height"] - nh) // 2 if p["align"] == "center" else 0
                canvas = np.zeros((p["height"], p["width"]), img.dtype)
                canvas[y0:y0 + nh, x0:x0 + nw] = img
                img = canvas
        elif op == "denoise":
            if p["method"] == "median":
                img = cv2.medianBlur(img, p["ksize"])
            elif p["method"] == "gaussian":
                img = cv2.GaussianBlur(img, (p["ksize"], p["ksize"]), p["sigma"])
            else:
                s = 255 if img.dtype == np.uint8 else 65535
                f = cv2.bilateralFilter(img.astype(np.float32) / s, p["ksize"], p["sigma_color"], p["sigma_space"])
                img = np.clip(np.rint(f * s), 0, s).astype(img.dtype)
        elif op == "clahe":
            out = cv2.createCLAHE(clipLimit=p["clip_limit"], tileGridSize=(p["tile_grid"],) * 2).apply(img)
            out[img == 0] = 0
            img = out
        elif op == "orient":
            h, w = img.shape
            k = max(1, math.ceil(max(h, w) / 512))
            col = img[::k, ::k].astype(np.float64).sum(axis=0)
            half = len(col) // 2
            left = col[:half].sum() >= col[len(col) - half:].sum()
            if left != (p["chest_wall"] == "left"):
                img = cv2.flip(img, 1)
        elif op == "model_resize":
            h, w = img.shape
            H, W = st["height"], st["width"]  # noqa: N806
            if st["mode"] == "stretch":
                th, tw = H, W
            else:
                scale = min(H / h, W / w)
                th, tw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
            if (th, tw) != (h, w):
                img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR)
            if st["mode"] == "pad":
                canvas = np.zeros((H, W), img.dtype)
                y0, x0 = (H - th) // 2, (W - tw) // 2
                canvas[y0:y0 + th, x0:x0 + tw] = img
                img = canvas
        elif op == "scale":
            img = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
        elif op == "normalise":
            img = (img - np.float32(st["mean"])) / np.float32(st["std"])
        else:
            pytest.fail(f"the card names a step this client does not know: {op}")
    assert list(img.shape) == card["preprocessing"]["input_tensor"]["shape"][2:]
    return img[None].astype(np.float32)


def test_card_alone_reproduces_the_exported_models_input(exported: Path, inputs: dict[str, Path]) -> None:
    card = json.loads((exported / "model_card.json").read_text())
    assert [s["op"] for s in card["preprocessing"]["steps"]] == [
        "roi_cut", "bit_depth", "refuse_all_black", "resize", "denoise", "clahe", "model_resize", "scale",
        "normalise"]
    md = (exported / "model_card.md").read_text()
    for words in ("INTER_AREA", "createCLAHE", "v >> 8", "canvas of 0", "Reference implementation"):
        assert words in md
    from mammolab.io import read_image

    predictor = _predictor_class().load(exported)
    for path in inputs.values():
        mine = _read_by_card(card, path)
        np.testing.assert_array_equal(mine, read_image(path))
        want = np.asarray(predictor.prepare(read_image(path)).tensor, dtype=np.float32)
        got = _prepare_by_card(card, mine)
        assert got.shape == want.shape == (1, 32, 32)
        assert float(np.abs(got - want).max()) <= 1e-6
        assert float(np.ptp(want)) > 0.5  # a real image, not a flat one
    # and it is the model's input: the card's tensor through the ONNX model gives the predicted probability
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _prepare_by_card(card, _read_by_card(card, inputs["png"]))[None]
    logit = float(sess.run(None, {sess.get_inputs()[0].name: x})[0].ravel()[0])
    assert 1 / (1 + math.exp(-logit)) == pytest.approx(predictor.predict_file(inputs["png"])["prob"], abs=1e-6)


_VARIANTS = {
    # 16-bit throughout: CLAHE on uint16, letterboxed into a rectangle
    "16bit-clahe-pad": (16, [{"clahe": {"clip_limit": 3.0, "tile_grid": 4}}], (24, 40), "pad"),
    # 16 -> 8 bit at the source, kept-aspect resize aligned to the start, gaussian, stretch
    "8bit-start-gaussian": (8, [{"resize": {"height": 50, "width": 30, "keep_aspect": True, "align": "start",
                                            "bit_depth": None}},
                                {"denoise": {"method": "gaussian", "ksize": 5, "sigma": 1.2}}], 32, "stretch"),
    # enlarging (INTER_LINEAR), orient, bilateral, 16 -> 8 inside the resize step, pad to a square
    "orient-bilateral-enlarge": (None, [{"orient": {"chest_wall": "right"}},
                                        {"resize": {"height": 120, "width": 90, "keep_aspect": False,
                                                    "bit_depth": 8}},
                                        {"denoise": {"method": "bilateral", "ksize": 5}},
                                        {"clahe": {"clip_limit": 2.0, "tile_grid": 8}}], 64, "pad"),
}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_card_alone_reproduces_other_recipes(variant: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    """Other interpolations, depths, paddings and ops: the card's rules against the recipe's application."""
    from mammolab.evaluate.export import model_card
    from mammolab.io import read_image
    from mammolab.recipe import PreprocessStage, Recipe, SourceSpec, TransformSpec

    depth, steps, size, mode = _VARIANTS[variant]
    recipe = Recipe(mammolab_version="test", name=variant, model="m", classes=["benign", "malignant"],
                    num_outputs=1, source=SourceSpec(stage="organize", kind="image", bit_depth=depth),
                    preprocess=[PreprocessStage(steps=steps)],
                    transform=TransformSpec(image_size=size, resize=mode, mean=0.3, std=0.2))
    (tmp_path / "card.json").write_text(json.dumps(model_card(tmp_path, recipe, "onnx", 0.0)))
    card = json.loads((tmp_path / "card.json").read_text())
    for path in inputs.values():
        image = read_image(path)
        want = np.asarray(_apply_recipe()(recipe, image).tensor, dtype=np.float32)
        got = _prepare_by_card(card, _read_by_card(card, path))
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-6, variant


# ------------------------------------------------------------------------------------------- a fresh environment

@pytest.mark.skipif(not os.environ.get("MAMMOLAB_TEST_NETWORK"), reason="needs PyPI: set MAMMOLAB_TEST_NETWORK=1")
def test_runtime_wheel_in_a_fresh_venv_predicts_like_the_full_install(exported: Path, inputs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """``mammolab-runtime`` built from this tree, installed with its dependencies into a new virtual
    environment: no torch there at all, and ``mammolab predict`` gives the full install's probabilities."""
    wheel_dir = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_runtime.py"), "--out", str(wheel_dir)],
                   check=True, timeout=600)
    wheel = next(wheel_dir.glob("mammolab_runtime-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=1800)
    frozen = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].lower() for line in frozen.splitlines()}
    assert not names & {"torch", "torchvision", "timm", "lightning", "scikit-learn", "scipy", "matplotlib"}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(venv / "bin" / "mammolab"), "predict", str(exported), str(inputs["png"]),
                           str(inputs["dcm"]), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = _predictor_class().load(exported).predict_files([inputs["png"], inputs["dcm"]])
    for got, want in zip(json.loads(proc.stdout), full, strict=True):
        assert abs(got["prob"] - want["prob"]) <= 1e-6


def test_runtime_requirements_leave_the_training_stack_out(load_benchmark: Any) -> None:
    """The runtime's dependency closure (resolved through the installed metadata) holds no torch & co., and
    the runtime distribution's generated project declares exactly the runtime extra."""
    import importlib.util

    bench = load_benchmark("runtime_size")
    runtime, full = bench.requirement_lists()
    dists, _ = bench.closure(runtime)
    heavy = {"torch", "torchvision", "timm", "lightning", "scikit-learn", "scipy", "matplotlib", "optuna"}
    assert not heavy & set(dists), sorted(heavy & set(dists))
    assert {"onnxruntime", "opencv-python-headless", "pydicom", "fastapi"} <= set(dists)
    full_dists, _ = bench.closure(full)
    assert "torch" in full_dists and set(dists) - {"onnxruntime"} <= set(full_dists)
    assert bench.measure(runtime)[0] < bench.measure(full)[0] / 2
    spec = importlib.util.spec_from_file_location("build_runtime", REPO / "scripts" / "build_runtime.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    meta = build.runtime_project()
    assert meta["name"] == "mammolab-runtime" and meta["dependencies"] == runtime
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    generated = tomllib.loads(build.pyproject_text(meta))["project"]
    assert generated["dependencies"] == runtime and generated["scripts"] == {"mammolab": "mammolab.cli:main"}
