"""CLI commands of the evaluation stage: ``evaluate``, ``compare``, ``explain``, ``predict`` and ``export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import check_split, checkpoint_option, overwrite_option, split_option, tta_option

_SAY = {"soft_wrap": True, "highlight": False}  # paths stay on one copyable line


@app.command(epilog="Example: mammolab evaluate runs/r18 --split test --tta\n\nExternal validation: mammolab "
                    "evaluate runs/r18 --dataset data/inbreast-pp")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by 'mammolab train' (config.yaml, checkpoints/)."),
    split: str = split_option(help="Split to evaluate: test, val or train; all (every image) only with "
                              "--dataset."),
    dataset: Path | None = typer.Option(None, "--dataset", help="External validation: another organized dataset "
                                        "(CBIS-DDSM or organize --manifest); the run's recipe is applied to its "
                                        "images and the result goes to RUN/eval/<dataset>-<split>/."),
    tta: bool = tta_option(help="Flip test-time augmentation: average the probabilities of the image and its "
                           "horizontal and vertical flips (written to eval/<split>-tta/)."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples (of patients) for the 95% confidence "
                               "intervals."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the bootstrap."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per prediction batch."),
    overwrite: bool = overwrite_option("Redo an evaluation that is already up to date."),
    checkpoint: str = checkpoint_option(),
) -> None:
    """Score a run on a split: per-image predictions (CSV), metrics (JSON) and figures, inside the run.

    Metrics: AUC with a 95% patient-level bootstrap CI; accuracy, precision, sensitivity, specificity
    and F1 at 0.5 and at the Youden threshold chosen on the validation split (each with its CI);
    confusion matrices; ROC and precision-recall curves; calibration (reliability diagram, Brier
    score); results per view, density and abnormality type. 4-class runs: per-class, micro and macro AUC.
    """
    from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
    from mammolab.progress import console

    check_split(split, all_ok=dataset is not None, where=" without --dataset")
    folder = evaluate_run(run, split, tta, n_boot=n_boot, seed=seed, batch_size=batch_size, force=overwrite,
                          dataset=dataset, checkpoint=checkpoint)
    metrics, _ = load_evaluation(run, split, tta, dataset=dataset)
    auc = metrics["auc"]
    ci = "" if auc.get("ci_low") is None else f" [95% CI {auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"
    what = "AUC" if metrics["task"] == "binary" else "macro AUC"
    value = "n/a" if auc.get("value") is None else f"{auc['value']:.3f}"
    where = f"external dataset {metrics['dataset']['name']}, {split}" if metrics.get("external") else f"{split} split"
    console.print(f"evaluate: {where}, n={metrics['n']} images of {metrics['n_patients']} patients: "
                  f"{what} {value}{ci}", **_SAY)
    for note in metrics.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", **_SAY)
    warned = (metrics.get("warnings") or {}).get("n")
    if warned:
        console.print(f"[yellow]warning:[/] {warned} image(s) outside the run's recipe, e.g. "
                      f"{metrics['warnings']['first'][0]}", **_SAY)
    if metrics["task"] == "binary":
        op = metrics["operating_points"]["youden"]
        where = (f"fallback threshold {op['threshold']:.3f} ({op['source'].removeprefix('fallback 0.5: ')})"
                 if op.get("fallback") else f"Youden threshold {op['threshold']:.3f} (chosen on {op['source']})")
        console.print(f"at {where}: sensitivity "
                      f"{op['sensitivity']:.3f}, specificity {op['specificity']:.3f}, F1 {op['f1']:.3f}", **_SAY)
    console.print(f"results: {folder}", **_SAY)


@app.command(epilog="Example: mammolab compare runs/* --out report   (then open report/report.html)")
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders to compare (evaluated first if needed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.html (self-contained, opens offline), "
                             "comparison.csv, comparison.md and roc_overlay.png."),
    split: str = split_option(help="Split whose evaluation is compared: test, val or train."),
) -> None:
    """Compare runs in one HTML report plus comparison.csv and a Markdown table.

    Every run with its model, regime, parameters, epochs, training time, throughput and every metric
    with its 95% CI, sorted by AUC; ROC curves overlaid; training curves; confusion matrices; a
    DeLong test of each run's AUC against the best; localisation scores where 'mammolab explain' ran.
    """
    from mammolab.evaluate.report import compare_runs
    from mammolab.progress import console

    paths = compare_runs(runs, out, split=check_split(split, all_ok=False))
    console.print(f"compare: {len(runs)} run(s); table: {paths['csv']}  markdown: {paths['markdown']}", **_SAY)
    console.print(f"report: {paths['html']}", **_SAY)


@app.command(epilog="Example: mammolab explain runs/r18 --split test --method gradcam --out "
                    "runs/r18/explain/test-gradcam")
def explain(
    run: Path = typer.Argument(..., help="Run folder written by 'mammolab train'."),
    images: list[Path] | None = typer.Argument(None, help="Image files to explain (default: every image of "
                                                "--split). Images of the run's dataset get their lesion box."),
    split: str = split_option(help="Split to explain when no IMAGE is given: test, val or train."),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++ (pytorch-grad-cam, last feature "
                               "map) or occlusion (batched grey patches on a coarse grid)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for overlays/*.png, localisation.csv and "
                             "localisation.json."),
    grid: int = typer.Option(8, "--grid", help="Occlusion grid: cells per side (the cost is grid x grid "
                             "forward passes per image)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Pointing game: pixels by which lesion boxes are "
                                    "grown before testing the hottest pixel."),
    target: str = typer.Option("true", "--target", help="Class each heatmap explains: 'true' (the image's label, "
                               "as in the pointing game; images without one get their predicted class), "
                               "'predicted', or a class name such as 'malignant'."),
    layer: str | None = typer.Option(None, "--layer", help="Grad-CAM layer, by module name (e.g. body.layer4); "
                                     "default: the last feature map with at least 4x4 cells."),
    limit: int | None = typer.Option(None, "--limit", help="Explain only this many images of --split (classes "
                                     "interleaved), for a quick look at a large split."),
    tta: bool = tta_option(help="Flip test-time augmentation: each image's probability, and so the predicted "
                           "class explained, averages the image and its horizontal and vertical flips (the "
                           "heatmap is of the image itself)."),
    overwrite: bool = overwrite_option("Redo an explanation that is already up to date."),
    checkpoint: str = checkpoint_option(),
) -> None:
    """Heatmaps of where the model looks: each overlay beside the plain image, lesion box drawn on top.

    Over a split it also scores localisation: the share of heatmap energy inside the lesion box
    (with the box-area share as the no-skill baseline) and the pointing-game hit rate; the summary
    is stored in the run, so 'mammolab compare' shows it.
    """
    from mammolab.explain.runner import explain_run
    from mammolab.progress import console

    s = explain_run(run, images or None, split=check_split(split, all_ok=False), method=method, out_dir=out,
                    grid=grid, batch_size=batch_size, tolerance=tolerance, force=overwrite, target=target,
                    layer=layer, limit=limit, checkpoint=checkpoint, tta=tta)
    for err in s.get("errors", []):
        console.print(f"[yellow]skipped[/] {err['error']}", **_SAY)
    line = f"explain ({method}): {s['n_images']} image(s), overlays in {s['overlays']}"
    if s.get("n_breasts") is not None:  # a two-view run: one figure per breast, localisation per view
        line = (f"explain ({method}): {s['n_breasts']} breast(s), {s['n_images']} view image(s), "
                f"figures in {s['overlays']}")
    if s.get("energy_in_box_mean") is not None:
        line += (f"; {s['n_with_box']} with a lesion box: energy in box {s['energy_in_box_mean']:.3f} (box area "
                 f"{s['box_area_fraction_mean']:.3f}), pointing game {s['pointing_game_hit_rate']:.3f}")
    if s.get("n_blank"):
        line += f"; {s['n_blank']} blank map(s) (no positive evidence for the class explained; try gradcam++)"
    console.print(line, **_SAY)


@app.command(epilog="Examples: mammolab predict runs/r18 scan1.dcm scan2.png --json --heatmap heatmaps/\n\n"
             "Two-view run, one breast: mammolab predict runs/e3-2v left_cc.dcm left_mlo.dcm --file-views "
             "cc+mlo\n\nTwo-view run, a breast filmed in CC only: mammolab predict runs/e3-2v right_cc.dcm "
             "--file-views cc")
def predict(
    run: Path = typer.Argument(..., help="Run folder written by 'mammolab train', or a folder from 'mammolab export'."),
    files: list[Path] = typer.Argument(..., help="Image files: DICOM, PNG, JPEG, TIFF or PGM (8 or 16 bit). With "
                                       "--file-views: each breast's files in that order (CC_FILE MLO_FILE ...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout instead of a table."),
    heatmap: Path | None = typer.Option(None, "--heatmap", help="Folder to save a heatmap overlay per file (with "
                                        "--file-views: one figure per breast, CC and MLO maps side by side)."),
    method: str = typer.Option("gradcam", "--method", help="Heatmap method for --heatmap: gradcam, gradcam++ or "
                               "occlusion."),
    threshold: str = typer.Option("recipe", "--threshold", help="Binary runs: P(malignant) at or above which a "
                                  "file is called malignant: 'recipe' (the run's operating point: Youden on "
                                  "validation once evaluated, else 0.5), 'youden' or a number."),
    box: str | None = typer.Option(None, "--box", help="ROI-patch models: x0,y0,x1,y1 of the lesion in a whole "
                                   "film (pixels, right/bottom exclusive); the patch is cut as organize cut it."),
    tta: bool = tta_option(),
    views: str | None = typer.Option(None, "--file-views", help="Two-view (train --views cc+mlo) runs: the views "
                                     "of each breast's FILES, in order: cc+mlo (CC_FILE MLO_FILE per breast), or "
                                     "cc / mlo for a breast filmed in one view (predicted as training handles a "
                                     "missing view; the result says which). One result per breast."),
    checkpoint: str = checkpoint_option(),
) -> None:
    """Probability of malignancy and predicted class for each file, through the run's recipe.

    RUN is a run folder or a folder made by 'mammolab export'. Each file (a source DICOM or an
    organized image) gets organize's conversion, the dataset's preprocessing and the training
    transform, so it gets the probability evaluation gave it. Unreadable or unsupported files get
    one clear line each and the rest are still predicted; the exit code is 1 when any file failed.
    An input that looks outside the recipe (a whole film given to a patch model) is predicted
    with a warning. A two-view run scores breasts: give --file-views and each breast's files in that
    order; each file goes through the same recipe, and the breast gets one probability.
    """
    from rich.table import Table

    from mammolab.evaluate.predict import predict_files
    from mammolab.progress import console
    from mammolab.recipe import parse_box

    if views is not None:
        from mammolab.errors import MammoLabError
        from mammolab.evaluate.breast import predict_breast_files

        if box is not None:
            raise MammoLabError("--box: not available with --file-views (two-view breast predictions)")
        results = predict_breast_files(run, files, views, threshold=threshold, tta=tta, heatmap_dir=heatmap,
                                       method=method, checkpoint=checkpoint)
    else:
        results = predict_files(run, files, heatmap_dir=heatmap, method=method, threshold=threshold, tta=tta,
                                box=parse_box(box), checkpoint=checkpoint)
    failed = [r for r in results if "error" in r]
    for r in failed:
        console.print(f"[bold red]error:[/] {r['error']}", **_SAY)
    for r in results:
        for w in r.get("warnings", []):
            console.print(f"[yellow]warning:[/] {r['path']}: {w}", **_SAY)
    if as_json:
        payload = [{**r, "warning": "; ".join(r["warnings"]) if r.get("warnings") else None}
                   if "error" not in r else r for r in results]
        # allow_nan=False: a NaN is invalid JSON; the predictor turns one into an error before this
        sys.stdout.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    else:
        used = next((r.get("checkpoint") for r in results if r.get("checkpoint")), None)
        table = Table(title=f"predictions of {run}" + (f" ({used})" if used else ""), title_justify="left")
        extra = (("heatmap",) if heatmap else ()) + (("views",) if views else ())
        for col in ("file", "P(malignant)", "class") + extra:
            table.add_column(col, overflow="fold")
        for r in results:
            if "error" in r:
                continue
            row = [r["path"], f"{r['prob']:.4f}", r["class"]] + ([r.get("heatmap", "")] if heatmap else [])
            row += [r["views"] + (f" ({r['missing_view']} missing)" if r["missing_view"] else "")] if views else []
            table.add_row(*row)
        from rich.console import Console

        Console(soft_wrap=True).print(table)
    if failed:
        raise typer.Exit(1)


@app.command(epilog="Example: mammolab export runs/r18 --format onnx --out models/r18")
def export(
    run: Path = typer.Argument(..., help="Run folder written by 'mammolab train' (evaluate it first: the card "
                               "quotes its metrics and the recipe carries its validation threshold)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (needs the export extra: onnx, onnxscript, "
                            "onnxruntime) or torchscript."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for model.onnx or model.pt, recipe.json, "
                             "model_card.md and model_card.json."),
    checkpoint: str = checkpoint_option(help="best (default; a run without best.ckpt is refused) or last; the "
                                         "card and recipe name the checkpoint exported."),
    overwrite: bool = overwrite_option("Replace an earlier export in --out."),
) -> None:
    """A self-contained model folder: the network, its recipe and a model card.

    'mammolab predict OUT FILES' runs it with the same recipe as the run (the same probabilities);
    the exported network is checked against the run's PyTorch model before the command succeeds.
    A two-view (train --views cc+mlo) run exports its breast model (inputs x [N, 2, 1, H, W], CC then
    MLO, and present [N, 2]): 'mammolab predict OUT CC_FILE MLO_FILE --file-views cc+mlo', or 'mammolab
    serve OUT'.
    """
    from mammolab.evaluate.export import export_run
    from mammolab.progress import console

    res = export_run(run, out, fmt, checkpoint=checkpoint, overwrite=overwrite)
    console.print(f"export ({res.format}): {res.model_file}; max |logit difference| vs PyTorch "
                  f"{res.max_abs_diff:.1e}", **_SAY)
    console.print(f"model card: {res.out / 'model_card.md'}", **_SAY)
