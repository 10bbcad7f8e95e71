"""Breast-level prediction for two-view (CC + MLO) runs: a breast's files in, one probability out.

A ``--views cc+mlo`` run (:mod:`mammolab.train.views`) scores a *breast*, not an image, so
``mammolab predict`` takes a breast's files in the order ``--file-views`` names them
(``predict RUN CC_FILE MLO_FILE --file-views cc+mlo``; several breasts as consecutive groups). Each file
goes through the run's recipe exactly as a single-view file does (:meth:`Predictor.prepare`, so an
organized image gets the probability ``evaluate`` gave its breast), and a breast with one view
(``--file-views cc`` or ``--file-views mlo``) is handled as training and evaluation handle it: the missing
view is filled with the present one and flagged absent, so attention fusion gives it no weight and
concat fusion sees the present view's features twice. The result says which view was missing.

The same functions run an exported breast model (``mammolab export`` of a two-view run: inputs
``x [N, 2, 1, H, W]`` and ``present [N, 2]``, ``recipe.json`` saying ``views: cc+mlo``) through its
ONNX or TorchScript backend, and ``mammolab serve`` scores uploaded breasts with them. With
``heatmap`` a breast also gets its figure: each view's map of the breast score
(:mod:`mammolab.explain.breast`), CC and MLO side by side; an exported model has no layers to hook,
so occlusion is its only method, as for single images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.train.views import VIEWS

__all__ = ["VIEW_CHOICES", "breast_heatmap", "is_two_view", "parse_views", "predict_breast", "predict_breast_files",
           "refuse_two_view", "run_views"]

#: What ``--file-views`` of ``predict`` accepts: the views of each breast's files, in order.
VIEW_CHOICES = ("cc+mlo", "cc", "mlo")


def run_views(path: str | Path) -> str:
    """``views`` of a run folder's ``config.yaml``, or of an exported folder's ``recipe.json``
    (``single`` for a single-view model or an older run), read without loading the model, so a
    command can tell a breast model before any work."""
    from mammolab.config import load_yaml
    from mammolab.io.atomic import read_json
    from mammolab.recipe import RECIPE_NAME

    cfg = Path(path) / "config.yaml"
    if not cfg.is_file():
        recipe = read_json(Path(path) / RECIPE_NAME)  # an exported folder: written by mammolab export
        return str(recipe.get("views") or "single") if isinstance(recipe, dict) else "single"
    data = load_yaml(cfg) or {}
    return str(data.get("views") or "single") if isinstance(data, dict) else "single"


def is_two_view(predictor_or_path: Any) -> bool:
    """Whether a :class:`~mammolab.evaluate.predict.Predictor` (or a run or exported folder) holds a breast model."""
    if isinstance(predictor_or_path, (str, Path)):
        return run_views(predictor_or_path) != "single"
    if getattr(getattr(predictor_or_path, "recipe", None), "views", None):  # an exported breast model
        return True
    run = getattr(predictor_or_path, "run", None)
    return str(getattr(getattr(run, "config", None), "views", "single")) != "single"


def refuse_two_view(predictor_or_path: Any, command: str, reason: str, alternative: str) -> None:
    """One-line :class:`MammoLabError` when ``command`` (which works on single images: ``reason`` says
    how) is given a two-view breast model."""
    if is_two_view(predictor_or_path):
        where = getattr(predictor_or_path, "path", predictor_or_path)
        raise MammoLabError(f"{command}: {where} is a two-view (CC + MLO) breast model; {reason}", hint=alternative)


def parse_views(views: str) -> tuple[str, ...]:
    """``cc+mlo`` -> ``("CC", "MLO")``; ``cc`` / ``mlo`` for a breast filmed in one view only."""
    key = str(views).strip().lower().replace(" ", "")
    if key not in VIEW_CHOICES:
        raise MammoLabError(f"--file-views: expected one of {', '.join(VIEW_CHOICES)} (the views of each breast's "
                            f"files, in order), got {views!r}")
    return tuple(v.upper() for v in key.split("+"))


def _breast_tensor(prepared: dict[str, Any]) -> tuple[Any, Any]:
    """``[1, 2, 1, H, W]`` (CC, MLO) and ``present [1, 2]``, a missing view filled with the present one
    (as :class:`~mammolab.train.views.TwoViewDataset` does)."""
    import torch

    tensors = [prepared[v].tensor if v in prepared else None for v in VIEWS]
    fill = next(t for t in tensors if t is not None)
    x = torch.stack([t if t is not None else fill for t in tensors])[None]
    present = torch.tensor([[t is not None for t in tensors]])
    return x, present


def _breast_probs(predictor: Any, x: Any, present: Any, tta: bool) -> np.ndarray:
    """The model's output for one breast, as :func:`mammolab.train.views.predict_breasts` computes it,
    through the predictor's backend (the run's PyTorch model, or an exported ONNX / TorchScript one)."""
    from mammolab.evaluate.predict import _probabilities

    outs = [_probabilities(predictor.backend.logits(v, present), predictor.binary)
            for v in ([x, x.flip(-1), x.flip(-2)] if tta else [x])]
    return np.mean(outs, axis=0)[0]


def breast_heatmap(predictor: Any, prepared: dict[str, Any], x: Any, present: Any, method: str,
                   caption: str) -> np.ndarray:
    """The breast's RGB figure: each present view's map of the breast score on its preprocessed image,
    CC and MLO side by side (:func:`mammolab.explain.breast.breast_figure`)."""
    import torch

    from mammolab.explain.breast import breast_figure

    model = predictor._torch_model
    if model is None:
        if method != "occlusion":
            raise MammoLabError(f"--method {method}: an exported {predictor.format} model has no layers to hook; "
                                "use --method occlusion, or the run folder")

        def model(xb: Any, pb: Any) -> Any:
            return torch.from_numpy(predictor.backend.logits(xb, pb))
    device = predictor._device or "cpu"
    panel, _ = breast_figure(model, x.to(device), present.to(device),
                             [prepared[v].image if v in prepared else None for v in VIEWS], method=method,
                             resize=predictor.recipe.transform.resize, caption=caption,
                             threshold=predictor.threshold)
    return panel


def predict_breast(predictor: Any, files: dict[str, str | Path | bytes], *, tta: bool = False,
                   names: dict[str, str] | None = None, heatmap: bool = False,
                   method: str = "gradcam") -> dict[str, Any]:
    """One breast: ``files`` maps ``CC``/``MLO`` to a file (one may be absent) -> ``prob``, ``class``,
    ``probs``, ``threshold``, ``warnings``, ``views`` (``cc+mlo``, ``cc`` or ``mlo``), ``missing_view``
    (``None``, ``CC`` or ``MLO``), ``cc`` and ``mlo`` (the files, ``None`` when missing); with
    ``heatmap``, ``heatmap`` (the RGB figure of :func:`breast_heatmap`, the predicted class explained).

    A file may be an upload's bytes (``mammolab serve``); ``names`` then gives its file name per view.
    A file that cannot be read or processed raises a one-line :class:`MammoLabError` naming it.
    """
    from mammolab.evaluate.predict import _read_source

    if not is_two_view(predictor):
        raise MammoLabError(f"--file-views: {predictor.path} is a single-view model; predict its files without "
                            "--file-views")
    given = {str(v).upper(): f for v, f in files.items() if f is not None}
    if not given or set(given) - set(VIEWS):
        raise MammoLabError(f"predict: a breast needs a CC and/or an MLO file, got views {sorted(given) or 'none'}")
    prepared: dict[str, Any] = {}
    warnings: list[str] = []
    for view in VIEWS:
        if view not in given:
            continue
        image, name = _read_source(given[view], (names or {}).get(view))
        pr = predictor._prepare_named(image, name, None, predictor._start_for(given[view]))
        prepared[view] = pr
        warnings += [f"{view}: {w}" for w in pr.warnings]
    missing = next((v for v in VIEWS if v not in prepared), None)
    if missing is not None:
        present = next(v for v in VIEWS if v in prepared)
        warnings.append(f"no {missing} view: predicted from the {present} view alone (the missing view is "
                        "handled as in training and evaluation)")
    x, present_mask = _breast_tensor(prepared)
    res = predictor._result(_breast_probs(predictor, x, present_mask, tta), warnings)
    shown = {v: (names or {}).get(v) or str(f) for v, f in given.items()}
    res.update(views="+".join(v.lower() for v in VIEWS if v in prepared), missing_view=missing,
               cc=shown.get("CC"), mlo=shown.get("MLO"))
    if heatmap:
        label = " + ".join(Path(str(shown[v])).name for v in VIEWS if v in shown)
        res["heatmap"] = breast_heatmap(predictor, prepared, x, present_mask, method,
                                        f"{label}  P(malignant)={res['prob']:.2f}  {res['class']}  [{method}]")
    return res


def predict_breast_files(run_dir: str | Path, files: Sequence[str | Path], views: str = "cc+mlo", *,
                         threshold: float | str | None = None, checkpoint: str = "best",
                         tta: bool = False, heatmap_dir: str | Path | None = None,
                         method: str = "gradcam") -> list[dict[str, Any]]:
    """What ``mammolab predict RUN FILES --file-views V`` does: the files, in groups of the views ``V`` names
    (one group per breast), each group one result (see :func:`predict_breast`) with ``path`` (the
    group's files joined by `` + ``); a breast whose file fails is ``{path, cc, mlo, error}``.
    With ``heatmap_dir`` each breast's figure is written there as ``<cc stem>+<mlo stem>_<method>.png``
    and its path is the result's ``heatmap``."""
    from mammolab.evaluate.predict import Predictor, resolve_threshold
    from mammolab.explain.cam import METHODS
    from mammolab.explain.overlay import write_rgb_png

    if heatmap_dir is not None and method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if heatmap_dir is not None:
        Path(heatmap_dir).mkdir(parents=True, exist_ok=True)

    order = parse_views(views)
    if not files:
        raise MammoLabError(f"predict --file-views {views}: give each breast's files in the order "
                            f"{' '.join(v + '_FILE' for v in order)}")
    if len(files) % len(order):
        raise MammoLabError(f"predict --file-views {views}: {len(files)} file(s) do not split into breasts of "
                            f"{len(order)} ({' '.join(v + '_FILE' for v in order)} per breast)")
    if not is_two_view(run_dir):
        raise MammoLabError(f"--file-views: {run_dir} is a single-view model; predict its files without "
                            "--file-views")
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    if threshold is not None and str(threshold).strip().lower() != "recipe":
        predictor.recipe = predictor.recipe.model_copy(update={"threshold": resolve_threshold(run_dir, threshold)})
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for i in range(0, len(files), len(order)):
        group = dict(zip(order, files[i:i + len(order)], strict=True))
        base = {"path": " + ".join(str(f) for f in group.values())}
        try:
            res = {**base, **predict_breast(predictor, group, tta=tta, heatmap=heatmap_dir is not None,
                                            method=method)}
            if heatmap_dir is not None:
                name = "+".join(Path(str(f)).stem for f in group.values()) or "breast"
                while name in used:
                    name += "_"
                used.add(name)
                res["heatmap"] = str(write_rgb_png(Path(heatmap_dir) / f"{name}_{method}.png", res["heatmap"]))
            results.append(res)
        except MammoLabError as exc:
            results.append({**base, "cc": str(group.get("CC")) if "CC" in group else None,
                            "mlo": str(group.get("MLO")) if "MLO" in group else None, "error": str(exc)})
    return results
