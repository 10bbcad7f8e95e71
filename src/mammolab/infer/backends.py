"""The model behind a :class:`~mammolab.infer.predictor.Predictor`: logits for a numpy batch.

Three interchangeable backends: a run's PyTorch model, an exported TorchScript module and an exported
ONNX model. Each takes ``x [N, 1, H, W]`` float32 (or a two-view model's breasts: ``x [N, 2, 1, H, W]``
(CC, MLO) with ``present [N, 2]``, 1 = the view is there) and returns logits ``[N, outputs]`` float32.
The ONNX backend needs numpy and onnxruntime only; the torch backends import torch in their own
methods, so an exported ONNX model is predicted and served without torch installed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["Backend", "OnnxBackend", "ScriptBackend", "TorchBackend"]


class Backend(ABC):
    """Logits ``[N, outputs]`` (float32 numpy) of a batch (see the module docstring)."""

    kind = "?"

    @abstractmethod
    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        """The model's raw outputs for the batch ``x`` (``present`` for breasts)."""


def _to_torch(x: Any, device: Any, dtype: Any = None) -> Any:
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device) if dtype is None else t.to(device, dtype)


class TorchBackend(Backend):
    """A run's PyTorch model (a :class:`~mammolab.models.registry.MammoNet`), in eval mode."""

    kind = "pytorch"

    def __init__(self, model: Any, device: Any) -> None:
        self.model, self.device = model, device

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = _to_torch(x, self.device)
            out = self.model(xt) if present is None else self.model(xt, _to_torch(present, self.device, torch.bool))
            return out.float().reshape(xt.shape[0], -1).cpu().numpy()


class ScriptBackend(Backend):
    """An exported TorchScript module (``model.pt``)."""

    kind = "torchscript"

    def __init__(self, module: Any, device: Any) -> None:
        self.module, self.device = module, device

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = _to_torch(x, self.device)
            if present is None:
                return self.module(xt).float().reshape(xt.shape[0], -1).cpu().numpy()
            # the traced breast model takes present as float32 (1 = view there), as the ONNX one does
            out = self.module(xt, _to_torch(present, self.device, torch.float32))
            return out.float().reshape(xt.shape[0], -1).cpu().numpy()


class OnnxBackend(Backend):
    """An exported ONNX model (``model.onnx``) in an onnxruntime session: no torch."""

    kind = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.inputs = [i.name for i in session.get_inputs()]

    def logits(self, x: Any, present: Any = None) -> np.ndarray:
        arr = np.ascontiguousarray(_numpy(x), dtype=np.float32)
        if present is None:
            out = self.session.run(None, {self.input: arr})[0]
        else:  # a two-view export: inputs x [N, 2, 1, H, W] and present [N, 2] float32
            mask = np.ascontiguousarray(_numpy(present), dtype=np.float32)
            out = self.session.run(None, dict(zip(self.inputs, (arr, mask), strict=True)))[0]
        return np.asarray(out, dtype=np.float32).reshape(arr.shape[0], -1)


def _numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor from a heatmap's perturbed batch, or numpy already)."""
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, "detach", None)
    return detach().cpu().numpy() if detach is not None else np.asarray(x)
