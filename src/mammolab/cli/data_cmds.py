"""CLI commands of the data stage: ``synth`` and ``organize``."""

from __future__ import annotations

from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import workers_option

# ------------------------------------------------------------------------------------------ synth


@app.command(epilog="Example: mammolab synth raw --patients 40 --film-height 1024 --layout nbia")
def synth(
    out: Path = typer.Argument(..., help="Folder to create (or an empty one): receives download/ (the DICOM "
                               "tree), csv/ (the four case-description CSVs), README.txt and synth.json."),
    patients: int = typer.Option(40, "--patients", help="Number of patients (at least 6). Each has lesions in "
                                 "one or both breasts, every lesion in CC and MLO views; about 20% of "
                                 "patients form the official test split."),
    film_height: int = typer.Option(1024, "--film-height", help="Height in pixels of each full mammogram "
                                    "(width is 0.6x); from 128 to 8192. Not a model's input size (train "
                                    "--image-size)."),
    layout: str = typer.Option("legacy", "--layout", help="Download layout to imitate: 'legacy' (older NBIA: "
                               "<case>/<date-DDSM-n>/<1-description-n>/000000.dcm) or 'nbia' (current NBIA Data "
                               "Retriever: CBIS-DDSM/<case>/.../1-1.dcm plus download/metadata.csv)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same arguments always give the same bytes."),
    workers: int | None = workers_option(help="Worker processes rendering images in parallel: 1 or more, capped "
                                         "at the cores; the output does not depend on it. [default: all cores]"),
    difficulty: str = typer.Option("easy", "--difficulty", help="easy (default: clearly distinct classes), "
                                   "medium or hard: smaller, fainter lesions whose benign and malignant looks "
                                   "overlap, with partly independent evidence in the CC and MLO views."),
) -> None:
    """Write a synthetic CBIS-DDSM-shaped download (DICOMs + official-style CSVs) to try the pipeline on.

    It reproduces the real download's structure and quirks (UID paths, CRLF, embedded newlines, crop
    and mask sharing a series in either order, CSV rows naming the wrong mask file) with lesions
    whose look depends on pathology, so trained models learn something. Re-running with the same
    arguments skips a complete output; a non-empty OUT made otherwise is refused.
    """
    from mammolab.data.synth import synthesize
    from mammolab.progress import console

    result = synthesize(out, patients=patients, image_size=film_height, layout=layout, seed=seed, workers=workers,
                        difficulty=difficulty)
    verb = "already complete, skipped" if result.skipped else "wrote"
    say = {"soft_wrap": True, "highlight": False}  # keep paths and the command on one copyable line
    console.print(f"synth: {verb} {result.images} full mammograms and {result.rois} ROI series "
                  f"({result.files} DICOM files) under {result.download_dir}", **say)
    console.print(f"CSVs: {result.csv_dir}" + (f"; NBIA metadata: {result.metadata}" if result.metadata else ""),
                  **say)
    console.print(f"next: {result.organize_command()}", **say)
