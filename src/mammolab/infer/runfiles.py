"""Where a run keeps what evaluation and explain write: facts about a run folder, no model needed.

Low enough that ``evaluate`` (which writes there), ``explain`` (which files its localisation summary
beside the evaluation) and the threshold resolver (which reads the Youden threshold) share them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mammolab.errors import MammoLabError

__all__ = ["EVAL_DIRNAME", "LOCALISATION_PREFIX", "checkpoint_stamp", "eval_dir"]

EVAL_DIRNAME = "eval"
#: ``RUN/eval/<split>/localisation_<method>.json``: explain's summary over a split, read by the report.
LOCALISATION_PREFIX = "localisation_"


def eval_dir(run_dir: str | Path, split: str = "test", tta: bool = False) -> Path:
    """Where a run's evaluation on ``split`` lives."""
    return Path(run_dir) / EVAL_DIRNAME / (f"{split}-tta" if tta else split)


def checkpoint_stamp(run_dir: str | Path, checkpoint: str = "best") -> str:
    """A short fingerprint (name, size, mtime) of the checkpoint that scores are computed from.

    Cheap to compute even for large checkpoints, and it changes whenever training writes a new
    one, which is what decides whether an evaluation is stale.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = ckpt_dir / f"{checkpoint}.ckpt"  # the checkpoint asked for, never another one silently
    if path.is_file():
        st = path.stat()
        return hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    hint = "; pass --checkpoint last to use last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else ""
    raise MammoLabError(f"{path}: not found (is this a finished 'mammolab train' run?){hint}")
