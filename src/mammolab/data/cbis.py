"""CBIS-DDSM specifics: the four case-description CSVs and the download tree.

The CSVs come with quirks that break naive scripts (CRLF line endings, a newline inside the quoted
ROI path, ``breast_density`` in the mass files but ``breast density`` in the calc files, paths made
of DICOM UIDs that match neither download layout). ``read_case_csv`` hides all of that behind one
normalised table. ``DownloadIndex`` indexes a download once by DICOM header (no pixel data), so CSV
rows are matched by UID whatever the layout: the older ``<case>/<date-DDSM-n>/<1-desc-n>/00000N.dcm``
tree, the current NBIA ``1.000000-full mammogram images-n/1-1.dcm`` one, with or without
``metadata.csv``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text
from mammolab.progress import parallel_map

#: Columns every case-description CSV must have (after stripping and normalising density).
CSV_REQUIRED = (
    "patient_id", "density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
)
PATHOLOGIES = ("BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK")
CSV_PATTERN = re.compile(r"^(mass|calc)_case_description_(train|test)_set\.csv$", re.IGNORECASE)


def _strip(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def _uids(path: str) -> tuple[str, str, str, str]:
    """Split a CSV path ``<case>/<study uid>/<series uid>/<file>`` into its four parts."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < 4:
        return (parts[0] if parts else "", "", "", parts[-1] if parts else "")
    return parts[0], parts[-3], parts[-2], parts[-1]


def _csv_text(path: Path) -> str:
    """The CSV as text: UTF-8 (with or without a byte-order mark), as TCIA publishes it. Anything else is
    one line naming the file, the line and the byte, and saying what is expected; guessing another
    encoding would silently change patient ids and paths."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise MammoLabError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}; the file looks re-saved in "
            "another encoding such as Latin-1 or Windows-1252); expected the CSV as TCIA publishes it, "
            "in UTF-8: download it again or re-save it as UTF-8") from None


def read_case_csv(path: str | Path) -> pd.DataFrame:
    """Read one official case-description CSV into a normalised table.

    Output columns: ``patient_id, density, side, view, abnormality_id, abnormality (mass|calc),
    assessment, pathology, subtlety, lesion_type, lesion_detail, official_split (train|test),
    case_id, image_series_uid, image_file, roi_case_id, crop_series_uid, crop_file,
    mask_series_uid, mask_file, csv_file, csv_row``.
    """
    path = Path(path)
    if not path.is_file():
        raise MammoLabError(f"{path}: case-description CSV not found")
    try:
        raw = pd.read_csv(io.StringIO(_csv_text(path)), dtype=str, keep_default_na=False)
    except MammoLabError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise MammoLabError(f"{path}: unreadable CSV ({detail}); expected a comma-separated CBIS-DDSM "
                            "case-description CSV") from None
    raw.columns = [c.strip() for c in raw.columns]
    raw = raw.rename(columns={"breast_density": "density", "breast density": "density"})
    missing = [c for c in CSV_REQUIRED if c not in raw.columns]
    if missing:
        raise MammoLabError(f"{path}: missing column {missing[0]!r} (a CBIS-DDSM case-description CSV "
                            f"has {', '.join(CSV_REQUIRED)})")
    raw = raw.map(_strip)
    raw = raw[raw["patient_id"] != ""]
    bad = sorted(set(raw["pathology"].str.upper()) - set(PATHOLOGIES))
    if bad:
        raise MammoLabError(f"{path}: column 'pathology' has {bad}; expected one of {list(PATHOLOGIES)}")
    m = CSV_PATTERN.match(path.name)
    abn_type = raw["abnormality type"].str.lower().map(lambda s: "calc" if s.startswith("calc") else "mass")
    lesion_type = raw.get("mass shape", raw.get("calc type", pd.Series("", index=raw.index)))
    lesion_detail = raw.get("mass margins", raw.get("calc distribution", pd.Series("", index=raw.index)))
    img = raw["image file path"].map(_uids)
    crop = raw["cropped image file path"].map(_uids)
    mask = raw["ROI mask file path"].map(_uids)

    def official(case: str) -> str:
        if "test" in case.lower():
            return "test"
        if "train" in case.lower():
            return "train"
        return m.group(2).lower() if m else ""

    out = pd.DataFrame({
        "patient_id": raw["patient_id"],
        "density": raw["density"],
        "side": raw["left or right breast"].str.upper(),
        "view": raw["image view"].str.upper(),
        "abnormality_id": raw["abnormality id"],
        "abnormality": abn_type,
        "assessment": raw["assessment"],
        "pathology": raw["pathology"].str.upper(),
        "subtlety": raw["subtlety"],
        "lesion_type": lesion_type,
        "lesion_detail": lesion_detail,
        "case_id": img.str[0],
        "official_split": img.str[0].map(official),
        "image_study_uid": img.str[1],
        "image_series_uid": img.str[2],
        "image_file": img.str[3],
        "roi_case_id": crop.str[0],
        "crop_series_uid": crop.str[2],
        "crop_file": crop.str[3],
        "mask_case_id": mask.str[0],
        "mask_series_uid": mask.str[2],
        "mask_file": mask.str[3],
        "csv_file": path.name,
        "csv_row": range(2, 2 + len(raw)),
    })
    if (out["official_split"] == "").any():
        raise MammoLabError(f"{path}: cannot tell train from test (expected 'Training' or 'Test' in "
                            "'image file path', or a file named like mass_case_description_train_set.csv)")
    return out.reset_index(drop=True)


def find_case_csvs(csv_dir: str | Path, abnormality: str = "mass") -> list[Path]:
    """The official CSVs in ``csv_dir`` for ``mass``, ``calc`` or ``all``, train before test."""
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise MammoLabError(f"--csv-dir: {csv_dir} is not a folder")
    if abnormality not in ("mass", "calc", "all"):
        raise MammoLabError(f"--abnormality: expected mass, calc or all, got {abnormality!r}")
    kinds = ("mass", "calc") if abnormality == "all" else (abnormality,)
    found = []
    for p in sorted(csv_dir.iterdir()):
        m = CSV_PATTERN.match(p.name)
        if m and m.group(1).lower() in kinds:
            found.append(p)
    if not found:
        want = ", ".join(f"{k}_case_description_{s}_set.csv" for k in kinds for s in ("train", "test"))
        raise MammoLabError(f"--csv-dir: no case-description CSV in {csv_dir} (expected {want})")

    def order(p: Path) -> tuple[str, bool]:
        m = CSV_PATTERN.match(p.name)
        return m.group(1).lower(), m.group(2).lower() != "train"

    return sorted(found, key=order)


#: The columns that identify one lesion (one output image for --kind crop/roi): two rows with the
#: same values describe the same lesion.
LESION_KEY = ("abnormality", "official_split", "patient_id", "side", "view", "abnormality_id")
#: Where two rows may differ and still be the same row: where they were read from.
_ORIGIN = ("csv_file", "csv_row")


def drop_duplicate_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop exact repeats of a lesion's row (reported); refuse two *different* rows for one lesion.

    A repeated row (same content, another line) is a copy-paste or a concatenation accident: it is
    dropped and listed, so the manifest gets one image per lesion. Two rows that name the same lesion
    but disagree (pathology, paths, ...) cannot be resolved by guessing: one error names the CSV(s),
    their lines and the first column that differs, before anything is written.
    """
    if table.empty:
        return table, []
    keys = list(LESION_KEY)
    content = [c for c in table.columns if c not in _ORIGIN]
    dup_key = table.duplicated(keys, keep=False)
    if not dup_key.any():
        return table, []
    for _, grp in table[dup_key].groupby(keys, sort=False):
        first = grp.iloc[0]
        for _, other in grp.iloc[1:].iterrows():
            differ = [c for c in content if str(first[c]) != str(other[c])]
            if differ:
                c = differ[0]
                raise MammoLabError(
                    f"{first['csv_file']} line {first['csv_row']} and {other['csv_file']} line {other['csv_row']} "
                    f"describe the same lesion ({first['patient_id']} {first['side']} {first['view']} abnormality "
                    f"{first['abnormality_id']}) differently (column {c!r}: {first[c]!r} vs {other[c]!r}); expected "
                    "one row per lesion: remove the wrong row from the CSV")
    repeated = table.duplicated(keys, keep="first")
    dropped = [f"{r['csv_file']} line {r['csv_row']}: repeats the row of {r['roi_case_id'] or r['case_id']} "
               f"(dropped)" for _, r in table[repeated].iterrows()]
    return table[~repeated].reset_index(drop=True), dropped


def read_case_csvs(csv_dir: str | Path, abnormality: str = "mass") -> pd.DataFrame:
    """Concatenate the official CSVs for ``abnormality`` into one normalised table, each lesion once.

    Repeated rows are dropped and listed in ``table.attrs["duplicate_rows"]`` (for the quality report).
    """
    table = pd.concat([read_case_csv(p) for p in find_case_csvs(csv_dir, abnormality)], ignore_index=True)
    table, dropped = drop_duplicate_rows(table)
    table.attrs["duplicate_rows"] = dropped
    return table


# --------------------------------------------------------------------------- download index

INDEX_COLUMNS = ("rel_path", "size", "mtime", "mtime_ns", "digest", "series_uid", "study_uid", "sop_uid", "patient_id",
                 "series_description", "rows", "columns", "readable")


def _header(path: Path) -> dict[str, object]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        return {
            "series_uid": str(getattr(ds, "SeriesInstanceUID", "") or ""),
            "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""),
            "sop_uid": str(getattr(ds, "SOPInstanceUID", "") or ""),
            "patient_id": str(getattr(ds, "PatientID", "") or ""),
            "series_description": str(getattr(ds, "SeriesDescription", "") or ""),
            "rows": int(getattr(ds, "Rows", 0) or 0),
            "columns": int(getattr(ds, "Columns", 0) or 0),
            "readable": bool(getattr(ds, "SeriesInstanceUID", "")),
        }
    except Exception:
        return {"series_uid": "", "study_uid": "", "sop_uid": "", "patient_id": "",
                "series_description": "", "rows": 0, "columns": 0, "readable": False}


def quick_digest(path: str | Path, chunk: int = 64 * 1024) -> str:
    """A cheap content hash: blake2b of the size and the first and last ``chunk`` bytes.

    What tells a file replaced in place (same name, other pixels) from the one a finished image was
    made from, without reading whole films on every run; a DICOM's header (its UIDs) is in the first
    bytes and its pixels run to the last, so a changed film changes the digest.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(chunk, size - chunk))
            h.update(fh.read(chunk))
    return h.hexdigest()


def _iter_dicoms(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(".dcm"):
                yield Path(dirpath) / name


@dataclass
class DownloadIndex:
    """Every DICOM of a download, keyed by SeriesInstanceUID (with folder-name fallbacks)."""

    root: Path
    table: pd.DataFrame
    by_series: dict[str, list[str]] = field(default_factory=dict)
    by_case: dict[str, list[str]] = field(default_factory=dict)
    _unreadable: set[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.by_series = {}
        self.by_case = {}
        for rel, series in zip(self.table["rel_path"], self.table["series_uid"], strict=True):
            if series:
                self.by_series.setdefault(series, []).append(rel)
            case = rel.split("/", 1)[0]
            self.by_case.setdefault(case, []).append(rel)

    @classmethod
    def build(cls, root: str | Path, *, cache: str | Path | None = None, workers: int = 1,
              metadata: str | Path | None = None) -> DownloadIndex:
        """Index ``root`` by header; reuse ``cache`` rows whose size and mtime are unchanged."""
        root = Path(root)
        if not root.is_dir():
            raise MammoLabError(f"DOWNLOAD: {root} is not a folder (expected the CBIS-DDSM download root)")
        files = list(_iter_dicoms(root))
        if not files:
            raise MammoLabError(f"DOWNLOAD: no .dcm files under {root} (expected the CBIS-DDSM download "
                                "root, the folder holding Mass-Training_P_..., Calc-Test_P_... folders)")
        old: dict[str, dict] = {}
        if cache and Path(cache).is_file():
            try:
                prev = pd.read_csv(cache, dtype=str, keep_default_na=False)
                old = {r["rel_path"]: r for r in prev.to_dict("records")}
            except Exception:
                old = {}
        rows, todo = [], []
        for f in files:
            st = f.stat()
            rel = f.relative_to(root).as_posix()
            prev_row = old.get(rel)
            # size and mtime_ns unchanged: the header and digest of the last run still hold (an index of an
            # older version, without mtime_ns, is read anew)
            if prev_row and prev_row["size"] == str(st.st_size) and prev_row.get("mtime_ns") == str(st.st_mtime_ns) \
                    and prev_row.get("digest"):
                rows.append(prev_row)
            else:
                todo.append((f, rel, st))
        if todo:
            headers, _ = parallel_map(_header, [t[0] for t in todo], workers=workers,
                                      description="indexing DICOM headers")
            for (_, rel, st), h in zip(todo, headers, strict=True):
                rows.append({"rel_path": rel, "size": str(st.st_size), "mtime": str(int(st.st_mtime)),
                             "mtime_ns": str(st.st_mtime_ns), "digest": quick_digest(root / rel), **(h or {})})
        table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).sort_values("rel_path").reset_index(drop=True)
        table["readable"] = table["readable"].astype(str).isin(("True", "true", "1"))
        for col in ("rows", "columns"):
            table[col] = pd.to_numeric(table[col], errors="coerce").fillna(0).astype(int)
        table = table.fillna("")
        if metadata:
            table = _apply_metadata(table, root, Path(metadata))
        if cache:
            atomic_write_text(cache, table.to_csv(index=False, lineterminator="\n"))
        return cls(root=root, table=table)

    def series_files(self, series_uid: str) -> list[str]:
        return sorted(self.by_series.get(series_uid, []))

    def case_files(self, case_id: str) -> list[str]:
        return sorted(self.by_case.get(case_id, []))

    def unreadable_files(self, case_id: str) -> list[str]:
        """Files under the folder ``case_id`` whose DICOM header could not be read (empty, damaged)."""
        if not case_id:
            return []
        if self._unreadable is None:
            self._unreadable = set(self.table.loc[~self.table["readable"].astype(bool), "rel_path"])
        return [f for f in self.case_files(case_id) if f in self._unreadable]

    def digest(self, rel: str) -> str:
        """The file's :func:`quick_digest` as indexed ('' when unknown)."""
        if not hasattr(self, "_digests"):
            self._digests = dict(zip(self.table["rel_path"], self.table["digest"].astype(str), strict=True))
        return self._digests.get(rel, "")

    def header(self, rel: str) -> dict[str, object]:
        row = self.table[self.table["rel_path"] == rel]
        return row.iloc[0].to_dict() if len(row) else {}

    def fingerprint(self) -> str:
        return hashlib.sha256(self.table[["rel_path", "size", "mtime"]].to_csv(index=False).encode()).hexdigest()[:16]


def _apply_metadata(table: pd.DataFrame, root: Path, metadata: Path) -> pd.DataFrame:
    """Fill series UIDs from NBIA's ``metadata.csv`` for files whose header lacks them."""
    if not metadata.is_file():
        raise MammoLabError(f"--metadata: {metadata} not found (expected the NBIA Data Retriever metadata.csv)")
    meta = pd.read_csv(metadata, dtype=str, keep_default_na=False)
    meta.columns = [c.strip() for c in meta.columns]
    for col in ("Series UID", "File Location"):
        if col not in meta.columns:
            raise MammoLabError(f"--metadata: {metadata} has no column {col!r} (expected NBIA's metadata.csv "
                                "with Series UID, Subject ID, Series Description, File Location)")
    loc_to_uid: dict[str, tuple[str, str]] = {}
    for uid, loc, desc in zip(meta["Series UID"], meta["File Location"],
                              meta.get("Series Description", pd.Series([""] * len(meta))), strict=True):
        loc = loc.replace("\\", "/").strip()
        loc = re.sub(r"^\./", "", loc)
        # File Location is relative to the folder that holds metadata.csv, usually "./CBIS-DDSM/<case>/..."
        parts = loc.split("/")
        for k in range(len(parts)):
            loc_to_uid["/".join(parts[k:])] = (uid.strip(), desc.strip())
    table = table.copy()
    for i, rel in enumerate(table["rel_path"]):
        folder = rel.rsplit("/", 1)[0]
        hit = loc_to_uid.get(folder)
        if hit:
            if not table.at[i, "series_uid"]:
                table.at[i, "series_uid"] = hit[0]
            if not table.at[i, "series_description"]:
                table.at[i, "series_description"] = hit[1]
    return table
