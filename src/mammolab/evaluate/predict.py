"""One inference path: a source file in, the probability evaluation gave it out.

:class:`Predictor` loads a run folder or an exported model folder (``mammolab export``) with its
recipe (:mod:`mammolab.recipe`) and applies it to every input: organize's conversion, the dataset's
preprocessing steps and the training transform, then the model. ``predict``, ``serve``,
``evaluate`` (internal and external) and the Python API all call it, so a source DICOM, its
organized PNG and the evaluation of that image agree (tested to 1e-4). A file that cannot be read
becomes one result with an ``error``; the others are still predicted.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.recipe import RECIPE_NAME, Prepared, Recipe, apply_recipe, build_recipe, load_recipe, write_recipe

__all__ = ["EXPORT_FILES", "EXPORT_MARKER", "Predictor", "predict_files", "predict_frame", "resolve_threshold"]

#: Model files of an exported folder, by format.
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
#: Written last by ``mammolab export``, after the exported model was verified against the run: a
#: folder without it was left by a killed or failed export and is refused.
EXPORT_MARKER = "export.json"


def resolve_threshold(run_dir: str | Path, threshold: float | str | None) -> float:
    """A number; ``youden``: the operating point the run's test evaluation chose on validation;
    ``None`` or ``recipe``: the threshold the run's recipe carries (Youden on validation once evaluated)."""
    if threshold is None or str(threshold).strip().lower() == "recipe":
        return load_recipe(run_dir).threshold
    if isinstance(threshold, (int, float)):
        value = float(threshold)
    elif str(threshold).strip().lower() == "youden":
        from mammolab.evaluate.evaluation import eval_dir

        path = eval_dir(run_dir, "test") / "metrics.json"
        if not path.is_file():
            raise MammoLabError(f"--threshold youden: {path} not found (run 'mammolab evaluate {run_dir}' first)")
        metrics = json.loads(path.read_text(encoding="utf-8"))
        try:
            value = float(metrics["operating_points"]["youden"]["threshold"])
        except (KeyError, TypeError):
            raise MammoLabError(f"--threshold youden: {path} has no Youden threshold (4-class run?)") from None
    else:
        try:
            value = float(threshold)
        except ValueError:
            raise MammoLabError(f"--threshold: expected a number in [0, 1], 'youden' or 'recipe', "
                                f"got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise MammoLabError(f"--threshold: expected a number in [0, 1], got {value}")
    return value


# ----------------------------------------------------------------------------------------- backends

class _Backend(ABC):
    """Logits ``[N, outputs]`` (float32 numpy) for a ``[N, 1, H, W]`` float32 batch, or for a two-view
    model's breasts: ``x [N, 2, 1, H, W]`` (CC, MLO) with ``present [N, 2]`` (1 = the view is there)."""

    kind = "?"

    @abstractmethod
    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        """The model's raw outputs for the batch ``x`` (a torch tensor; ``present`` for breasts)."""


class _TorchBackend(_Backend):
    kind = "pytorch"

    def __init__(self, model: Any, device: Any) -> None:
        self.model, self.device = model, device

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(x.to(self.device)) if present is None else \
                self.model(x.to(self.device), present.to(self.device))
            return out.float().reshape(x.shape[0], -1).cpu().numpy()


class _ScriptBackend(_Backend):
    kind = "torchscript"

    def __init__(self, module: Any, device: Any) -> None:
        self.module, self.device = module, device

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            if present is None:
                return self.module(x.to(self.device)).float().reshape(x.shape[0], -1).cpu().numpy()
            # the traced breast model takes present as float32 (1 = view there), as the ONNX one does
            out = self.module(x.to(self.device), present.to(self.device, torch.float32))
            return out.float().reshape(x.shape[0], -1).cpu().numpy()


class _OnnxBackend(_Backend):
    kind = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.inputs = [i.name for i in session.get_inputs()]

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        arr = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
        if present is None:
            out = self.session.run(None, {self.input: arr})[0]
        else:  # a two-view export: inputs x [N, 2, 1, H, W] and present [N, 2] float32
            mask = np.ascontiguousarray(present.cpu().numpy(), dtype=np.float32)
            out = self.session.run(None, dict(zip(self.inputs, (arr, mask), strict=True)))[0]
        return np.asarray(out, dtype=np.float32).reshape(arr.shape[0], -1)


def _probabilities(logits: np.ndarray, binary: bool) -> np.ndarray:
    """P(positive) ``[N]`` for one-logit binary models, softmax ``[N, C]`` otherwise (as training's loss)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    if binary and t.shape[1] == 1:
        return torch.sigmoid(t[:, 0]).numpy()
    probs = torch.softmax(t, dim=1).numpy()
    return probs[:, 1] if binary else probs


def _read_source(source: str | Path | bytes | bytearray | memoryview, filename: str | None) -> tuple[np.ndarray, str]:
    """Pixels of a path or of an upload's bytes, only through :mod:`mammolab.io` (with its pixel guard)."""
    from mammolab.io import images

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = filename or "upload"
        reader = getattr(images, "read_image_bytes", None)
        if reader is not None:
            return reader(source, name), name
        suffix = Path(name).suffix.lower()
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(source))
            try:
                return images.read_image(tmp), name
            except MammoLabError as exc:
                raise MammoLabError(str(exc).replace(tmp, name)) from None
        finally:
            os.unlink(tmp)
    path = Path(source)
    return images.read_image(path), filename or str(path)


@dataclass
class _CamRun:
    """What :func:`mammolab.explain.runner.heatmaps_for_arrays` needs of a run, from a predictor."""

    model: Any
    device: Any
    classes: tuple[str, ...]
    config: Any
    preprocess: Callable[[np.ndarray], Any]


# ----------------------------------------------------------------------------------------- predictor

class Predictor:
    """A model with its recipe: ``Predictor.load(RUN or EXPORTED_DIR)`` then ``predict_file(...)``."""

    def __init__(self, recipe: Recipe, backend: _Backend, *, path: Path, checkpoint: str | None = None,
                 torch_model: Any = None, device: Any = None, run: Any = None) -> None:
        self.recipe = recipe
        #: the :class:`~mammolab.train.inference.TrainedRun` of a run folder (None for an exported model)
        self.run = run
        self.backend = backend
        self.path = path
        #: the weights in use, named in every output: ``best.ckpt`` / ``last.ckpt`` of a run, or the
        #: exported model file (``model.onnx``, ``model.pt``)
        self.checkpoint = checkpoint
        self._torch_model = torch_model
        self._device = device

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, checkpoint: str = "best", device: str | None = None, *,
             require_marker: bool = True) -> Predictor:
        """A run folder (``config.yaml``, ``checkpoints/``) or an exported folder (``recipe.json`` + model file).

        ``checkpoint``: ``best`` (refused when best.ckpt is missing: never last.ckpt silently), ``last``
        or a ``.ckpt`` path. The recipe is validated against its schema, ``config.yaml`` and the model
        before anything is predicted. ``require_marker=False`` is for export's own check of a folder it
        has not finished yet.
        """
        path = Path(path)
        if not path.is_dir():
            raise MammoLabError(f"{path}: not a folder (expected a run folder or an exported model folder)")
        if (path / "config.yaml").is_file():
            from mammolab.train.inference import load_run

            if checkpoint not in ("best", "last") and not str(checkpoint).endswith(".ckpt"):
                raise MammoLabError(f"--checkpoint: expected best, last or a .ckpt file, got {checkpoint!r}")
            if (path / RECIPE_NAME).is_file():  # the recipe first: a damaged one stops before the weights load
                load_recipe(path)
            run = load_run(path, checkpoint=checkpoint, device=device)
            recipe = run_recipe(path, run)
            check_run_recipe(path, run, recipe)
            return cls(recipe, _TorchBackend(run.model, run.device), path=path, checkpoint=Path(run.checkpoint).name,
                       torch_model=run.model, device=run.device, run=run)
        found = [(fmt, path / name) for fmt, name in EXPORT_FILES.items() if (path / name).is_file()]
        if require_marker and (path / RECIPE_NAME).is_file() and found and not (path / EXPORT_MARKER).is_file():
            raise MammoLabError(f"{path}: incomplete export (no {EXPORT_MARKER}: the export was killed or failed "
                                "before it was verified); re-run mammolab export")
        if not (path / RECIPE_NAME).is_file() or not found:
            raise MammoLabError(f"{path}: neither a training run (config.yaml) nor an exported model "
                                f"(recipe.json with {' or '.join(EXPORT_FILES.values())})")
        if checkpoint not in ("best", None):
            raise MammoLabError(f"--checkpoint {checkpoint}: {path} is an exported model folder; it holds one "
                                "model (export the run again with --checkpoint to change it)")
        recipe = load_recipe(path)
        fmt, file = found[0]
        if fmt == "onnx":
            try:
                import onnxruntime as ort
            except ModuleNotFoundError:
                raise MammoLabError(f"{file}: running an ONNX model needs onnxruntime",
                                    hint="pip install 'mammolab[export]'") from None
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            try:
                session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own types for a damaged file
                raise MammoLabError(f"{file}: unreadable ONNX model ({exc.__class__.__name__})") from None
            _check_onnx_shapes(path, file, session, recipe)
            return cls(recipe, _OnnxBackend(session), path=path, checkpoint=file.name)
        import torch

        dev = torch.device(device) if device else torch.device("cpu")
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still loads
                module = torch.jit.load(str(file), map_location=dev).eval()
        except Exception as exc:  # a truncated or foreign file
            raise MammoLabError(f"{file}: unreadable TorchScript model ({exc.__class__.__name__})") from None
        return cls(recipe, _ScriptBackend(module, dev), path=path, device=dev, checkpoint=file.name)

    # -------------------------------------------------------------------------------- facts
    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def version(self) -> str:
        """The MammoLab version that trained the model."""
        return self.recipe.mammolab_version

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.recipe.classes)

    @property
    def threshold(self) -> float:
        return float(self.recipe.threshold)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def format(self) -> str:
        return self.backend.kind

    def _single_images_only(self) -> None:
        """A two-view breast model scores a breast's CC and MLO images together: a lone image would go
        through the head without the fusion (a wrong number, or a shape error deep in the exported graph)."""
        from mammolab.evaluate.breast import is_two_view

        if is_two_view(self):
            raise MammoLabError(f"predict: {self.path} is a two-view (CC + MLO) breast model; it scores a breast's "
                                "CC and MLO images together, not single images",
                                hint="mammolab predict MODEL CC_FILE MLO_FILE --file-views cc+mlo "
                                     "(mammolab.evaluate.breast.predict_breast)")

    # -------------------------------------------------------------------------------- core
    def prepare(self, image: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                start: str = "source") -> Prepared:
        """An image as :func:`mammolab.io.read_image` returns it -> the model input (see :func:`apply_recipe`)."""
        return apply_recipe(self.recipe, image, start=start, box=box)  # type: ignore[arg-type]

    def probabilities(self, tensors: Sequence[Any], *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """P(malignant) ``[N]`` for binary models, class probabilities ``[N, C]`` otherwise.

        ``tta`` averages the probabilities of the image and its horizontal and vertical flips.
        """
        import torch

        self._single_images_only()
        out = []
        for i in range(0, len(tensors), batch_size):
            x = torch.stack(list(tensors[i:i + batch_size]))
            views = [x, x.flip(-1), x.flip(-2)] if tta else [x]
            out.append(np.mean([_probabilities(self.backend.logits(v), self.binary) for v in views], axis=0))
        if not out:
            return np.zeros((0,) if self.binary else (0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def _result(self, probs: np.ndarray, warnings: list[str]) -> dict[str, Any]:
        if not np.all(np.isfinite(probs)):
            # NaN is not JSON (serve answered "prob": NaN / null and called it benign): an error instead
            raise MammoLabError(f"the model's output is not a number ({self.checkpoint or self.path}: damaged "
                                "weights or a recipe that divides by zero); nothing predicted")
        if self.binary:
            p = float(probs)
            res = {"prob": p, "class": self.classes[int(p >= self.threshold)],
                   "probs": {self.classes[0]: 1.0 - p, self.classes[1]: p}}
        else:
            malignant = [i for i, c in enumerate(self.classes) if c.startswith("malignant")]
            p = float(probs[malignant].sum()) if malignant else float(probs.max())
            res = {"prob": p, "class": self.classes[int(np.argmax(probs))],
                   "probs": {c: float(v) for c, v in zip(self.classes, probs, strict=True)}}
        res.update(threshold=self.threshold, checkpoint=self.checkpoint, warnings=list(warnings))
        return res

    def heatmap(self, prepared: Prepared, method: str = "gradcam", caption: str = "") -> np.ndarray:
        """RGB ``[plain | overlay]`` panel of the preprocessed image and its heatmap."""
        from mammolab.explain.overlay import overlay_panel
        from mammolab.explain.runner import heatmaps_for_arrays

        model = self._torch_model
        if model is None:
            if method != "occlusion":
                raise MammoLabError(f"--method {method}: an exported {self.format} model has no layers to hook; "
                                    "use --method occlusion, or the run folder")
            model = _BackendModule(self.backend)
        shim = _CamRun(model, self._device or "cpu", self.classes, SimpleNamespace(resize=self.recipe.transform.resize),
                       lambda _a: prepared.tensor)
        _, heats, _ = heatmaps_for_arrays(shim, [prepared.image], method, threshold=self.threshold)
        return overlay_panel(prepared.image, heats[0], caption=caption)

    # -------------------------------------------------------------------------------- files
    def predict_array(self, image: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                      start: str = "source", tta: bool = False) -> dict[str, Any]:
        prepared = self.prepare(image, box=box, start=start)
        return self._result(self.probabilities([prepared.tensor], tta=tta)[0], prepared.warnings)

    def predict_file(self, source: str | Path | bytes | bytearray | memoryview, *, filename: str | None = None,
                     box: tuple[int, int, int, int] | None = None, heatmap: bool = False, method: str = "gradcam",
                     tta: bool = False) -> dict[str, Any]:
        """One file (a path, or an upload's bytes): ``prob`` (P(malignant)), ``class``, ``probs``,
        ``threshold``, ``warnings`` and, with ``heatmap``, ``heatmap`` (an RGB uint8 array).

        A file that cannot be read or processed raises a one-line :class:`MammoLabError`.
        """
        self._single_images_only()
        image, name = _read_source(source, filename)
        prepared = self._prepare_named(image, name, box, self._start_for(source))
        res = self._result(self.probabilities([prepared.tensor], tta=tta)[0], prepared.warnings)
        if heatmap:
            res["heatmap"] = self.heatmap(prepared, method, _caption(Path(name).name, res, method))
        return res

    def _start_for(self, source: Any) -> str:
        """``preprocessed`` for a file of the very dataset the run was trained on (its images went through
        the recipe's preprocessing already: running it again would change them), else ``source``."""
        where = self.recipe.dataset.get("path")
        if where and isinstance(source, (str, Path)) and self.recipe.preprocess:
            try:
                Path(source).resolve().relative_to(Path(where))
                return "preprocessed"
            except ValueError:
                pass
        return "source"

    def _prepare_named(self, image: np.ndarray, name: str, box: tuple[int, int, int, int] | None,
                       start: str = "source") -> Prepared:
        try:
            return self.prepare(image, box=box, start=start if box is None else "source")
        except MammoLabError as exc:
            msg = str(exc)
            raise MammoLabError(msg if msg.startswith(name) else f"{name}: {msg}") from None

    def predict_files(self, paths: Sequence[str | Path], *, box: tuple[int, int, int, int] | None = None,
                      heatmap: bool = False, method: str = "gradcam", tta: bool = False,
                      batch_size: int = 16) -> list[dict[str, Any]]:
        """One result per file, in order, each with its ``path``; a file that fails is ``{path, error}``."""
        from mammolab.io.memory import retain_freed_memory

        self._single_images_only()
        if isinstance(paths, str | os.PathLike):  # one file, not one per character
            paths = [paths]
        retain_freed_memory()  # full-size temporaries reused from file to file (see mammolab.io.memory)
        results: list[dict[str, Any]] = []
        prepared: list[tuple[int, Prepared]] = []
        for p in paths:
            results.append({"path": str(p)})
            try:
                image, name = _read_source(p, None)
                prepared.append((len(results) - 1, self._prepare_named(image, name, box, self._start_for(p))))
            except MammoLabError as exc:
                results[-1]["error"] = str(exc)
        probs = self.probabilities([pr.tensor for _, pr in prepared], tta=tta, batch_size=batch_size)
        for (slot, pr), pk in zip(prepared, probs, strict=True):
            try:
                results[slot].update(self._result(pk, pr.warnings))
            except MammoLabError as exc:
                results[slot]["error"] = f"{results[slot]['path']}: {exc}"
                continue
            if heatmap:
                try:
                    name = Path(results[slot]["path"]).name
                    results[slot]["heatmap"] = self.heatmap(pr, method, _caption(name, results[slot], method))
                except MammoLabError as exc:
                    results[slot]["error"] = str(exc)
        return results


class _BackendModule:
    """An exported model as a callable returning torch logits (enough for occlusion heatmaps)."""

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(self.backend.logits(x))

    def eval(self) -> _BackendModule:
        return self


def _caption(name: str, res: dict[str, Any], method: str) -> str:
    return f"{name}  P(malignant)={res['prob']:.2f}  {res['class']}  [{method}]"


def check_run_recipe(run_dir: Path, run: Any, recipe: Recipe) -> None:
    """``recipe.json`` against ``config.yaml`` and the checkpoint, before anything is predicted: a recipe
    that disagrees with the model (another input size, other classes, another number of outputs) would
    feed it tensors it was not trained on, or label its outputs wrongly."""
    from mammolab.imagesize import as_hw

    where = run_dir / RECIPE_NAME
    cfg_hw, rec_hw = as_hw(run.config.image_size), recipe.transform.hw
    if cfg_hw != rec_hw:
        raise MammoLabError(f"{where}: transform.image_size {list(rec_hw)} differs from config.yaml's image_size "
                            f"{list(cfg_hw)} (height, width); the recipe must be the run's own")
    if recipe.transform.resize != run.config.resize:
        raise MammoLabError(f"{where}: transform.resize {recipe.transform.resize!r} differs from config.yaml's "
                            f"resize {run.config.resize!r}")
    if tuple(recipe.classes) != tuple(run.classes):
        raise MammoLabError(f"{where}: classes {list(recipe.classes)} differ from the checkpoint's {list(run.classes)}")
    outputs = int(getattr(run.model, "num_outputs", 0) or 0) or _model_outputs(run.model)
    if outputs and recipe.num_outputs != outputs:
        raise MammoLabError(f"{where}: num_outputs {recipe.num_outputs} differs from the checkpoint's model "
                            f"({outputs} output(s))")


def _model_outputs(model: Any) -> int:
    """Width of the model's last linear/conv layer (its number of logits), 0 when it cannot be told."""
    import torch

    last = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m.out_features
        elif isinstance(m, torch.nn.Conv2d):
            last = m.out_channels
    return int(last)


def _check_onnx_shapes(folder: Path, file: Path, session: Any, recipe: Recipe) -> None:
    """An exported ONNX model's static input size and output width against its ``recipe.json``."""
    where = folder / RECIPE_NAME
    shape = list(session.get_inputs()[0].shape)
    hw = [d for d in shape[-2:] if isinstance(d, int)]
    if len(hw) == 2 and tuple(hw) != recipe.transform.hw:
        raise MammoLabError(f"{where}: transform.image_size {list(recipe.transform.hw)} differs from {file.name}'s "
                            f"input {hw} (height, width)")
    out = list(session.get_outputs()[0].shape)
    if len(out) == 2 and isinstance(out[1], int) and out[1] != recipe.num_outputs:
        raise MammoLabError(f"{where}: num_outputs {recipe.num_outputs} differs from {file.name}'s {out[1]} "
                            "output(s)")


def run_recipe(run_dir: Path, run: Any) -> Recipe:
    """The run's recipe; a run trained before recipes existed gets one built from its dataset chain
    (which must still be there) and written, so the next load needs no dataset."""
    if (run_dir / RECIPE_NAME).is_file():
        return load_recipe(run_dir)
    if not (run.dataset_dir / "manifest.csv").is_file():
        raise MammoLabError(f"{run_dir / RECIPE_NAME}: not found, and the run's dataset {run.dataset_dir} is not "
                            "there to rebuild it from (retrain, or restore the dataset once)")
    recipe = build_recipe(run.dataset_dir, name=run_dir.resolve().name, model=run.config.display_name,
                          classes=run.classes, num_outputs=1 if run.binary else len(run.classes),
                          image_size=run.config.image_size, resize=run.config.resize, mean=run.model.mean,
                          std=run.model.std)
    write_recipe(run_dir, recipe)
    return recipe


# ----------------------------------------------------------------------------------------- tables

def predict_frame(predictor: Predictor, dataset: str | Path, frame: pd.DataFrame, *, start: str = "source",
                  tta: bool = False, batch_size: int = 64, workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Probabilities for the manifest rows ``frame`` of ``dataset`` through the recipe, and the warnings.

    Images are read and prepared in a thread pool (OpenCV releases the GIL), then batched through
    the model in order. An image that cannot be read is an error naming it: a score over a split
    with silent holes would not be the split's.
    """
    from mammolab.io.memory import retain_freed_memory

    retain_freed_memory()  # full-size temporaries reused from image to image (see mammolab.io.memory)
    dataset = Path(dataset)
    paths = [dataset / str(p) for p in frame["path"]]

    def prep(path: Path) -> Prepared:
        from mammolab.io import read_image

        try:
            return predictor.prepare(read_image(path), start=start)
        except MammoLabError as exc:
            msg = str(exc)
            raise MammoLabError(msg if str(path) in msg else f"{path}: {msg}") from None

    n_workers = workers or min(8, os.cpu_count() or 1)
    probs: list[np.ndarray] = []
    warnings: list[str] = []
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for i in range(0, len(paths), batch_size):
            chunk = list(pool.map(prep, paths[i:i + batch_size]))
            warnings += [w for pr in chunk for w in pr.warnings]
            probs.append(predictor.probabilities([pr.tensor for pr in chunk], tta=tta, batch_size=batch_size))
    if not probs:
        return np.zeros((0,) if predictor.binary else (0, len(predictor.classes)), dtype=np.float32), warnings
    return np.concatenate(probs), warnings


def predict_files(run_dir: str | Path, files: Sequence[str | Path], *, heatmap_dir: str | Path | None = None,
                  method: str = "gradcam", threshold: float | str | None = None, checkpoint: str = "best",
                  batch_size: int = 16, tta: bool = False,
                  box: tuple[int, int, int, int] | None = None) -> list[dict[str, Any]]:
    """What ``mammolab predict`` does: one result per file, in order (see :meth:`Predictor.predict_files`);
    with ``heatmap_dir`` each overlay is written there and its path is the result's ``heatmap``.

    ``threshold``: a number, ``youden`` or ``None``/``recipe`` (the run's recorded operating point).
    """
    from mammolab.explain.overlay import write_rgb_png

    if isinstance(files, str | os.PathLike):  # one file: a string is not a sequence of one-character names
        files = [files]
    if not files:
        raise MammoLabError("predict: give at least one image file")
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    from mammolab.evaluate.breast import refuse_two_view

    # a two-view run or exported breast model (train/views.py, evaluate/breast.py)
    refuse_two_view(predictor, "predict", "give each breast's files with --file-views",
                    "mammolab predict RUN CC_FILE MLO_FILE --file-views cc+mlo; one view only: --file-views cc FILE")
    if threshold is not None and str(threshold).strip().lower() != "recipe":
        predictor.recipe = predictor.recipe.model_copy(update={"threshold": resolve_threshold(run_dir, threshold)})
    results = predictor.predict_files(files, box=box, heatmap=heatmap_dir is not None, method=method, tta=tta,
                                      batch_size=batch_size)
    if heatmap_dir is not None:
        out = Path(heatmap_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for res in results:
            if "heatmap" not in res:
                continue
            name = Path(res["path"]).stem or "image"
            while name in used:
                name += "_"
            used.add(name)
            res["heatmap"] = str(write_rgb_png(out / f"{name}_{method}.png", res["heatmap"]))
    return results
