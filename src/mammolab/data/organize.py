"""Turn a raw CBIS-DDSM download (or any lab's image list) into a clean, leak-free dataset folder.

:func:`organize` is the one entry point, as the CLI exposes it: a CBIS-DDSM download with its CSVs
goes to :mod:`mammolab.data.cbis_import`, a CSV listing any images goes to
:mod:`mammolab.data.manifest_import`. Both plan first (labels, splits, every check) and then process
units in parallel, writing through the same pieces: :mod:`mammolab.data.patches` (patch cutting and
bit depth), :mod:`mammolab.data.output` (records, manifest, quality report) and
:mod:`mammolab.data.options` (the options they share).

The names other code imports from here (``OrganizeConfig``, ``ImportConfig``, ``organize_cbis``,
``organize_manifest``, ``OrganizeResult``, ``summary_lines``...) are re-exported, so this module stays
the public face of the data stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mammolab.config import load_config
from mammolab.data.cbis_import import OrganizeConfig, organize_cbis, plan_cbis, process_unit
from mammolab.data.manifest_import import ImportConfig, organize_manifest
from mammolab.data.output import WORK_DIR, OrganizeResult, content_duplicates, quality_markdown, summary_lines
from mammolab.errors import MammoLabError
from mammolab.io.lock import current_command, output_lock
from mammolab.progress import resolve_workers

__all__ = ["WORK_DIR", "ImportConfig", "OrganizeConfig", "OrganizeResult", "content_duplicates", "organize",
           "organize_cbis", "organize_manifest", "plan_cbis", "process_unit", "quality_markdown", "summary_lines"]


def organize(download: str | Path | None = None, *, out: str | Path, csv_dir: str | Path | None = None,
             manifest: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
             metadata: str | Path | None = None, workers: int | None = None, overwrite: bool = False,
             **options: Any) -> OrganizeResult:
    """One entry point for both modes, as the CLI exposes them (``options`` override ``config``).

    A run that fails before writing any image leaves no output folder behind if it created it (an
    empty download, a CSV error found while planning): nothing that looks like a dataset.
    """
    resolve_workers(workers)
    out_path = Path(out)
    created = not out_path.exists()
    try:
        # One writer per --out: a second organize there is refused in one line naming this one.
        with output_lock(out_path, command=current_command(f"organize(out={str(out)!r})")):
            return _organize(download, out=out, csv_dir=csv_dir, manifest=manifest, config=config,
                             metadata=metadata, workers=workers, overwrite=overwrite, **options)
    except MammoLabError:
        if created and out_path.is_dir() and not _holds_images(out_path):
            shutil.rmtree(out_path, ignore_errors=True)
        raise


def _holds_images(out: Path) -> bool:
    """True when ``out`` holds a finished unit's record: work worth keeping for a re-run."""
    units = out / WORK_DIR / "units"
    return units.is_dir() and any(units.iterdir())


def _organize(download: str | Path | None = None, *, out: str | Path, csv_dir: str | Path | None = None,
              manifest: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
              metadata: str | Path | None = None, workers: int | None = None, overwrite: bool = False,
              **options: Any) -> OrganizeResult:
    if manifest is not None:
        if download is not None or csv_dir is not None:
            raise MammoLabError("organize: give either DOWNLOAD with --csv-dir, or --manifest, not both")
        opts = {k: v for k, v in options.items() if k in ImportConfig.model_fields}
        cfg = load_config(ImportConfig, config, overrides=opts, source="organize options")
        return organize_manifest(manifest, out, cfg, workers=workers, overwrite=overwrite)
    if download is None or csv_dir is None:
        raise MammoLabError("organize: expected DOWNLOAD and --csv-dir (CBIS-DDSM), or --manifest FILE.csv")
    cfg = load_config(OrganizeConfig, config, overrides=options, source="organize options")
    return organize_cbis(download, csv_dir, out, cfg, metadata=metadata, workers=workers, overwrite=overwrite)

