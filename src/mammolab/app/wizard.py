"""``mammolab wizard``: a guided questionnaire that writes (and optionally runs) an experiment YAML.

It asks what the classic study's ``main.py`` asked (organize? preprocess? which model, which
regime?), but every question has a default (Enter accepts it) and every answer is checked on the
spot: a folder that does not exist, a choice that is not offered or a number out of range is
explained and asked again; nothing a person types makes it crash. End of input (Ctrl-D) or Ctrl-C
stops it cleanly without writing anything. At the end it prints the equivalent step-by-step
commands and the YAML, writes the YAML, validates it with the same code as ``mammolab run``, and
offers to run it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mammolab.config import dump_yaml
from mammolab.errors import MammoLabError
from mammolab.imagesize import as_hw, parse_image_size, size_text
from mammolab.io.atomic import atomic_write_text

__all__ = ["Asker", "build_experiment", "equivalent_commands", "run_wizard"]

T = TypeVar("T")


class WizardAbort(Exception):
    """The person ended the questionnaire (Ctrl-D / Ctrl-C)."""


class Asker:
    """Prompts with a default, validation and re-asking; ``read``/``write`` are swappable for tests."""

    def __init__(self, read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> None:
        self.read, self.write = read, write

    def ask(self, question: str, default: T, parse: Callable[[str], T], hint: str = "") -> T:
        shown = "" if default is None else f" [{default}]"
        while True:
            try:
                raw = self.read(f"{question}{shown}: ").strip()
            except (EOFError, KeyboardInterrupt):
                raise WizardAbort from None
            if raw == "" and default is not None:
                return default
            if raw == "?" and hint:
                self.write(f"  {hint}")
                continue
            try:
                return parse(raw)
            except (ValueError, MammoLabError) as exc:
                self.write(f"  ! {exc} - please try again" + (" (? for help)" if hint else ""))

    def choice(self, question: str, options: Sequence[str], default: str, hint: str = "") -> str:
        def parse(raw: str) -> str:
            if raw.isdigit() and 1 <= int(raw) <= len(options):
                return options[int(raw) - 1]
            matches = [o for o in options if o.lower() == raw.lower()]
            if not matches:
                raise ValueError(f"{raw!r} is not one of: {', '.join(options)}")
            return matches[0]

        listing = ", ".join(f"{i}) {o}" for i, o in enumerate(options, 1))
        return self.ask(f"{question} ({listing})", default, parse, hint)

    def many(self, question: str, options: Sequence[str], default: Sequence[str], hint: str = "") -> list[str]:
        def parse(raw: str) -> list[str]:
            picked: list[str] = []
            for token in raw.replace(",", " ").split():
                if token.isdigit() and 1 <= int(token) <= len(options):
                    name = options[int(token) - 1]
                elif token in options:
                    name = token
                else:
                    raise ValueError(f"{token!r} is not one of: {', '.join(options)}")
                if name not in picked:
                    picked.append(name)
            if not picked:
                raise ValueError("choose at least one")
            return picked

        self.write(f"{question}:")
        for i, o in enumerate(options, 1):
            self.write(f"  {i:2d}) {o}")
        return _as_list(self.ask("  numbers or names, separated by spaces", " ".join(default), parse, hint))

    def yes(self, question: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            if raw.lower() in ("y", "yes"):
                return True
            if raw.lower() in ("n", "no"):
                return False
            raise ValueError("answer y or n")

        return self.ask(f"{question} (y/n)", "y" if default else "n", lambda r: "y" if parse(r) else "n") == "y"

    def integer(self, question: str, default: int, low: int, high: int) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{raw!r} is not a whole number") from None
            if not low <= value <= high:
                raise ValueError(f"expected a number from {low} to {high}")
            return value

        return self.ask(question, default, parse)

    def image_size(self, question: str, default: int, low: int, high: int) -> int | tuple[int, int]:
        """N (a square) or HxW (height x width, e.g. 1152x896 for whole films), each side from low to high."""
        def parse(raw: str) -> int | tuple[int, int]:
            try:
                value = parse_image_size(raw, option="size")
            except MammoLabError:
                raise ValueError(f"{raw!r} is not N or HxW (height x width) in whole pixels") from None
            if not all(low <= side <= high for side in as_hw(value)):
                raise ValueError(f"expected a number from {low} to {high}" if isinstance(value, int)
                                 else f"expected each side from {low} to {high}")
            return value

        return self.ask(question, default, parse, hint="N for a square, or HxW (height x width), e.g. 1152x896 "
                        "for whole films")

    def folder(self, question: str, default: str | None, must_exist: bool = True) -> str:
        def parse(raw: str) -> str:
            p = Path(raw).expanduser()
            if must_exist and not p.is_dir():
                raise ValueError(f"{p} is not an existing folder")
            return str(p)

        return self.ask(question, default, parse)

    def file(self, question: str, default: str | None) -> str:
        def parse(raw: str) -> str:
            p = Path(raw).expanduser()
            if not p.is_file():
                raise ValueError(f"{p} is not an existing file")
            return str(p)

        return self.ask(question, default, parse)


def _as_list(value: str | list[str]) -> list[str]:
    return value.split() if isinstance(value, str) else value


def _names() -> tuple[list[str], list[str]]:
    from mammolab.models import CLASSIC_TEN, list_models

    return list(CLASSIC_TEN), list(list_models())


def build_experiment(answers: dict[str, Any]) -> dict[str, Any]:
    """The experiment mapping for a set of answers (the wizard's questions, as plain data)."""
    data: dict[str, Any]
    if answers["source"] == "synthetic":
        data = {"synth": {"patients": answers["patients"], "film_height": answers["synth_size"], "seed": 0}}
    elif answers["source"] == "cbis-ddsm":
        data = {"download": answers["download"], "csv_dir": answers["csv_dir"]}
        if answers.get("metadata"):
            data["metadata"] = answers["metadata"]
    else:
        data = {"manifest": answers["manifest"]}
    organize: dict[str, Any] = {"labels": answers["labels"]}
    if answers["source"] != "manifest":
        organize["abnormality"] = answers["abnormality"]
    if answers.get("kind"):  # a manifest without the answer (older answer sets) keeps organize's default, full
        organize["kind"] = answers["kind"]
        if answers["kind"] == "roi":
            organize["roi_size"] = answers["roi_size"]
    height, width = as_hw(answers["image_size"])
    size: int | list[int] = height if height == width else [height, width]  # YAML: 224 or [1152, 896]
    from mammolab.models.registry import get_model_entry, resolve_model_name

    runs = []
    for name in answers["models"]:
        run: dict[str, Any] = {"model": name}
        if answers["weights"] == "imagenet" and not get_model_entry(resolve_model_name(name)[0]).pretrained:
            run["weights"] = "none"  # trained from scratch: there are no ImageNet weights for it
        if name in answers.get("plain_models", ()):
            run.update(regime=answers["regime"], name=f"{name}_{answers['regime']}")
        runs.append(run)
    defaults: dict[str, Any] = {"image_size": size, "epochs": answers["epochs"], "weights": answers["weights"]}
    exp: dict[str, Any] = {
        "name": answers["name"], "out": answers["out"], "data": data, "organize": organize,
        "preprocess": {"config": answers["preprocess"], "size": [height, width]} if answers["preprocess"] else None,
        "train": {"defaults": defaults, "runs": runs},
        "evaluate": {"split": "test", "tta": answers["tta"]},
        "explain": {"method": "gradcam", "split": "test", "n": 8} if answers["explain"] else None,
        "compare": {},
    }
    return exp


def equivalent_commands(exp: dict[str, Any]) -> list[str]:
    """The step-by-step commands that do what ``mammolab run`` does with ``exp``."""
    q = shlex.quote
    out = Path(exp["out"])
    cmds: list[str] = []
    data = exp["data"]
    if "synth" in data:
        s = data["synth"]
        cmds.append(f"mammolab synth {q(str(out / 'download'))} --patients {s['patients']} "
                    f"--film-height {s['film_height']}")
        data = {"download": str(out / "download" / "download"), "csv_dir": str(out / "download" / "csv")}
    org = " ".join(f"--{k.replace('_', '-')} {q(str(v))}" for k, v in exp["organize"].items())
    if "manifest" in data:
        cmds.append(f"mammolab organize --manifest {q(str(data['manifest']))} --out {q(str(out / 'dataset'))} {org}")
    else:
        meta = f" --metadata {q(str(data['metadata']))}" if data.get("metadata") else ""
        cmds.append(f"mammolab organize {q(str(data['download']))} --csv-dir {q(str(data['csv_dir']))}{meta} "
                    f"--out {q(str(out / 'dataset'))} {org}")
    dataset = out / "dataset"
    if exp.get("preprocess"):
        pp = exp["preprocess"]
        cmds.append(f"mammolab preprocess {q(str(dataset))} --out {q(str(out / 'dataset-pp'))} "
                    f"--config {pp['config']} --size {size_text(pp['size'])}")
        dataset = out / "dataset-pp"
    d = exp["train"]["defaults"]
    run_dirs = []
    for run in exp["train"]["runs"]:
        name = run.get("name", run["model"])
        regime = f" --regime {run['regime']}" if "regime" in run else ""
        run_dir = out / "runs" / name
        run_dirs.append(str(run_dir))
        weights = run.get("weights", d["weights"])
        cmds.append(f"mammolab train {q(str(dataset))} --model {run['model']}{regime} --out {q(str(run_dir))} "
                    f"--image-size {size_text(d['image_size'])} --epochs {d['epochs']} --weights {weights}")
        tta = " --tta" if exp["evaluate"]["tta"] else ""
        cmds.append(f"mammolab evaluate {q(str(run_dir))} --split test{tta}")
        if exp.get("explain"):
            cmds.append(f"mammolab explain {q(str(run_dir))} --split test --method gradcam "
                        f"--out {q(str(run_dir / 'explain' / 'test-gradcam'))}")
    cmds.append(f"mammolab compare {' '.join(map(q, run_dirs))} --out {q(str(out / 'report'))}")
    return cmds


def _questions(a: Asker) -> dict[str, Any]:
    classic, models = _names()
    ans: dict[str, Any] = {}
    a.write("MammoLab wizard - press Enter to accept the [default], ? for help where offered, Ctrl-D to quit.\n")
    ans["name"] = a.ask("Experiment name", "my_study", _check_name)
    ans["out"] = a.folder("Output folder (created if missing)", ans["name"], must_exist=False)
    a.write("\nStep 1 - data")
    ans["source"] = a.choice("Where are the images", ["synthetic", "cbis-ddsm", "manifest"], "synthetic",
                             hint="synthetic: generated CBIS-DDSM-like data to try things; cbis-ddsm: your TCIA "
                                  "download; manifest: a CSV with path,label,patient_id columns")
    if ans["source"] == "synthetic":
        ans["patients"] = a.integer("Number of synthetic patients", 40, 6, 5000)
        ans["synth_size"] = a.integer("Height of the synthetic mammograms in pixels", 512, 64, 4096)
    elif ans["source"] == "cbis-ddsm":
        ans["download"] = a.folder("CBIS-DDSM download folder (the DICOM tree)", None)
        ans["csv_dir"] = a.folder("Folder with the case-description CSVs", ans["download"])
        meta = Path(ans["download"]) / "metadata.csv"
        ans["metadata"] = str(meta) if meta.is_file() and a.yes(f"Use {meta} (current NBIA layout)", True) else None
    else:
        ans["manifest"] = a.file("Manifest CSV", None)
    a.write("\nStep 2 - organize")
    ans["labels"] = a.choice("Labels", ["binary", "4class"], "binary",
                             hint="binary: benign vs malignant; 4class: mass/calcification x benign/malignant")
    if ans["source"] != "manifest":
        ans["abnormality"] = a.choice("Abnormality type", ["mass", "calc", "all"], "mass")
        ans["kind"] = a.choice("Image kind", ["crop", "roi", "full"], "crop" if ans["source"] != "synthetic" else "roi",
                               hint="crop: CBIS lesion crops; roi: square patch around each lesion (keeps its box "
                                    "for heatmap scores); full: whole mammograms")
    else:  # the manifest's images are whole films unless its boxes are to be cut out
        ans["kind"] = a.choice("Image kind", ["full", "crop", "roi"], "full",
                               hint="full: the images as they are (whole mammograms); crop: each lesion's box cut "
                                    "out; roi: a square patch around each lesion (crop and roi need the manifest's "
                                    "bbox_x0..bbox_y1 or mask columns)")
    if ans["kind"] == "roi":
        ans["roi_size"] = a.integer("ROI patch size in pixels", 224, 16, 4096)
    a.write("\nStep 3 - preprocess")
    ans["preprocess"] = "patch" if a.yes("Preprocess the images (resize, denoise, CLAHE)", True) else None
    if ans["preprocess"] and ans.get("kind") == "full":
        ans["preprocess"] = "full"
    a.write("\nStep 4 - models")
    choices = classic + [m for m in models if m not in classic]
    default = ["mammocnn", "resnet18_cft"]
    ans["models"] = a.many("Models to train (presets of the classic study first, then plain backbones)",
                           choices, default)
    ans["plain_models"] = [m for m in ans["models"] if m in models and m not in classic]
    ans["regime"] = "cft"
    if ans["plain_models"]:
        ans["regime"] = a.choice(f"Training regime for {', '.join(ans['plain_models'])}", ["opw", "pft", "cft"],
                                 "cft", hint="opw: frozen backbone, only the head trains; pft: last stages + head; "
                                             "cft: everything trains")
    ans["weights"] = a.choice("Starting weights", ["imagenet", "none"],
                              "none" if ans["source"] == "synthetic" else "imagenet",
                              hint="imagenet needs internet once (timm / Hugging Face); none = random init")
    ans["image_size"] = a.image_size("Training image size in pixels", 64 if ans["source"] == "synthetic" else 224,
                                     32, 2048)
    ans["epochs"] = a.integer("Epochs", 5 if ans["source"] == "synthetic" else 30, 1, 1000)
    from mammolab.train.options import option_lines

    a.write("Every other training option can go under train.defaults (all runs) or one run in the file, or be "
            "given as 'mammolab run FILE --set train.defaults.KEY=VALUE':")
    for line in option_lines(width=110):
        a.write(f"  {line}")
    a.write("\nStep 5 - evaluate")
    ans["tta"] = a.yes("Test-time augmentation (average over flips)", False)
    ans["explain"] = a.yes("Heatmaps (Grad-CAM) for 8 test images", True)
    return ans


def _check_name(raw: str) -> str:
    import re

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", raw):
        raise ValueError("use letters, digits, _ . - (it names a file and a folder)")
    return raw


def run_wizard(yaml_path: str | Path | None = None, asker: Asker | None = None) -> Path | None:
    """Ask, print the commands and YAML, write it, and run it if wanted; return the YAML path."""
    from mammolab.app.experiment import load_experiment

    a = asker or Asker()
    written: Path | None = None
    try:
        answers = _questions(a)
        exp = build_experiment(answers)
        load_experiment(exp)  # the same validation as 'mammolab run'
        a.write("\nThe same study, step by step:")
        for c in equivalent_commands(exp):
            a.write(f"  {c}")
        text = dump_yaml(exp)
        a.write("\nExperiment file:\n" + text)
        default_path = str(yaml_path) if yaml_path else f"{answers['name']}.yaml"
        path = Path(a.ask("Write it to", default_path, _writable_path))
        atomic_write_text(path, "# written by 'mammolab wizard'; run it with: mammolab run " + str(path) + "\n" + text)
        written = path
        a.write(f"wrote {path}")
        if a.yes("Run it now", False):
            from mammolab.app.run import run_experiment

            run_experiment(path)
        else:
            a.write(f"run it later with: mammolab run {shlex.quote(str(path))}")
        return path
    except WizardAbort:
        a.write(f"\nwizard stopped; {f'{written} was written' if written else 'nothing was written'}.")
        return written


def _writable_path(raw: str) -> str:
    p = Path(raw).expanduser()
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError("the file name should end in .yaml")
    if p.is_dir():
        raise ValueError(f"{p} is a folder")
    if not p.parent.exists():
        raise ValueError(f"folder {p.parent} does not exist")
    return str(p)
