"""Using a trained run: load its checkpoint, apply the training transform, predict arrays or a split.

``load_run(RUN)`` rebuilds the model from ``RUN/config.yaml`` and loads ``RUN/checkpoints/best.ckpt``
(``torch.load(weights_only=True)``). :meth:`TrainedRun.preprocess` is the training transform only
(resize, scale by bit depth, normalise): right for images of the run's own (preprocessed) dataset.
Files from outside go through the run's whole recipe instead (organize's conversion and the
dataset's preprocessing first): :class:`mammolab.evaluate.predict.Predictor`, which ``predict``,
``serve`` and ``evaluate`` use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammolab.config import load_yaml
from mammolab.errors import MammoLabError
from mammolab.models.registry import MammoNet
from mammolab.models.weights import check_checkpoint_model
from mammolab.train.config import TrainConfig
from mammolab.train.datamodule import MammoDataModule, preprocess_array

__all__ = ["SUBGROUP_COLUMNS", "TrainedRun", "load_run", "positive_probability", "predict_split", "run_datamodule"]

#: Manifest columns copied into predictions so results can be broken down by subgroup.
SUBGROUP_COLUMNS = ("view", "density", "abnormality", "side", "subtlety", "assessment", "pathology")


@dataclass
class TrainedRun:
    """A trained model ready for prediction, with the config and classes it was trained with."""

    model: MammoNet
    config: TrainConfig
    classes: tuple[str, ...]
    run_dir: Path
    dataset_dir: Path
    checkpoint: Path
    device: torch.device

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A 2-D ``uint8``/``uint16`` image -> the ``[1, H, W]`` float tensor used for val/test."""
        return preprocess_array(image, self.config, self.model.mean, self.model.std)

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor, tta: bool = False) -> np.ndarray:
        """Probabilities for a ``[N, 1, H, W]`` batch; ``tta`` averages identity, h-flip and v-flip."""
        x = x.to(self.device)
        views = [x, x.flip(-1), x.flip(-2)] if tta else [x]
        probs = []
        for v in views:
            logits = self.model(v).float()
            probs.append(torch.sigmoid(logits[:, 0]) if self.binary else torch.softmax(logits, dim=1))
        return torch.stack(probs).mean(0).cpu().numpy()

    def predict_arrays(self, images: Sequence[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """P(malignant) ``[N]`` for a binary run, class probabilities ``[N, C]`` otherwise."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i:i + batch_size]])
            out.append(self.predict_tensor(batch, tta))
        if not out:
            return np.zeros((0,) if self.binary else (0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out)


def _checkpoint_path(run_dir: Path, checkpoint: str | Path) -> Path:
    if str(checkpoint) in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
        # No silent fallback to last.ckpt: it is another model (10 of 26 images changed class in the
        # fault pass) and the card would still quote best's threshold. The user chooses it by name.
        if not path.is_file() and checkpoint == "best" and (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise MammoLabError(f"{path}: not found; the run is damaged or unfinished (its last.ckpt is there: "
                                "pass --checkpoint last to use the last epoch's weights instead)")
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise MammoLabError(f"{path}: checkpoint not found (is {run_dir} a finished 'mammolab train' run?)")
    return path


def load_run(run_dir: str | Path, checkpoint: str | Path = "best", *, dataset: str | Path | None = None,
             device: str | torch.device | None = None) -> TrainedRun:
    """Load a run folder's model (``checkpoint``: ``best``, ``last`` or a ``.ckpt`` path) in eval mode.

    ``dataset`` overrides the dataset folder recorded in ``run.json`` (for a moved dataset).
    A checkpoint of another model than the run's config is one clear :class:`MammoLabError`.
    """
    from mammolab.train.fit import build_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MammoLabError(f"{run_dir}: not a training run (no config.yaml)")
    config = TrainConfig.model_validate(load_yaml(cfg_path))
    info = {}
    if (run_dir / "run.json").is_file():
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    ckpt_path = _checkpoint_path(run_dir, checkpoint)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise MammoLabError(f"{ckpt_path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    meta = check_checkpoint_model(ckpt, config.model, ckpt_path)
    classes = tuple(meta.get("classes") or info.get("classes") or ())
    if len(classes) < 2:
        raise MammoLabError(f"{ckpt_path}: the checkpoint records no class names")
    model = build_model(config, int(meta.get("num_outputs", 1 if len(classes) == 2 else len(classes))),
                        weights="none")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise MammoLabError(f"{ckpt_path}: weights do not fit {config.display_name} ({first})") from None
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    dataset_dir = Path(dataset) if dataset else Path(info.get("dataset", ""))
    return TrainedRun(model, config, classes, run_dir, dataset_dir, ckpt_path, dev)


def positive_probability(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """P(malignant): the probability itself for binary, the sum over ``malignant*`` classes otherwise."""
    if probs.ndim == 1:
        return probs
    malignant = [i for i, c in enumerate(classes) if c.startswith("malignant")]
    return probs[:, malignant].sum(1) if malignant else probs.max(1)


def run_datamodule(run: TrainedRun, module: type | None = None, *,
                   hint: str = "pass dataset=... to load_run with its new location") -> Any:
    """The run's own dataset as a datamodule (``MammoDataModule`` unless ``module``), checked first: a moved
    or deleted dataset, or one whose classes are not the run's, is one clear error instead of a wrong score."""
    if not (run.dataset_dir / "manifest.csv").is_file():
        raise MammoLabError(f"{run.dataset_dir}: the run's dataset is not there any more", hint=hint)
    dm = (module or MammoDataModule)(run.dataset_dir, run.config, mean=run.model.mean, std=run.model.std)
    if tuple(dm.classes) != tuple(run.classes):
        raise MammoLabError(f"{run.dataset_dir}: dataset classes {list(dm.classes)} differ from the run's "
                            f"{list(run.classes)}")
    return dm


def predict_split(run: TrainedRun, split: str = "test", tta: bool = False, batch_size: int = 64) -> pd.DataFrame:
    """Predict every image of a split of the run's dataset (the run's own fold/subset roles).

    Columns: path, image_id, patient_id, split, label, target, prob (P(malignant); for multi-class
    runs the summed probability of the malignant classes) and ``prob_<class>`` for multi-class,
    plus the manifest's subgroup columns (view, density, abnormality, ...).
    """
    if split not in ("train", "val", "test"):
        raise MammoLabError(f"--split: expected train, val or test, got {split!r}")
    dm = run_datamodule(run)
    frame = dm.frames[split]
    probs = np.zeros((0,) if run.binary else (0, len(run.classes)), dtype=np.float32)
    if len(frame):
        ds = dm.dataset(split)
        chunks = []
        for i in range(0, len(ds), batch_size):
            xs = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))])
            chunks.append(run.predict_tensor(xs, tta))
        probs = np.concatenate(chunks)
    out = pd.DataFrame({
        "path": frame["path"].astype(str).to_numpy(),
        "image_id": frame["image_id"].astype(str).to_numpy() if "image_id" in frame else "",
        "patient_id": frame["patient_id"].astype(str).to_numpy(),
        "split": split,
        "label": frame["label"].astype(str).to_numpy(),
        "target": frame["target"].to_numpy(dtype=np.int64),
        "prob": positive_probability(probs, run.classes).astype(np.float64),
    })
    if not run.binary:
        for i, c in enumerate(run.classes):
            out[f"prob_{c}"] = probs[:, i].astype(np.float64)
    for col in SUBGROUP_COLUMNS:
        if col in frame:
            out[col] = frame[col].to_numpy()
    return out
