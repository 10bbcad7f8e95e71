"""One inference path: a source file in, the probability evaluation gave it out.

:class:`Predictor` loads a run folder or an exported model folder (``mammolab export``) with its
recipe (:mod:`mammolab.recipe`) and applies it to every input (:func:`mammolab.infer.apply.apply_recipe`:
organize's conversion, the dataset's preprocessing steps and the training transform), then the
model through one of its backends (:mod:`mammolab.infer.backends`), then the one logits-to-
probabilities function, TTA and decision of :mod:`mammolab.infer.core`. ``predict``, ``serve``,
``evaluate`` (single and two-view, internal and external), ``explain``, ``export``'s check and the
Python API (``mammolab.load_run``) all call it. A file that cannot be read becomes one result with an
``error``; the others are still predicted.

Heatmaps are drawn by the layer above (:mod:`mammolab.explain.predicted`): a caller passes
``heatmap=`` a function of the prepared image and its result, so the map explains the class printed.
"""

from __future__ import annotations

import os
import tempfile
import warnings as pywarnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw
from mammolab.infer.apply import Prepared, apply_recipe, to_model_input
from mammolab.infer.backends import Backend, OnnxBackend, ScriptBackend, TorchBackend
from mammolab.infer.core import class_probabilities, decide, output_probabilities, tta_views
from mammolab.infer.views import is_two_view
from mammolab.io import images as image_io
from mammolab.io.memory import retain_freed_memory
from mammolab.recipe import RECIPE_NAME, Recipe, build_recipe, load_recipe, write_recipe

__all__ = ["EXPORT_FILES", "EXPORT_MARKER", "Predictor", "check_run_recipe", "load_run", "read_source", "run_recipe"]

#: Model files of an exported folder, by format.
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
#: Written last by ``mammolab export``, after the exported model was verified against the run: a
#: folder without it was left by a killed or failed export and is refused.
EXPORT_MARKER = "export.json"

#: ``heatmap=`` of the predict methods: (prepared image, its result) -> RGB figure.
Heatmapper = Callable[[Prepared, dict[str, Any]], np.ndarray]


def read_source(source: str | Path | bytes | bytearray | memoryview, filename: str | None) -> tuple[np.ndarray, str]:
    """Pixels of a path or of an upload's bytes, only through :mod:`mammolab.io` (with its pixel guard)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = filename or "upload"
        reader = getattr(image_io, "read_image_bytes", None)
        if reader is not None:
            return reader(source, name), name
        suffix = Path(name).suffix.lower()
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(source))
            try:
                return image_io.read_image(tmp), name
            except MammoLabError as exc:
                raise MammoLabError(str(exc).replace(tmp, name)) from None
        finally:
            os.unlink(tmp)
    path = Path(source)
    return image_io.read_image(path), filename or str(path)


class Predictor:
    """A model with its recipe: ``Predictor.load(RUN or EXPORTED_DIR)`` then ``predict_file(...)``.

    For a run folder it also carries what the run's own data needs (``config``, ``dataset_dir``,
    ``model`` and ``device`` of the PyTorch backend), so explain and the split predictions use it too.
    """

    def __init__(self, recipe: Recipe, backend: Backend, *, path: Path, checkpoint: str | None = None,
                 torch_model: Any = None, device: Any = None, config: Any = None, dataset_dir: Path | None = None,
                 checkpoint_path: Path | None = None) -> None:
        self.recipe = recipe
        self.backend = backend
        self.path = Path(path)
        #: the weights in use, named in every output: ``best.ckpt`` / ``last.ckpt`` of a run, or the
        #: exported model file (``model.onnx``, ``model.pt``)
        self.checkpoint = checkpoint
        #: the PyTorch model of a run folder (None for an exported model): heatmap layers hook onto it
        self.model = torch_model
        self.device = device
        #: the run's training config (``config.yaml``; None for an exported model)
        self.config = config
        #: the run's dataset folder (``run.json``; None for an exported model)
        self.dataset_dir = dataset_dir
        self.checkpoint_path = checkpoint_path

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, checkpoint: str = "best", device: str | None = None, *,
             require_marker: bool = True, dataset: str | Path | None = None) -> Predictor:
        """A run folder (``config.yaml``, ``checkpoints/``) or an exported folder (``recipe.json`` + model file).

        ``checkpoint``: ``best`` (refused when best.ckpt is missing: never last.ckpt silently), ``last``
        or a ``.ckpt`` path. The recipe is validated against its schema, ``config.yaml`` and the model
        before anything is predicted. ``require_marker=False`` is for export's own check of a folder it
        has not finished yet. ``dataset`` overrides a run's recorded dataset folder (a moved dataset).
        """
        path = Path(path)
        if not path.is_dir():
            raise MammoLabError(f"{path}: not a folder (expected a run folder or an exported model folder)")
        if (path / "config.yaml").is_file():
            return cls._load_run(path, checkpoint, device, dataset)
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
            return cls(recipe, OnnxBackend(session), path=path, checkpoint=file.name)
        # TorchScript: torch is imported here only (an ONNX export runs without it)
        import torch

        dev = torch.device(device) if device else torch.device("cpu")
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still loads
                module = torch.jit.load(str(file), map_location=dev).eval()
        except Exception as exc:  # a truncated or foreign file
            raise MammoLabError(f"{file}: unreadable TorchScript model ({exc.__class__.__name__})") from None
        return cls(recipe, ScriptBackend(module, dev), path=path, device=dev, checkpoint=file.name)

    @classmethod
    def _load_run(cls, path: Path, checkpoint: str, device: str | None, dataset: str | Path | None) -> Predictor:
        # The training stack (torch, Lightning, the model registry) is imported here, for run folders
        # only: an exported model is predicted and served without it.
        from mammolab.train.inference import load_run_model

        if checkpoint not in ("best", "last") and not str(checkpoint).endswith(".ckpt"):
            raise MammoLabError(f"--checkpoint: expected best, last or a .ckpt file, got {checkpoint!r}")
        if (path / RECIPE_NAME).is_file():  # the recipe first: a damaged one stops before the weights load
            load_recipe(path)
        run = load_run_model(path, checkpoint=checkpoint, device=device, dataset=dataset)
        recipe = run_recipe(path, run)
        check_run_recipe(path, run, recipe)
        return cls(recipe, TorchBackend(run.model, run.device), path=path, checkpoint=Path(run.checkpoint).name,
                   torch_model=run.model, device=run.device, config=run.config, dataset_dir=run.dataset_dir,
                   checkpoint_path=Path(run.checkpoint))

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
        """The operating threshold: the recipe's (see :mod:`mammolab.infer.threshold`)."""
        return float(self.recipe.threshold)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def format(self) -> str:
        return self.backend.kind

    @property
    def run_dir(self) -> Path:
        return self.path

    @property
    def two_view(self) -> bool:
        return is_two_view(self)

    def with_threshold(self, threshold: float) -> Predictor:
        """This predictor deciding at ``threshold`` (the recipe is copied, the model shared)."""
        twin = object.__new__(Predictor)
        twin.__dict__.update(self.__dict__)
        twin.recipe = self.recipe.model_copy(update={"threshold": float(threshold)})
        return twin

    def _single_images_only(self) -> None:
        """A two-view breast model scores a breast's CC and MLO images together: a lone image would go
        through the head without the fusion (a wrong number, or a shape error deep in the exported graph)."""
        if is_two_view(self):
            raise MammoLabError(f"predict: {self.path} is a two-view (CC + MLO) breast model; it scores a breast's "
                                "CC and MLO images together, not single images",
                                hint="mammolab predict MODEL CC_FILE MLO_FILE --file-views cc+mlo "
                                     "(mammolab.infer.breast.predict_breast)")

    # -------------------------------------------------------------------------------- core
    def prepare(self, image: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                start: str = "source") -> Prepared:
        """An image as :func:`mammolab.io.read_image` returns it -> the model input (see :func:`apply_recipe`)."""
        return apply_recipe(self.recipe, image, start=start, box=box)  # type: ignore[arg-type]

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """The training transform only (an image of the run's own, preprocessed dataset) -> ``[1, H, W]``."""
        return to_model_input(self.recipe, image)

    def preprocess(self, image: np.ndarray) -> Any:
        """:meth:`model_input` as a torch tensor (for heatmap code that feeds the PyTorch model itself)."""
        import torch

        return torch.from_numpy(self.model_input(image))

    def class_probabilities(self, x: Any, present: Any = None, *, tta: bool = False) -> np.ndarray:
        """Class probabilities ``[N, C]`` of one batch (``x [N, 1, H, W]``, or breasts with ``present``);
        ``tta`` averages the probabilities of the batch and its horizontal and vertical flips."""
        views = tta_views(x, tta)
        return np.mean([class_probabilities(self.backend.logits(v, present)) for v in views], axis=0)

    def probabilities(self, inputs: Sequence[Any], *, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """P(malignant) ``[N]`` for binary models, class probabilities ``[N, C]`` otherwise, of model
        inputs ``[1, H, W]`` (:attr:`Prepared.tensor`)."""
        self._single_images_only()
        out = []
        for i in range(0, len(inputs), batch_size):
            x = np.stack([np.asarray(t, dtype=np.float32) for t in inputs[i:i + batch_size]])
            out.append(output_probabilities(self.class_probabilities(x, tta=tta), self.binary))
        if not out:
            return np.zeros((0,) if self.binary else (0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)

    def breast_probabilities(self, x: Any, present: Any, *, tta: bool = False) -> np.ndarray:
        """P(malignant) ``[N]`` (binary) or ``[N, C]`` of breasts ``x [N, 2, 1, H, W]`` with ``present [N, 2]``."""
        return output_probabilities(self.class_probabilities(x, present, tta=tta), self.binary)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices of predictions at this predictor's threshold (:func:`mammolab.infer.core.decide`)."""
        return decide(probs, self.threshold)

    def result(self, probs: np.ndarray, warnings: list[str]) -> dict[str, Any]:
        """One prediction as a result: ``prob`` (P(malignant)), ``class``, ``probs``, ``threshold``, ``checkpoint``,
        ``warnings``."""
        probs = np.asarray(probs)
        if not np.all(np.isfinite(probs)):
            # NaN is not JSON (serve answered "prob": NaN / null and called it benign): an error instead
            raise MammoLabError(f"the model's output is not a number ({self.checkpoint or self.path}: damaged "
                                "weights or a recipe that divides by zero); nothing predicted")
        cls_index = int(decide(probs[None], self.threshold)[0])
        if self.binary:
            p = float(probs)
            res = {"prob": p, "class": self.classes[cls_index],
                   "probs": {self.classes[0]: 1.0 - p, self.classes[1]: p}}
        else:
            malignant = [i for i, c in enumerate(self.classes) if c.startswith("malignant")]
            p = float(probs[malignant].sum()) if malignant else float(probs.max())
            res = {"prob": p, "class": self.classes[cls_index],
                   "probs": {c: float(v) for c, v in zip(self.classes, probs, strict=True)}}
        res.update(threshold=self.threshold, checkpoint=self.checkpoint, warnings=list(warnings))
        return res

    # -------------------------------------------------------------------------------- arrays and files
    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """P(malignant) ``[N]`` for a binary model, class probabilities ``[N, C]`` otherwise, of images of the
        run's own (preprocessed) dataset: the training transform only, as evaluation applies it."""
        return self.probabilities([self.model_input(im) for im in images], tta=tta, batch_size=batch_size)

    def predict_array(self, image: np.ndarray, *, box: tuple[int, int, int, int] | None = None,
                      start: str = "source", tta: bool = False) -> dict[str, Any]:
        prepared = self.prepare(image, box=box, start=start)
        return self.result(self.probabilities([prepared.tensor], tta=tta)[0], prepared.warnings)

    def predict_file(self, source: str | Path | bytes | bytearray | memoryview, *, filename: str | None = None,
                     box: tuple[int, int, int, int] | None = None, heatmap: Heatmapper | None = None,
                     tta: bool = False) -> dict[str, Any]:
        """One file (a path, or an upload's bytes): ``prob`` (P(malignant)), ``class``, ``probs``,
        ``threshold``, ``warnings`` and, with ``heatmap`` (see :func:`mammolab.explain.predicted.heatmapper`),
        ``heatmap`` (an RGB uint8 array of the class printed).

        A file that cannot be read or processed raises a one-line :class:`MammoLabError`.
        """
        self._single_images_only()
        image, name = read_source(source, filename)
        prepared = self.prepare_named(image, name, box, self.start_for(source))
        res = self.result(self.probabilities([prepared.tensor], tta=tta)[0], prepared.warnings)
        if heatmap is not None:
            res["heatmap"] = heatmap(prepared, {**res, "name": Path(name).name})
        return res

    def start_for(self, source: Any) -> str:
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

    def prepare_named(self, image: np.ndarray, name: str, box: tuple[int, int, int, int] | None,
                      start: str = "source") -> Prepared:
        """:meth:`prepare`, its error naming the file."""
        try:
            return self.prepare(image, box=box, start=start if box is None else "source")
        except MammoLabError as exc:
            msg = str(exc)
            raise MammoLabError(msg if msg.startswith(name) else f"{name}: {msg}") from None

    def predict_files(self, paths: Sequence[str | Path], *, box: tuple[int, int, int, int] | None = None,
                      heatmap: Heatmapper | None = None, tta: bool = False,
                      batch_size: int = 16) -> list[dict[str, Any]]:
        """One result per file, in order, each with its ``path``; a file that fails is ``{path, error}``."""
        self._single_images_only()
        if isinstance(paths, str | os.PathLike):  # one file, not one per character
            paths = [paths]
        retain_freed_memory()  # full-size temporaries reused from file to file (see mammolab.io.memory)
        results: list[dict[str, Any]] = []
        prepared: list[tuple[int, Prepared]] = []
        for p in paths:
            results.append({"path": str(p)})
            try:
                image, name = read_source(p, None)
                prepared.append((len(results) - 1, self.prepare_named(image, name, box, self.start_for(p))))
            except MammoLabError as exc:
                results[-1]["error"] = str(exc)
        probs = self.probabilities([pr.tensor for _, pr in prepared], tta=tta, batch_size=batch_size)
        for (slot, pr), pk in zip(prepared, probs, strict=True):
            try:
                results[slot].update(self.result(pk, pr.warnings))
            except MammoLabError as exc:
                results[slot]["error"] = f"{results[slot]['path']}: {exc}"
                continue
            if heatmap is not None:
                try:
                    results[slot]["heatmap"] = heatmap(pr, {**results[slot],
                                                            "name": Path(results[slot]["path"]).name})
                except MammoLabError as exc:
                    results[slot]["error"] = str(exc)
        return results


def load_run(run_dir: str | Path, checkpoint: str | Path = "best", *, dataset: str | Path | None = None,
             device: str | None = None) -> Predictor:
    """A run (or exported) folder's :class:`Predictor` (``checkpoint``: ``best``, ``last`` or a ``.ckpt``
    path); ``dataset`` overrides the dataset folder recorded in ``run.json`` (for a moved dataset).

    ``predict_arrays([...])`` predicts images of the run's own dataset; ``predict_file(s)`` any file.
    """
    return Predictor.load(run_dir, checkpoint=str(checkpoint), device=device, dataset=dataset)


def check_run_recipe(run_dir: Path, run: Any, recipe: Recipe) -> None:
    """``recipe.json`` against ``config.yaml`` and the checkpoint, before anything is predicted: a recipe
    that disagrees with the model (another input size, other classes, another number of outputs) would
    feed it tensors it was not trained on, or label its outputs wrongly."""
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
    outputs = int(getattr(run.model, "num_outputs", 0) or 0) or run.outputs
    if outputs and recipe.num_outputs != outputs:
        raise MammoLabError(f"{where}: num_outputs {recipe.num_outputs} differs from the checkpoint's model "
                            f"({outputs} output(s))")


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
                          classes=run.classes, num_outputs=1 if len(run.classes) == 2 else len(run.classes),
                          image_size=run.config.image_size, resize=run.config.resize, mean=run.model.mean,
                          std=run.model.std)
    write_recipe(run_dir, recipe)
    return recipe
