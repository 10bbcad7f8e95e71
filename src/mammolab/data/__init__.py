"""Data stage: CBIS-DDSM (or any image list) to a leak-free dataset folder with its manifest.

``mammolab.organize(...)`` is the entry point (:func:`mammolab.data.organize.organize`; the name
``mammolab.data.organize`` is its module). The names below load on first use.
"""

from mammolab._callable import lazy_getattr

_EXPORTS = {
    "ImportConfig": "mammolab.data.organize:ImportConfig",
    "OrganizeConfig": "mammolab.data.organize:OrganizeConfig",
    "OrganizeResult": "mammolab.data.organize:OrganizeResult",
    "assign_splits": "mammolab.data.splits:assign_splits",
    "load_manifest": "mammolab.data.manifest:load_manifest",
    "manifest_hash": "mammolab.data.manifest:manifest_hash",
    "organize_cbis": "mammolab.data.organize:organize_cbis",
    "organize_manifest": "mammolab.data.organize:organize_manifest",
    "patient_overlap": "mammolab.data.splits:patient_overlap",
    "read_case_csvs": "mammolab.data.cbis:read_case_csvs",
    "read_info": "mammolab.data.manifest:read_info",
    "synthesize": "mammolab.data.synth:synthesize",
    "write_manifest": "mammolab.data.manifest:write_manifest",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
