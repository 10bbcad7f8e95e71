"""mammolab synth --difficulty: harder lesions (smaller, fainter, graded looks, partly independent views)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mammolab.data.synth import DIFFICULTIES, _plan, draw_lesion, lesion_looks, synthesize
from mammolab.errors import MammoLabError


def _rois(difficulty: str, patients: int = 60) -> list:
    plan = _plan(Path("/nonexistent"), patients, 512, "legacy", 0, difficulty)
    return [(job.case, job.view, roi) for job in plan.jobs for roi in job.rois]


def test_levels_make_looks_overlap_and_views_differ() -> None:
    easy, hard = _rois("easy"), _rois("hard")
    assert all(r.look is None and r.contrast == 1.0 for _, _, r in easy)
    # same lesions, same order; only the look, contrast and size change
    assert [(c, r.abn_id, r.malignant) for c, _, r in easy] == [(c, r.abn_id, r.malignant) for c, _, r in hard]
    ratio = np.array([h.radius_frac / e.radius_frac for (_, _, e), (_, _, h) in zip(easy, hard, strict=True)])
    assert np.allclose(ratio, DIFFICULTIES["hard"].radius)
    mal = np.array([r.look for _, _, r in hard if r.malignant])
    ben = np.array([r.look for _, _, r in hard if not r.malignant])
    assert mal.mean() - ben.mean() > 0.25 and ben.max() > mal.min()  # separable on average, overlapping
    by_lesion: dict[tuple[str, int], dict[str, float]] = {}
    for case, view, r in hard:
        by_lesion.setdefault((case.rsplit("_", 1)[0], r.abn_id), {})[view] = r.look
    pairs = np.array([[v["CC"], v["MLO"]] for v in by_lesion.values() if len(v) == 2])
    assert len(pairs) > 20 and np.abs(pairs[:, 0] - pairs[:, 1]).mean() > 0.1  # each view its own evidence
    many: dict[tuple[str, int], dict[str, float]] = {}
    for case, view, r in _rois("hard", 300):
        many.setdefault((case.rsplit("_", 1)[0], r.abn_id), {})[view] = r.look
    both = np.array([[v["CC"], v["MLO"]] for v in many.values() if len(v) == 2])
    assert np.corrcoef(both.T)[0, 1] > 0.2  # ...of the same lesion (about 0.3; independent views: 0 +- 0.05)
    medium = np.array([r.look for _, _, r in _rois("medium") if r.malignant])
    assert medium.mean() > mal.mean()


def test_lesion_looks_are_the_rendered_ones_and_rank_the_levels() -> None:
    from sklearn.metrics import roc_auc_score

    rows = lesion_looks(60, seed=0, difficulty="hard")
    drawn = {("_".join(case.split("_")[1:3]), case.split("_")[3], r.abn_id, view): (r.look, r.malignant)
             for case, view, r in _rois("hard")}
    got = {(r["patient_id"], r["side"], r["abn_id"], r["view"]): (r["look"], r["malignant"]) for r in rows}
    assert got == drawn  # exactly the looks synthesize renders, lesion by lesion and view by view

    def ideal(level: str, both: bool) -> float:
        frame = lesion_looks(400, seed=1, difficulty=level)
        by = {}
        for r in frame:
            by.setdefault((r["patient_id"], r["side"], r["abn_id"]), []).append((r["look"], r["malignant"]))
        y = [v[0][1] for v in by.values()]
        s = [np.mean([x for x, _ in v]) if both else v[0][0] for v in by.values()]
        return float(roc_auc_score(y, s))

    one_hard, two_hard, one_medium = ideal("hard", False), ideal("hard", True), ideal("medium", False)
    assert 0.7 < one_hard < 0.88 and two_hard > one_hard + 0.03 and one_medium > one_hard + 0.08
    with pytest.raises(MammoLabError, match="no graded look"):
        lesion_looks(10, difficulty="easy")
    with pytest.raises(MammoLabError, match="--difficulty: expected one of"):
        lesion_looks(10, difficulty="extreme")


def test_graded_lesions_are_fainter_and_blend_the_looks() -> None:
    def render(look: float | None, malignant: bool, contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return draw_lesion((96, 96), (48.0, 48.0), 12.0, malignant, "mass", np.random.default_rng(1), look, contrast)

    easy_mal, easy_mal_mask = render(None, True)
    hard_mal, hard_mal_mask = render(1.0, False, DIFFICULTIES["hard"].contrast)
    hard_ben, hard_ben_mask = render(0.0, True, DIFFICULTIES["hard"].contrast)
    assert hard_mal.max() < 0.75 * easy_mal.max()
    # look 1 has spicules (mask reaches far out), look 0 is a compact blob, whatever the class flag
    reach = [np.hypot(*(np.argwhere(m) - 48).T).max() for m in (easy_mal_mask, hard_mal_mask, hard_ben_mask)]
    assert reach[1] > 1.3 * reach[2] and reach[0] > 1.3 * reach[2]
    for delta, mask in ((hard_mal, hard_mal_mask), (hard_ben, hard_ben_mask)):
        assert ((delta > 0) == mask).all()
    d, m = draw_lesion((96, 96), (48.0, 48.0), 12.0, True, "calc", np.random.default_rng(2), 0.5, 0.5)
    assert m.any() and (d[~m] == 0).all() and d.max() < 0.5 * 0.46 * 1.15 + 1e-6


def test_synth_json_records_a_non_default_level(tmp_path: Path) -> None:
    synthesize(tmp_path / "hard", patients=6, image_size=128, difficulty="hard", workers=1)
    assert json.loads((tmp_path / "hard" / "synth.json").read_text())["args"]["difficulty"] == "hard"
    synthesize(tmp_path / "easy", patients=6, image_size=128, workers=1)
    assert "difficulty" not in json.loads((tmp_path / "easy" / "synth.json").read_text())["args"]
    with pytest.raises(MammoLabError, match="--difficulty: expected one of easy, medium, hard, got 'extreme'"):
        synthesize(tmp_path / "x", patients=6, image_size=128, difficulty="extreme")
    with pytest.raises(MammoLabError, match=r"different arguments \(difficulty=None \(now 'medium'\)\)"):
        synthesize(tmp_path / "easy", patients=6, image_size=128, difficulty="medium")
