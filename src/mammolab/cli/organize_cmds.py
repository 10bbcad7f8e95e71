"""CLI command ``mammolab organize``: a raw download (or any image list) to a dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import bit_depth_option, overwrite_option, workers_option


@app.command(
    epilog="Example: mammolab organize ~/CBIS-DDSM --csv-dir ~/cbis-csv --out data/mass-crop --kind crop\n\n"
           "Other datasets: mammolab organize --manifest images.csv --out data/mine --kind roi --roi-size 256",
)
def organize(
    download: Path | None = typer.Argument(
        None, help="Root of the CBIS-DDSM download (the folder holding Mass-Training_P_..., Calc-Test_P_... "
                   "folders, or NBIA's CBIS-DDSM folder). Read only: nothing under it is ever written."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder (created; re-runs resume in it)."),
    csv_dir: Path | None = typer.Option(
        None, "--csv-dir", help="Folder with the official case-description CSVs "
                                "({mass,calc}_case_description_{train,test}_set.csv)."),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="Instead of CBIS-DDSM: a UTF-8 CSV with columns path, label, patient_id and "
                                 "optional split, mask, bbox_x0, bbox_y0, bbox_x1, bbox_y1 (pixels, right/bottom "
                                 "exclusive), one row per image or per lesion (DICOM/PNG/JPEG/TIFF/PGM, 8 or 16 bit; "
                                 "relative paths are relative to the CSV). --kind, --roi-size and --roi-margin apply; "
                                 "the default kind is full."),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="NBIA Data Retriever metadata.csv (optional; used to map folders to series UIDs)."),
    abnormality: str | None = typer.Option(
        None, "--abnormality", help="Which lesions: mass, calc or all. [default: mass]"),
    labels: str | None = typer.Option(
        None, "--labels", help="binary (benign/malignant) or 4class (benign/malignant x mass/calc). "
                               "[default: binary]"),
    bwc: str | None = typer.Option(
        None, "--bwc", help="BENIGN_WITHOUT_CALLBACK rows: 'benign' (count as benign) or 'drop'. [default: benign]"),
    kind: str | None = typer.Option(
        None, "--kind", help="full: whole mammogram, malignant if any abnormality on it is; crop: the CBIS "
                             "cropped lesion (with --manifest: the lesion box cut from the image); roi: a square "
                             "patch cut around the lesion mask's box with context (--roi-size, --roi-margin). "
                             "[default: crop; full with --manifest]"),
    roi_size: int | None = typer.Option(
        None, "--roi-size", help="Side in pixels of the saved ROI patch (--kind roi). [default: 512]"),
    roi_margin: float | None = typer.Option(
        None, "--roi-margin", help="Context around the lesion box, as a fraction of its size per side "
                                   "(--kind roi). [default: 0.5]"),
    roi_film_height: int | None = typer.Option(
        None, "--roi-film-height", help="Cut every ROI patch at one scale (--kind roi): the film's when resized "
        "to this height, the input height of the whole-image model it will start (e.g. 1152 with --roi-size 224: "
        "Shen et al.'s patches for --init-from). [default: off, the box plus --roi-margin]"),
    roi_background: int | None = typer.Option(
        None, "--roi-background", help="Also cut up to N patches of normal tissue per film (--kind roi, needs "
        "--roi-film-height: same scale as the lesion patches), class 'normal', inside the breast and away from "
        "every lesion of the film: a patch classifier learns 'no lesion here' (Shen et al.). 0 to 50. [default: 0]"),
    val_fraction: float | None = typer.Option(
        None, "--val-fraction", help="Share of the official training split held out for validation, by patient. "
                                     "[default: 0.2]"),
    folds: int | None = typer.Option(
        None, "--folds", help="Patient-grouped cross-validation folds over the training rows (column 'fold'). "
                              "[default: 5]"),
    bit_depth: int | None = bit_depth_option("Bit depth of the written images: 16 (keeps the DICOM dynamic range) "
                                             "or 8. [default: 16]"),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the split. [default: 0]"),
    png: str | None = typer.Option(
        None, "--png", help="PNG encoding of the images: 'stored' (uncompressed, as large as the DICOM pixels, "
                            "about 5x faster to read in every later pass) or 'fast' (compressed, ~20% smaller on "
                            "16-bit films). Same pixels either way. [default: stored]"),
    allow_degenerate: bool = typer.Option(
        False, "--allow-degenerate", help="Go on when the validation or test split has no image of a class "
                                          "(refused by default: its AUC and Youden threshold are undefined)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file with any of the options above (command-line options win)."),
    workers: int | None = workers_option(),
    overwrite: bool = overwrite_option("Redo an output folder made with other options (only its own files are "
                                       "replaced)."),
) -> None:
    """Turn a raw CBIS-DDSM download (DICOM + the four CSVs) into a clean, patient-split dataset.

    Writes OUT/{train,val,test}/{benign,malignant}/*.png, OUT/manifest.csv (one row per image: split, fold,
    label, patient, view, lesion box ...), OUT/quality_report.json/.md and OUT/mammolab.json. The official
    test split is kept as published; validation is carved from training by patient; patient overlap is
    checked on every run. Re-running resumes and skips finished images.
    """
    from mammolab.data.organize import organize as run_organize
    from mammolab.data.organize import summary_lines
    from mammolab.progress import console

    options = {"abnormality": abnormality, "labels": labels, "bwc": bwc, "kind": kind, "roi_size": roi_size,
               "roi_margin": roi_margin, "roi_film_height": roi_film_height, "roi_background": roi_background,
               "val_fraction": val_fraction,
               "folds": folds, "bit_depth": bit_depth,
               "seed": seed, "png": png, "allow_degenerate": True if allow_degenerate else None}
    if manifest is not None:
        for name in ("abnormality", "bwc"):
            if options[name] is not None:
                raise typer.BadParameter(f"--{name.replace('_', '-')} applies to CBIS-DDSM, not to --manifest")
            options.pop(name)
    result = run_organize(download, out=out, csv_dir=csv_dir, manifest=manifest, config=config,
                          metadata=metadata, workers=workers, overwrite=overwrite, **options)
    for line in summary_lines(result):
        console.print(line, highlight=False)
