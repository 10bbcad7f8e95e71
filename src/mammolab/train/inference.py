"""Loading a trained run's PyTorch model: the PyTorch backend of :class:`mammolab.infer.Predictor`.

:func:`load_run_model` rebuilds the model from ``RUN/config.yaml`` and loads
``RUN/checkpoints/best.ckpt`` (``torch.load(weights_only=True)``); it predicts nothing itself. Every
prediction (``predict``, ``serve``, ``evaluate``, ``explain``, the Python API's ``mammolab.load_run``)
goes through the one :class:`~mammolab.infer.predictor.Predictor`, which wraps this model in its
PyTorch backend. This module belongs to training (it needs the training config and model builder);
the inference core sits above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mammolab.config import load_yaml
from mammolab.errors import MammoLabError
from mammolab.models.registry import MammoNet
from mammolab.models.weights import check_checkpoint_model
from mammolab.train.config import TrainConfig
from mammolab.train.datamodule import MammoDataModule
from mammolab.train.fit import build_model

__all__ = ["SUBGROUP_COLUMNS", "RunModel", "load_run_model", "run_datamodule"]

#: Manifest columns copied into predictions so results can be broken down by subgroup.
SUBGROUP_COLUMNS = ("view", "density", "abnormality", "side", "subtlety", "assessment", "pathology")


@dataclass
class RunModel:
    """A run's model in eval mode, with the config and classes it was trained with."""

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

    @property
    def outputs(self) -> int:
        """Width of the model's last linear/conv layer (its number of logits), 0 when it cannot be told."""
        last = 0
        for m in self.model.modules():
            if isinstance(m, torch.nn.Linear):
                last = m.out_features
            elif isinstance(m, torch.nn.Conv2d):
                last = m.out_channels
        return int(last)


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


def load_run_model(run_dir: str | Path, checkpoint: str | Path = "best", *, dataset: str | Path | None = None,
                   device: str | torch.device | None = None) -> RunModel:
    """Load a run folder's model (``checkpoint``: ``best``, ``last`` or a ``.ckpt`` path) in eval mode.

    ``dataset`` overrides the dataset folder recorded in ``run.json`` (for a moved dataset).
    A checkpoint of another model than the run's config is one clear :class:`MammoLabError`.
    """
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
    return RunModel(model, config, classes, run_dir, dataset_dir, ckpt_path, dev)


def run_datamodule(run: Any, module: type | None = None, *,
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
