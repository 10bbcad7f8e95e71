"""What both prediction routes answer and check: the response model, the field check, the heatmap PNG.

Shared by the single-image app (:mod:`mammolab.app.serve`) and the breast route
(:mod:`mammolab.app.serve_breast`), which :mod:`~mammolab.app.serve` adds for a two-view model: kept
below both so that neither imports the other's module to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from mammolab.errors import MammoLabError

__all__ = ["Prediction", "check_fields", "checkpoint_name", "png_bytes"]


class Prediction(BaseModel):
    """One scored image."""

    model_config = ConfigDict(populate_by_name=True)
    file: str = Field(description="the uploaded file's name")
    probability: float = Field(description="P(malignant)")
    predicted_class: str = Field(alias="class", description="the predicted class (binary: probability >= "
                                 "threshold)")
    probs: dict[str, float] = Field(description="probability of each class")
    threshold: float = Field(description="the operating threshold the model carries")
    warnings: list[str] = Field(description="the input looks outside what the model was trained on, etc.")
    model: str = Field(description="the model (architecture and regime)")
    run: str = Field(description="the run's name")
    checkpoint: str | None = Field(None, description="the checkpoint file that scored it (e.g. best.ckpt; null for "
                                   "an exported model without one)")
    version: str = Field(description="the MammoLab version that trained the model")
    mammolab_version: str = Field(description="the MammoLab version serving it")
    heatmap_method: str | None = Field(None, description="with heatmap=1: gradcam, gradcam++ or occlusion")
    heatmap_png: str | None = Field(None, description="with heatmap=1: base64 PNG, image | overlay")


def checkpoint_name(predictor: Any) -> str | None:
    """The checkpoint file that scores (``best.ckpt``), never the server's path to it."""
    ckpt = getattr(predictor, "checkpoint", None)
    return Path(str(ckpt)).name if ckpt else None


async def check_fields(request: Any, fields: tuple[str, ...], unknown: str, twice: str) -> None:
    """422 for a multipart field the route does not take (``unknown`` with ``{names}``), or one given twice
    (``twice`` with ``{field}`` and ``{n}``): FastAPI would score the last one silently."""
    form = await request.form()  # already parsed by FastAPI for the route's fields: the cached form
    extra = sorted({str(k) for k in form} - set(fields))
    if extra:
        raise HTTPException(422, unknown.format(names=", ".join(extra)))
    for name in fields:
        if len(form.getlist(name)) > 1:
            raise HTTPException(422, twice.format(field=name, n=len(form.getlist(name))))


def png_bytes(rgb: Any) -> bytes:
    """An RGB overlay as PNG bytes (the heatmap both routes return, base64 in JSON)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise MammoLabError("could not encode the heatmap overlay as PNG")
    return buf.tobytes()
