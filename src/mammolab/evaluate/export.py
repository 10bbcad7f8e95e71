"""``mammolab export``: a run as a self-contained model folder (ONNX or TorchScript, recipe, model card).

The folder holds everything a prediction needs and nothing of the training setup::

    DIR/model.onnx | model.pt   the network: a [N, 1, H, W] float image batch in, logits out
    DIR/recipe.json              the run's recipe (conversion, preprocessing, transform, classes, threshold)
    DIR/model_card.md / .json    data source and split sizes, metrics with CIs, threshold, recipe,
                                 intended use and the research-only notice

``mammolab predict DIR FILES`` (and :meth:`mammolab.infer.predictor.Predictor.load`) runs it with
the same recipe code as the run, so the probabilities match the run's (checked at export time on
a test input, and in the tests to 1e-4).

A two-view run (``--views cc+mlo``) exports its breast model: inputs ``x [N, 2, 1, H, W]`` (the
breast's CC then MLO image, each made by the recipe) and ``present [N, 2]`` float32 (1 = the view
is there; a missing view's slot holds the present view's image, as :mod:`mammolab.evaluate.breast`
fills it), logits out, dynamic batch. ``recipe.json`` says ``views: cc+mlo`` and the card states the
inputs, so ``predict DIR CC_FILE MLO_FILE --file-views cc+mlo`` and ``serve DIR`` run it as they run the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw, size_text
from mammolab.io.atomic import TEMP_SUFFIX, atomic_write_text, read_json, write_json

__all__ = ["FORMATS", "ExportResult", "export_run", "model_card", "preprocessing_spec"]

FORMATS = ("onnx", "torchscript")
NOTICE = ("Research software, not a medical device: not for diagnosis, screening or any clinical decision. "
          "Trained and evaluated on the data named below only.")


@dataclass
class ExportResult:
    """Where the export went and how closely the exported model matches the run's PyTorch model."""

    out: Path
    model_file: Path
    format: str
    max_abs_diff: float
    card: dict[str, Any]


def _atomic_file(path: Path, write: Any) -> None:
    from mammolab.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)


def _export_onnx(model: Any, example: Any, path: Path, opset: int) -> None:
    """``example``: one image batch, or ``(x, present)`` for a two-view model (inputs named x and present)."""
    import torch

    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before it fails deep inside)
    except ModuleNotFoundError as exc:
        raise MammoLabError(f"--format onnx needs the {exc.name} package",
                            hint="pip install 'mammolab[export]'") from None

    args, names = (tuple(example), ["x", "present"]) if isinstance(example, tuple) else ((example,), ["image"])

    def write(tmp: Path) -> None:
        import logging
        import warnings

        levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "onnxscript")}
        for n in levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    # The TorchScript-based exporter: ~5 s for these CNNs against 20-40 s for the dynamo one,
                    # the same logits (checked after export either way). Newer torch may drop it: then dynamo.
                    torch.onnx.export(model, args, str(tmp), input_names=names, output_names=["logits"],
                                      dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
                                      opset_version=opset, dynamo=False)
                except (TypeError, RuntimeError, AttributeError, NotImplementedError):
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(model, args, str(tmp), input_names=names, output_names=["logits"],
                                      dynamic_shapes=tuple({0: batch} for _ in names),
                                      opset_version=opset, dynamo=True, external_data=False, verbose=False)
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)

    _atomic_file(path, write)


def _export_torchscript(model: Any, example: Any, path: Path) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still what C++ loads
        traced = torch.jit.trace(model, example, check_trace=False)
    _atomic_file(path, lambda tmp: traced.save(str(tmp)))


def _metrics_summary(run_dir: Path) -> dict[str, Any]:
    """The internal test evaluation and every external one, as the card states them."""
    out: dict[str, Any] = {}
    eval_root = run_dir / "eval"
    if not eval_root.is_dir():
        return out
    for folder in sorted(p for p in eval_root.iterdir() if p.is_dir()):
        m = read_json(folder / "metrics.json")
        if not isinstance(m, dict) or "auc" not in m:
            continue
        entry: dict[str, Any] = {"split": m.get("split"), "n": m.get("n"), "n_patients": m.get("n_patients"),
                                 "external": bool(m.get("external", False)), "auc": m.get("auc")}
        if isinstance(m.get("dataset"), dict):
            entry["dataset"] = m["dataset"].get("name")
        ops = m.get("operating_points") or {}
        if "youden" in ops:
            op = ops["youden"]
            entry["at_threshold"] = {k: op.get(k) for k in ("threshold", "source", "sensitivity", "specificity",
                                                            "f1", "accuracy") if k in op}
        out[folder.name] = entry
    return out


def _two_view_card(recipe: Any, info: dict[str, Any]) -> dict[str, Any]:
    """What a two-view card adds: the views, the two inputs, and how many breasts training paired."""
    height, width = as_hw(recipe.transform.image_size)
    return {
        "views": "cc+mlo",
        "input": f"x [N, 2, 1, {height}, {width}] float32 (view order CC, MLO; each image made by the recipe) "
                 "and present [N, 2] float32 (1 = view present, 0 = missing; a missing view's slot holds the "
                 "present view's image)",
        "inputs": {"x": {"shape": ["N", 2, 1, height, width], "dtype": "float32", "views": ["CC", "MLO"]},
                   "present": {"shape": ["N", 2], "dtype": "float32", "meaning": "1 = view present, 0 = missing"}},
        "unit": "breast (patient_id + side): one probability from its CC and MLO images",
        "n_breasts": info.get("n_breasts"), "pairing": info.get("pairing"),
    }


# ----------------------------------------------------------------------------------------- the card's preprocessing

#: Where the card points a reader who wants the preprocessing as code rather than as words.
REFERENCE = ("mammolab-runtime (the light install: no torch; docs/guide/export.md, 'Light runtime'): "
             "`mammolab predict DIR FILE` and, in Python, `Predictor.load(DIR).prepare(image)` apply these "
             "steps; that code is the reference implementation of this section")

_READ = {
    "dicom": ("pydicom: pixel data decoded; if a Modality LUT Sequence or RescaleSlope/RescaleIntercept is present, "
              "pydicom.pixels.apply_modality_lut; then, if a VOI LUT Sequence or WindowCenter is present, "
              "pydicom.pixels.apply_voi_lut(index=0) (the first window); then the result v is stretched linearly "
              "to 16 bit: rint((v - min(v)) * 65535 / (max(v) - min(v))) as uint16 (all 0 when max == min); "
              "then MONOCHROME1 is inverted: 65535 - v"),
    "raster": ("PNG, JPEG, TIFF, PGM, BMP: cv2.imdecode(..., cv2.IMREAD_UNCHANGED), bit depth unchanged (8-bit "
               "stays uint8, 16-bit stays uint16); colour images become grey with cv2.cvtColor(COLOR_BGR2GRAY or "
               "COLOR_BGRA2GRAY); any other pixel type is stretched to uint16 as a DICOM is"),
    "output": "a 2-D uint8 or uint16 array",
}

_OP_RULES = {
    "resize": ("h, w = image shape; ratio = max(w / width, h / height) if keep_aspect else min(w / width, "
               "h / height); k = min(int(ratio), h, w); if k >= 2: drop the last h % k rows and w % k columns "
               "(h, w = h // k * k, w // k * k) and shrink first with cv2.resize(img, (w // k, h // k), "
               "interpolation=cv2.INTER_AREA); then with the trimmed h, w: keep_aspect: scale = min(width / w, "
               "height / h), nw = max(1, round(w * scale)), nh = max(1, round(h * scale)) (round half to even), "
               "else nw, nh = width, height; cv2.resize to (nw, nh) with INTER_AREA if nw or nh is smaller than the "
               "current image's side, else INTER_LINEAR; then bit_depth (8: uint16 -> v >> 8; 16: uint8 -> v * 257; "
               "null: unchanged); if (nw, nh) != (width, height): the image is placed on a height x width canvas of "
               "0 at x0 = (width - nw) // 2, y0 = (height - nh) // 2 (align center) or at 0, 0 (align start)"),
    "denoise": ("median: cv2.medianBlur(img, ksize) (uint16 with ksize > 5: scipy.ndimage.median_filter(img, "
                "size=ksize, mode='reflect')); gaussian: cv2.GaussianBlur(img, (ksize, ksize), sigma); bilateral: "
                "s = 255 (uint8) or 65535 (uint16), f = cv2.bilateralFilter(img.astype(float32) / s, ksize, "
                "sigma_color, sigma_space), out = clip(rint(f * s), 0, s) in the image's dtype"),
    "clahe": ("cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(img) at the image's "
              "current bit depth (uint8 or uint16, as the previous step left it; no conversion), then every pixel "
              "that was 0 before CLAHE is set back to 0"),
    "orient": ("k = max(1, ceil(max(h, w) / 512)); col = img[::k, ::k].astype(float64).sum(axis=0); half = "
               "len(col) // 2; the chest wall is on the left when col[:half].sum() >= col[len(col) - half:].sum(); "
               "if that side is not chest_wall: cv2.flip(img, 1)"),
    "crop_border": ("mode fixed: dx = round(w * margin), dy = round(h * margin), img[dy:h - dy, dx:w - dx]; mode "
                    "auto: the border found by mammolab.preprocess.ops.find_border on a 512 px thumbnail (an "
                    "algorithm, not a formula: use the reference implementation)"),
    "remove_annotations": ("the breast found by mammolab.preprocess.ops.breast_mask on a 512 px thumbnail is kept "
                           "and everything else set to 0 (an algorithm, not a formula: use the reference "
                           "implementation)"),
}


def preprocessing_spec(recipe: Any) -> dict[str, Any]:
    """Every step from a source file to the model's input tensor, precise enough to re-implement.

    The card of an older export listed the recipe's step names only, and a client following it was up
    to 95 grey levels off (the resize interpolation, the 16-to-8-bit rule, the padding value and the
    CLAHE implementation were not said); each rule here is the code's own (tests/runtime re-implement
    the steps from this dictionary alone and match the Predictor's input to 1e-6).
    """
    height, width = as_hw(recipe.transform.image_size)
    depth = recipe.source.bit_depth
    steps: list[dict[str, Any]] = []
    if recipe.source.kind == "roi":
        steps.append({"op": "roi_cut", "applies": "only when a lesion box x0,y0,x1,y1 is given (--box)",
                      "roi_size": recipe.source.roi_size, "roi_margin": recipe.source.roi_margin,
                      "roi_film_height": recipe.source.roi_film_height,
                      "rule": "the square patch organize cut, from the film as read (before bit_depth): cx, cy = "
                              "the box centre, longest = its longer side; side = ceil(longest * (1 + 2 * roi_margin)) "
                              "(roi_margin null: 0.5), or with roi_film_height: max(round(roi_size * film height / "
                              "roi_film_height), ceil(longest)); side = max(side, 8); the side x side square at "
                              "x = round(cx - side / 2), y = round(cy - side / 2), 0 outside the film; cv2.resize to "
                              "roi_size x roi_size (roi_size null: the model input's longer side) with INTER_AREA "
                              "when roi_size < side, else INTER_LINEAR"})
    steps.append({"op": "bit_depth", "bit_depth": depth,
                  "rule": {8: "uint16 -> uint8 by the top 8 bits: v >> 8 (floor(v / 256)); uint8 unchanged",
                           16: "uint8 -> uint16: v * 257 (255 -> 65535); uint16 unchanged",
                           None: "unchanged (the file's own depth)"}[depth]})
    pre = recipe.steps()
    if pre:
        steps.append({"op": "refuse_all_black", "rule": "an image without a non-zero pixel is refused (no prediction)"})
    from mammolab.preprocess.ops import OPS

    for step in pre:
        for name, params in step.items():
            # every parameter, defaults resolved: a client must not have to know MammoLab's defaults
            full = OPS[name].model_validate(params).model_dump(mode="json") if name in OPS else dict(params)
            steps.append({"op": name, "params": full, "rule": _OP_RULES.get(name, "see the reference")})
    t = recipe.transform
    steps.append({"op": "model_resize", "height": height, "width": width, "mode": t.resize,
                  "rule": ("h, w = image shape; stretch: th, tw = height, width; pad: scale = min(height / h, "
                           "width / w), th = min(height, max(1, round(h * scale))), "
                           "tw = min(width, max(1, round(w * scale))) (round half to even); if (th, tw) != (h, w): "
                           "cv2.resize(img, (tw, th), interpolation="
                           "cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR); pad: the result is placed on "
                           "a height x width canvas of 0 (the image's dtype) at y0 = (height - th) // 2, "
                           "x0 = (width - tw) // 2 (letterbox, the odd pixel at the bottom/right)")})
    steps.append({"op": "scale", "rule": "float32(v) / float32(255) for uint8, float32(v) / float32(65535) for uint16 "
                                         "(the dtype the image has after the steps above)"})
    steps.append({"op": "normalise", "mean": t.mean, "std": t.std, "rule": "(x - mean) / std in float32"})
    tensor: dict[str, Any] = {"shape": ["N", 1, height, width], "dtype": "float32", "layout": "NCHW, C-contiguous",
                              "channels": "1 (grey; not replicated: a model with an RGB stem takes the grey image "
                                          "as exported)"}
    if recipe.views:
        tensor["two_view"] = ("each view's image is made by these steps, then stacked as x [N, 2, 1, H, W] (CC, MLO) "
                              "with present [N, 2] float32; a missing view's slot holds the present view's image")
    return {
        "reference_implementation": REFERENCE,
        "read": dict(_READ),
        "steps": steps,
        "already_preprocessed": ("an image of the run's own training dataset went through the steps up to "
                                 "model_resize already: only model_resize, scale and normalise apply to it"),
        "input_tensor": tensor,
    }


def _preprocessing_lines(spec: dict[str, Any]) -> list[str]:
    """The card's preprocessing as numbered Markdown lines (one per step, the rule spelled out)."""
    lines = ["## Preprocessing, step by step (to re-implement it)", "",
             f"Reference implementation: {spec['reference_implementation']}.", "",
             f"- read, DICOM: {spec['read']['dicom']}", f"- read, other formats: {spec['read']['raster']}",
             f"- result: {spec['read']['output']}", ""]
    for i, st in enumerate(spec["steps"], 1):
        rest = {k: v for k, v in st.items() if k not in ("op", "rule", "applies")}
        what = f" {json.dumps(rest.get('params', rest), sort_keys=True)}" if rest else ""
        when = f" ({st['applies']})" if st.get("applies") else ""
        lines.append(f"{i}. `{st['op']}`{what}{when}: {st['rule']}")
    tensor = spec["input_tensor"]
    lines += ["", f"Model input: {tensor['shape']} {tensor['dtype']}, {tensor['layout']}; channels: "
              f"{tensor['channels']}" + (f"; two-view: {tensor['two_view']}" if tensor.get("two_view") else "")
              + f". {spec['already_preprocessed'][0].upper()}{spec['already_preprocessed'][1:]}.", ""]
    return lines


def model_card(run_dir: Path, recipe: Any, fmt: str, max_abs_diff: float) -> dict[str, Any]:
    """What a reader of the exported model needs to know, as data (the Markdown card is made from it)."""
    info = read_json(run_dir / "run.json") or {}
    card = {
        "name": recipe.name, "model": recipe.model, "format": fmt, "classes": recipe.classes,
        "output": ("one logit: P(" + recipe.classes[1] + ") = sigmoid(logit)") if recipe.num_outputs == 1
        else "one logit per class: probabilities = softmax(logits)",
        # [N, 1, height, width]: a rectangular run (e.g. whole films at 1152x896) states both sides
        "input": "[N, 1, {}, {}] float32, made by the recipe".format(*as_hw(recipe.transform.image_size)),
        "checkpoint": recipe.checkpoint,  # the run's weights this model holds (best.ckpt unless asked)
        "threshold": recipe.threshold, "threshold_source": recipe.threshold_source,
        "decision": (f"{recipe.classes[1]} when P({recipe.classes[1]}) >= threshold, else {recipe.classes[0]}"
                     if recipe.binary else "the class of the largest probability"),
        "mammolab_version": recipe.mammolab_version,
        "data": {"dataset": recipe.dataset.get("name"), "manifest_hash": recipe.dataset.get("manifest_hash"),
                 "kind": recipe.source.kind, "split_sizes": info.get("n_images"),
                 "source_stage": recipe.source.stage},
        "training": {k: info.get(k) for k in ("epochs_run", "best_epoch", "best_val_auc", "seed", "regime",
                                               "parameters") if k in info},
        "metrics": _metrics_summary(run_dir),
        "recipe": recipe.model_dump(mode="json", exclude={"views"}),
        # every step as a rule a client can re-implement (interpolation, bit depth, padding, CLAHE, tensor)
        "preprocessing": preprocessing_spec(recipe),
        "export_check": {"max_abs_diff_vs_pytorch": max_abs_diff},
        "intended_use": ("Research on breast-lesion classification: reproducing and comparing models on "
                         f"{recipe.source.kind} images prepared by the recipe in this folder."),
        "notice": NOTICE,
    }
    if recipe.views:  # a single-view card stays exactly as it was
        card["recipe"] = recipe.model_dump(mode="json")
        card.update(_two_view_card(recipe, info))
    return card


def _size_words(size: Any) -> str:
    """``224 px`` for a square (as cards always said), ``1152x896 px (height x width)`` for a rectangle."""
    text = size_text(size)
    return f"{text} px" if "x" not in text else f"{text} px (height x width)"


def _fmt_ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    ci = "" if d.get("ci_low") is None else f" (95% CI {d['ci_low']:.3f}-{d['ci_high']:.3f})"
    return f"{d['value']:.3f}{ci}"


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as a page."""
    r = card["recipe"]
    steps = [f"{name} {json.dumps(params, sort_keys=True)}" for st in r["preprocess"] for s in st["steps"]
             for name, params in s.items()]
    lines = [f"# Model card: {card['name']} ({card['model']})", "", f"> {card['notice']}", "",
             "## Model", "", f"- format: {card['format']}; input {card['input']}", f"- output: {card['output']}",
             *([f"- two-view breast model (views {card['views']}): one probability per breast from its CC and MLO "
                "images; `mammolab predict DIR CC_FILE MLO_FILE --file-views cc+mlo`, or `--file-views cc` / `mlo` "
                "for a breast filmed in one view"] if card.get("views") else []),
             f"- classes: {', '.join(card['classes'])}",
             *([f"- exported from the run's {card['checkpoint']}"] if card.get("checkpoint") else []),
             f"- operating threshold: {card['threshold']:.4f} ({card['threshold_source']})",
             f"- trained with MammoLab {card['mammolab_version']}; exported model vs PyTorch: max |difference| "
             f"{card['export_check']['max_abs_diff_vs_pytorch']:.2e} in the logits", "",
             "## Data", "", f"- dataset: {card['data']['dataset']} (manifest {card['data']['manifest_hash']}), "
             f"images: {card['data']['kind']}", f"- split sizes: {card['data']['split_sizes']}", "",
             "## Metrics", ""]
    if card["metrics"]:
        unit = "breasts" if card.get("views") else "images"
        lines += [f"| evaluation | {unit} (patients) | AUC | sensitivity / specificity at the threshold |",
                  "|---|---|---|---|"]
        for name, m in card["metrics"].items():
            op = m.get("at_threshold") or {}
            ss = (f"{_fmt_ci(op.get('sensitivity'))} / {_fmt_ci(op.get('specificity'))}"
                  if isinstance(op.get("sensitivity"), dict) else "")
            where = f"{name} (external: {m.get('dataset')})" if m.get("external") else name
            lines.append(f"| {where} | {m.get('n')} ({m.get('n_patients')}) | {_fmt_ci(m.get('auc'))} | {ss} |")
    else:
        lines.append("No evaluation yet (run 'mammolab evaluate RUN' before exporting).")
    lines += ["", "## Recipe (applied by `mammolab predict` to every input)", "",
              f"1. source: {r['source']['kind']} images, bit depth {r['source']['bit_depth'] or 'as read'}; "
              f"DICOM: {r['source']['dicom']}",
              "2. preprocessing: " + ("; ".join(steps) if steps else "none"),
              f"3. transform: resize to {_size_words(r['transform']['image_size'])} ({r['transform']['resize']}), "
              f"scale by the bit depth's range, normalise (mean {r['transform']['mean']}, "
              f"std {r['transform']['std']})", ""]
    if card.get("preprocessing"):  # cards written before it was recorded have the three lines above only
        lines += _preprocessing_lines(card["preprocessing"])
    lines += ["## Intended use", "", card["intended_use"], "", card["notice"], ""]
    return "\n".join(lines)


def _check_two_view(model: Any, exported: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Exported vs PyTorch logits on breasts with both views, CC only and MLO only (a batch of 4, not
    the traced 2), the missing slot filled with the present view's image as breast.py fills it."""
    import torch

    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (4, 2, 1, height, width)).astype(np.float32))
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.float32)
    x[1, 1], x[2, 0] = x[1, 0], x[2, 1]
    with torch.no_grad():
        ref = model(x, present.bool()).float().reshape(4, -1).numpy()
    return exported.backend.logits(x, present), ref


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx", *, checkpoint: str = "best",
               opset: int = 18, overwrite: bool = False) -> ExportResult:
    """Export a run to ``out`` (see the module docstring); ``overwrite`` replaces an earlier export there.

    The folder is built as a temporary sibling (``.<name>.<pid>.0.mammolab-tmp``), verified, given its
    completion marker ``export.json`` and only then renamed to ``out``: a killed export leaves no
    half folder under the final name (predict refuses a folder without the marker), and the re-run
    removes the killed one's temp folder.
    """

    if fmt not in FORMATS:
        raise MammoLabError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise MammoLabError(f"{run_dir}: not a training run (no config.yaml)")
    from mammolab.infer.views import is_two_view

    two_view = is_two_view(run_dir)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise MammoLabError(f"--out: {out} is inside the run {run_dir}; choose a folder outside it")
    _check_out(out, overwrite)
    from mammolab.io.lock import output_lock

    # The lock sits beside the folder (its own folder is swapped by a rename): .<name>.mammolab.lock
    with output_lock(out.parent, command=f"mammolab export {run_dir} --out {out}",
                     lock_file=out.parent / f".{out.name}.mammolab.lock"):
        _remove_stale_exports(out)  # the temp folders of exports killed before they were complete
        _check_out(out, overwrite)  # again, under the lock: another export may have finished meanwhile
        tmp = out.parent / f".{out.name}.{os.getpid()}.0{TEMP_SUFFIX}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            result = _export_into(run_dir, tmp, fmt, checkpoint=checkpoint, opset=opset, two_view=two_view)
            _swap_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result.out, result.model_file = out, out / result.model_file.name
    return result


#: What an export folder may hold: replaced by --overwrite, anything else is the user's and refused.
_EXPORT_NAMES = {"model.onnx", "model.pt", "recipe.json", "model_card.md", "model_card.json", "export.json"}


def _check_out(out: Path, overwrite: bool) -> None:
    from mammolab.io.atomic import temp_files

    if out.exists() and not out.is_dir():
        raise MammoLabError(f"--out: {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    temps = set(temp_files(out))
    foreign = [p.name for p in out.iterdir() if p.name not in _EXPORT_NAMES and p not in temps]
    if foreign:
        raise MammoLabError(f"--out: {out} is not empty and not an export folder (it holds {foreign[0]}); "
                            "choose another folder")
    if not overwrite:
        raise MammoLabError(f"--out: {out} is not empty; pass --overwrite to replace the export there")


def _remove_stale_exports(out: Path) -> None:
    """Temp folders ``.<name>.<pid>.<n>.mammolab-tmp`` beside ``out`` whose export process is gone."""
    import re

    from mammolab.io.atomic import pid_alive

    pattern = re.compile(r"^\." + re.escape(out.name) + r"\.(\d+)\.\d+" + re.escape(TEMP_SUFFIX) + "$")
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out`` (same parent: never across file systems); an earlier
    export there is moved aside first and removed after, so ``out`` is always a complete export or absent."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{os.getpid()}.1{TEMP_SUFFIX}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    os.rename(tmp, out)
    with contextlib.suppress(OSError):  # make the renames durable (the folder entry itself)
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(run_dir: Path, out: Path, fmt: str, *, checkpoint: str, opset: int, two_view: bool) -> ExportResult:
    """The export itself, into the (temporary) folder ``out``; its marker is written last, once verified."""
    import torch

    from mammolab.infer.predictor import EXPORT_FILES, EXPORT_MARKER, Predictor
    from mammolab.io.atomic import ensure_writable_dir
    from mammolab.recipe import write_recipe

    ensure_writable_dir(out)
    predictor = Predictor.load(run_dir, checkpoint=checkpoint, device="cpu")
    recipe = predictor.recipe.model_copy(update={"checkpoint": predictor.checkpoint})
    if two_view:  # the exported folder must say it holds a breast model (is_two_view reads this)
        recipe = recipe.model_copy(update={"views": "cc+mlo"})
    model = predictor.model.cpu().eval()
    height, width = as_hw(recipe.transform.image_size)
    example: Any = torch.zeros(2, 1, height, width)
    if two_view:  # traced once; dynamic batch, any present pattern (the graph has no branch on it)
        example = (torch.zeros(2, 2, 1, height, width), torch.ones(2, 2))
    model_file = out / EXPORT_FILES[fmt]
    try:
        if fmt == "onnx":
            _export_onnx(model, example, model_file, opset)
        else:
            _export_torchscript(model, example, model_file)
    except MammoLabError:
        raise
    except Exception as exc:  # an exporter failure on some model: say which, keep the traceback's gist
        raise MammoLabError(f"export of {recipe.model} to {fmt} failed ({exc.__class__.__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200]})") from None
    write_recipe(out, recipe)
    # Check the exported model against PyTorch on a varied input before declaring success.
    if two_view:
        got, ref = _check_two_view(model, Predictor.load(out, require_marker=False), height, width)
    else:
        check = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (3, 1, height, width)).astype(np.float32))
        with torch.no_grad():
            ref = model(check).float().reshape(3, -1).numpy()
        exported = Predictor.load(out, require_marker=False)
        got = exported.backend.logits(check)
    diff = float(np.abs(got - ref).max())
    if not diff <= 1e-3:
        raise MammoLabError(f"{model_file}: the exported model differs from the run's by {diff:.2e} in the logits; "
                            "try the other --format")
    card = model_card(run_dir, recipe, fmt, diff)
    write_json(out / "model_card.json", card)
    atomic_write_text(out / "model_card.md", card_markdown(card))
    import mammolab

    write_json(out / EXPORT_MARKER, {"complete": True, "format": fmt, "model_file": model_file.name,
                                     "checkpoint": predictor.checkpoint, "run": str(run_dir.resolve()),
                                     "max_abs_diff_vs_pytorch": diff,
                                     "mammolab_version": getattr(mammolab, "__version__", "?")})
    return ExportResult(out, model_file, fmt, diff, card)
