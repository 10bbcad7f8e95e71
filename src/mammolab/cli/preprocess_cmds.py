"""CLI commands of the preprocessing stage: ``preprocess`` and ``augment``."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import bit_depth_option, workers_option
from mammolab.errors import MammoLabError


def _parse_size(value: str | None) -> tuple[int, int] | None:
    """``HEIGHTxWIDTH`` or a single number for a square."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", value)
    if not m:
        raise MammoLabError(f"--size: expected HEIGHTxWIDTH (e.g. 1024x640) or one number, got {value!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


@app.command(
    epilog="Example: mammolab preprocess data/mass-full --out data/mass-full-pp --preview 4\n\n"
           "Config file: a YAML with 'steps:' as a list of '- name: {parameter: value}' in the order to run, e.g. "
           "'- crop_border: {mode: fixed, margin: 0.05}'. Steps: crop_border (mode auto|fixed, margin, max_fraction, "
           "bright_level, edge_fraction), remove_annotations (kernel, grow, fill_holes, crop_to_breast, "
           "crop_margin), orient (chest_wall left|right), resize (height, width, keep_aspect, align center|start, "
           "bit_depth 8|16|null), denoise (method gaussian|median|bilateral, ksize, sigma, sigma_color, "
           "sigma_space), clahe (clip_limit, tile_grid). Also 'png: fast|stored' (stored: uncompressed, fastest to "
           "read; for full-size outputs) and 'png_compression: 0-9' (a zlib level instead).",
)
def preprocess(
    dataset: Path = typer.Argument(
        ..., help="Dataset folder to read (made by 'mammolab organize': manifest.csv + images). Never modified."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output dataset folder: same layout, updated manifest.csv (boxes, masks, sizes "
                                 "moved with the image), preprocess.yaml, mammolab.json, quality_report.json/.md. "
                                 "Re-runs skip images already done with the same config."),
    config: str | None = typer.Option(
        None, "--config", "-c", help="A YAML file with the steps (see below), or a shipped preset: 'full' (whole "
                                     "mammograms: crop_border, remove_annotations, orient, resize 1024x640 8-bit, "
                                     "median denoise, CLAHE) or 'patch' (lesion crops: resize 512x512, denoise, "
                                     "CLAHE). Default: 'patch' for crop/ROI datasets, else 'full'."),
    workers: int | None = workers_option(help="Parallel worker processes, one image each: 1 or more, capped at "
                                         "the cores. [default: all cores]"),
    preview: int = typer.Option(
        0, "--preview", help="Also write OUT/preview.png: a contact sheet of N images, one column per step "
                             "(input first; lesion boxes red, masks green), to check each step at a glance."),
    size: str | None = typer.Option(
        None, "--size", help="Override the resize step's target as HEIGHTxWIDTH (e.g. 512x320) or one number "
                             "for a square (adds a resize step when the config has none): the size of the "
                             "written images (experiment YAML preprocess.size), not the model's input (train "
                             "--image-size)."),
    bit_depth: int | None = bit_depth_option("Override the bit depth of the written images (the resize step's): "
                                             "8 or 16."),
) -> None:
    """Preprocess every image of a dataset in one pass: read once, all steps in memory, write once.

    Steps, their order and parameters come from --config (or the shipped preset); the resolved config and its hash are saved beside the output. Images that cannot be processed (unreadable, all black) are skipped with the reason in OUT/quality_report.md and listed at the end; the run goes on.
    """  # noqa: E501
    from mammolab.preprocess.pipeline import preprocess as run_preprocess
    from mammolab.preprocess.pipeline import summary_lines
    from mammolab.progress import console

    result = run_preprocess(dataset, out, config, workers=workers, preview=preview, size=_parse_size(size),
                            bit_depth=bit_depth)
    for line in summary_lines(result):
        console.print(line, highlight=False)


@app.command(epilog="Example: mammolab augment data/mass-full-pp --out data/mass-full-pp-aug")
def augment(
    dataset: Path = typer.Argument(..., help="Dataset folder to read (manifest.csv + images). Never modified."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output dataset folder: augmented train split, val/test copied unchanged, "
                                 "manifest.csv with columns 'augment' and 'source_path'."),
    transforms: str | None = typer.Option(
        None, "--transforms", help="Comma-separated copies to write per image: original, hflip, vflip, "
                                   "rotate_pos, rotate_neg (default: all five)."),
    angle: float | None = typer.Option(
        None, "--angle", help="Rotation angle in degrees for rotate_pos/rotate_neg (default: 15)."),
    splits: str | None = typer.Option(
        None, "--splits", help="Comma-separated splits to augment; others are copied as they are (default: train)."),
    workers: int | None = workers_option(),
) -> None:
    """Offline augmentation as in the classic recipe: original, flips and +-15 degree rotations of each training image.

    Lesion masks and boxes move with every copy; val and test are copied unchanged. Training augments online by default; use this for parity with published offline-augmentation results.
    """  # noqa: E501
    from mammolab.preprocess.augment import augment as run_augment
    from mammolab.progress import console

    def _list(value: str | None) -> list[str] | None:
        return None if value is None else [v.strip() for v in value.split(",") if v.strip()]

    result = run_augment(dataset, out, workers=workers, transforms=_list(transforms), angle=angle,
                         splits=_list(splits))
    console.print(f"augmented dataset written to {result.out}  ({len(result.manifest)} images; "
                  f"{result.written} source images written, {result.reused} reused)", highlight=False)
    for path, msg in result.skipped:
        console.print(f"  skipped {path}: {msg}", highlight=False)
