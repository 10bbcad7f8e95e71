"""mammolab wizard, driven through a pseudo-terminal as a person would: defaults, bad answers, the YAML."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from mammolab.app.experiment import load_experiment
from mammolab.app.wizard import Asker, build_experiment, equivalent_commands, run_wizard

pexpect = pytest.importorskip("pexpect")
MAMMOLAB = [sys.executable, "-m", "mammolab"]


def _spawn(cwd: Path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "MAMMOLAB_QUIET": "1", "COLUMNS": "200", "TERM": "dumb"}
    return pexpect.spawn(MAMMOLAB[0], [*MAMMOLAB[1:], "wizard", *args], cwd=str(cwd), env=env, encoding="utf-8",
                         timeout=60, dimensions=(50, 200))


def test_wizard_in_a_terminal_reasks_bad_answers_and_writes_valid_yaml(tmp_path: Path) -> None:
    download = tmp_path / "cbis"
    download.mkdir()
    (download / "metadata.csv").write_text("Series UID\n")
    child = _spawn(tmp_path)
    child.expect(r"Experiment name \[my_study\]: ")
    child.sendline("bad name!")  # not a usable file name: asked again
    child.expect("use letters, digits")
    child.expect(r"Experiment name \[my_study\]: ")
    child.sendline("masses")
    child.expect(r"Output folder .*\[masses\]: ")
    child.sendline("")
    child.expect(r"Where are the images .*\[synthetic\]: ")
    child.sendline("floppy")  # not a choice
    child.expect("'floppy' is not one of")
    child.expect(r"Where are the images .*: ")
    child.sendline("2")  # cbis-ddsm by number
    child.expect(r"CBIS-DDSM download folder .*: ")
    child.sendline(str(tmp_path / "no_such_folder"))  # a path that does not exist
    child.expect("is not an existing folder")
    child.expect(r"CBIS-DDSM download folder .*: ")
    child.sendline(str(download))
    child.expect(r"Folder with the case-description CSVs \[.*\]: ")
    child.sendline("")
    child.expect(r"Use .*metadata.csv .*\(y/n\) \[y\]: ")
    child.sendline("maybe")
    child.expect("answer y or n")
    child.sendline("y")
    child.expect(r"Labels .*\[binary\]: ")
    child.sendline("")
    child.expect(r"Abnormality type .*\[mass\]: ")
    child.sendline("")
    child.expect(r"Image kind .*\[crop\]: ")
    child.sendline("")
    child.expect(r"Preprocess the images .*\[y\]: ")
    child.sendline("")
    child.expect(r"numbers or names, separated by spaces \[mammocnn resnet18_cft\]: ")
    child.sendline("1 mammocnn 99")
    child.expect("'99' is not one of")
    child.sendline("1 mammocnn densenet121")
    child.expect(r"Training regime for densenet121 .*\[cft\]: ")
    child.sendline("pft")
    child.expect(r"Starting weights .*\[imagenet\]: ")
    child.sendline("")
    child.expect(r"Training image size in pixels \[224\]: ")
    child.sendline("10")
    child.expect("expected a number from 32 to 2048")
    child.sendline("")
    child.expect(r"Epochs \[30\]: ")
    child.sendline("")
    child.expect(r"Test-time augmentation .*\[n\]: ")
    child.sendline("")
    child.expect(r"Heatmaps .*\[y\]: ")
    child.sendline("")
    child.expect("The same study, step by step:")
    child.expect(r"mammolab train masses/dataset-pp --model densenet121 --regime pft")
    child.expect(r"Write it to \[masses.yaml\]: ")
    child.sendline("")
    child.expect(r"Run it now \(y/n\) \[n\]: ")
    child.sendline("")
    child.expect("mammolab run masses.yaml")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    written = yaml.safe_load((tmp_path / "masses.yaml").read_text())
    assert written["data"] == {"download": str(download), "csv_dir": str(download),
                               "metadata": str(download / "metadata.csv")}
    assert [r["model"] for r in written["train"]["runs"]] == ["resnet18_opw", "mammocnn", "densenet121"]
    assert written["train"]["runs"][1] == {"model": "mammocnn", "weights": "none"}
    assert written["train"]["runs"][2] == {"model": "densenet121", "regime": "pft", "name": "densenet121_pft"}
    assert written["train"]["defaults"] == {"image_size": 224, "epochs": 30, "weights": "imagenet"}
    cfg = load_experiment(tmp_path / "masses.yaml")  # what 'mammolab run' accepts
    assert cfg.organize == {"labels": "binary", "abnormality": "mass", "kind": "crop"}


def test_wizard_ctrl_d_stops_cleanly(tmp_path: Path) -> None:
    child = _spawn(tmp_path)
    child.expect(r"Experiment name \[my_study\]: ")
    child.sendeof()
    child.expect("nothing was written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not list(tmp_path.glob("*.yaml"))


def test_all_defaults_give_a_runnable_synthetic_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    answers = iter([""] * 40)
    path = run_wizard(asker=Asker(read=lambda prompt: next(answers), write=lines.append))
    assert path == Path("my_study.yaml") and path.is_file()
    cfg = load_experiment(path)
    assert cfg.data.synth is not None and cfg.organize["kind"] == "roi"
    assert [r.model for r in cfg.train.runs] == ["mammocnn", "resnet18_cft"]
    assert any(line.strip().startswith("mammolab synth") for line in lines)


def test_equivalent_commands_cover_every_stage() -> None:
    exp = build_experiment({"name": "x", "out": "o", "source": "manifest", "manifest": "m.csv", "labels": "binary",
                            "preprocess": None, "models": ["resnet18"], "plain_models": ["resnet18"],
                            "regime": "opw", "weights": "none", "image_size": 64, "epochs": 2, "tta": True,
                            "explain": False})
    cmds = equivalent_commands(exp)
    assert cmds[0].startswith("mammolab organize --manifest m.csv --out o/dataset")
    assert "mammolab train o/dataset --model resnet18 --regime opw --out o/runs/resnet18_opw" in cmds[1]
    assert cmds[2] == "mammolab evaluate o/runs/resnet18_opw --split test --tta"
    assert cmds[-1] == "mammolab compare o/runs/resnet18_opw --out o/report"


def test_a_manifest_study_asks_the_image_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest of whole films gets the whole-film preprocessing; one with boxes can be cut into patches."""
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "films.csv"
    manifest.write_text("path,label,patient_id\n")
    prompts: list[str] = []

    def study(kind_answer: str, *roi: str) -> dict:
        answers = iter(["", "", "3", str(manifest), "", kind_answer, *roi] + [""] * 30)
        path = run_wizard(asker=Asker(read=lambda prompt: prompts.append(prompt) or next(answers),
                                      write=lambda line: None))
        written = yaml.safe_load(path.read_text())
        path.unlink()
        return written

    whole = study("")
    assert any(p.startswith("Image kind") and "[full]" in p for p in prompts)
    assert whole["organize"] == {"labels": "binary", "kind": "full"}
    assert whole["preprocess"]["config"] == "full"
    patches = study("roi", "96")
    assert patches["organize"] == {"labels": "binary", "kind": "roi", "roi_size": 96}
    assert patches["preprocess"]["config"] == "patch"
    assert not any(p.startswith("Abnormality type") for p in prompts)  # a CBIS question, not a manifest's
