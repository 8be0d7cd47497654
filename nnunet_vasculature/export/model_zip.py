"""``nnunet-vasculature export-model``: a trained model as a zip in nnU-Net's own export layout, plus what
this package's ``predict``/``submit`` need where the model goes (a Kaggle notebook).

The zip's members are those stock ``nnUNetv2_export_model_to_zip`` writes, relative to ``$nnUNet_results``
(``DatasetXXX_Name/<trainer>__<plans>__<configuration>/{plans.json, dataset.json, dataset_fingerprint.json,
fold_F/<checkpoint>, fold_F/debug.json, fold_F/progress.png, fold_F/validation/summary.json}``, each only
where it exists: a model whose final validation was skipped has no ``summary.json`` and is exported all the
same), so stock ``nnUNetv2_install_pretrained_model_from_zip`` installs it; plus the record folder of
:mod:`nnunet_vasculature.io.model_record` (``export.json``, ``postprocessing.json``, ``ext/``).

Checks, cheap ones first: every requested fold's checkpoint exists (one line naming what is present); the
postprocessing.json is SenNet's (a ``competition`` key other than ``sennet`` is refused; a file without the
key must have SenNet's schema); each checkpoint is read weights-only (a file holding code is refused).

:func:`install_model_zip` is this package's installer (the Kaggle script uses it): members are checked
against path traversal and links, their sizes by the archive checks of ``import-pretrained``
(:mod:`nnunet_vasculature.pretrained.archive`: compression ratio, per-member and total inflated size, from
the zip's directory before anything is extracted), the record's plugin version against the installed one,
and the model folder appears under ``$nnUNet_results`` only complete.
"""
from __future__ import annotations

import argparse
import json
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from nnunet_vasculature.errors import UserError, atomic_dir, atomic_file
from nnunet_vasculature.io.model_record import (
    COMPETITION,
    EXT_DIR,
    EXTRA_DIR,
    FORMAT,
    POSTPROCESSING_FILE,
    RECORD_FILE,
    installed_version,
    parse_record,
)
from nnunet_vasculature.pretrained.archive import ArchiveLimits, check_zip_members, unsafe_member_name

FOLD_FILES = ("debug.json", "progress.png", "network_architecture.pdf", "validation/summary.json")
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
EXT_MODULE = "nnunet_vasculature_exported_trainer.py"


def check_postprocessing(path: Path) -> dict:
    """A postprocessing.json fit for the SenNet export: its ``competition`` is ``sennet`` (or absent, with
    SenNet's schema as ``tune`` writes it).

    Args:
        path: the file (``-pp``).

    Returns:
        The file's JSON content (unchanged, so the zip carries it as ``tune`` wrote it).
    """
    from nnunet_vasculature.postprocess.sennet import load_mask_rule
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: not a postprocessing.json (a JSON object is expected)")
    competition = content.get("competition")
    if competition is not None and competition != COMPETITION:
        raise UserError(f"{path}: post-processing of competition '{competition}', not '{COMPETITION}': "
                        f"export-model makes SenNet submissions (tune it with 'tune sennet')")
    load_mask_rule(path)          # SenNet's schema and consistent fields, or a one-line error
    return content


def _trainer_module(trainer_name: str) -> dict | None:
    """The module of this package that defines ``trainer_name``, or None for nnU-Net's own trainers (a
    trainer of neither is a warning: the place the model goes must have it)."""
    import importlib
    import os

    from nnunet_vasculature.trainers import ext_trainer_value
    ours = importlib.import_module("nnunet_vasculature.trainers.ext.nnunet_vasculature_ext_trainers")
    if trainer_name in ours.__all__:          # ours: no need for nnU-Net's (slow) search of every trainer
        module = getattr(ours, trainer_name).__module__
    elif trainer_name == "nnUNetTrainer":       # nnU-Net's default trainer (the search imports every variant)
        module = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
    else:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        os.environ["nnUNet_extTrainer"] = ext_trainer_value()
        try:
            module = recursive_find_trainer_class_by_name(trainer_name).__module__
        except RuntimeError:
            raise UserError(f"trainer {trainer_name} (of the checkpoint) is not found in nnU-Net or "
                            f"$nnUNet_extTrainer: install the package that defines it before exporting") from None
    if module.startswith("nnunetv2."):
        return None
    if not module.startswith("nnunet_vasculature."):
        print(f"warning: trainer {trainer_name} comes from {module}, which is neither nnU-Net's nor this "
              f"package's: the zip does not carry it; where the model is used, {module} must be importable")
        return {"module": module, "class": trainer_name, "carried": False}
    return {"module": module, "class": trainer_name, "carried": True,
            "ext_module": f"{EXTRA_DIR}/{EXT_DIR}/{EXT_MODULE}"}


def _ext_module_source(trainer: dict) -> str:
    return (f'"""nnU-Net\'s nnUNet_extTrainer entry for this exported model: point nnUNet_extTrainer at this folder '
            f'so that\nstock nnUNetv2_predict finds {trainer["class"]} (nnunet-vasculature must be installed)."""\n'
            f"from {trainer['module']} import {trainer['class']}\n\n__all__ = [\"{trainer['class']}\"]\n")


def _source_model(plans: dict) -> dict | None:
    """The plans' ``transfer_source`` (written by import-pretrained), with its known download where it is one."""
    from nnunet_vasculature.pretrained.known_sources import KNOWN_DOWNLOADS
    source = plans.get("transfer_source")
    if not isinstance(source, dict):
        return None
    source = dict(source)
    known = KNOWN_DOWNLOADS.get(PurePosixPath(str(source.get("file", ""))).name)
    if known is not None:
        source["known_download"] = {"record": known.record_url, "file_url": known.file_url}
    return source


def export_model(model_folder: Path, folds: Sequence[int | str], out_zip: Path,
                 checkpoint: str = "checkpoint_final.pth", postprocessing: Path | None = None) -> dict:
    """Write ``out_zip`` (see the module's description).

    Args:
        model_folder: the trained model folder (``<trainer>__<plans>__<configuration>``).
        folds: the folds to export (each needs ``fold_F/<checkpoint>``).
        out_zip: the zip to write (written under a temporary name, renamed when complete).
        checkpoint: the checkpoint file name (``-chk``).
        postprocessing: SenNet's postprocessing.json from ``tune`` (recommended: without it the Kaggle script
            cannot make a submission).

    Returns:
        The record written as ``export.json``.
    """
    from nnunet_vasculature.inference.model import check_model_folder, read_checkpoint
    from nnunet_vasculature.io.intensity import KEY as INTENSITY_KEY
    from nnunet_vasculature.io.intensity import PercentileMapping
    folder = Path(model_folder)
    folds = [str(f) for f in folds]
    if len(set(folds)) != len(folds):
        raise UserError(f"-f {' '.join(folds)}: a fold is given twice")
    check_model_folder(folder, folds, checkpoint)
    pp_content = check_postprocessing(postprocessing) if postprocessing is not None else None
    if Path(out_zip).suffix.lower() != ".zip":
        raise UserError(f"{out_zip}: the output must be a .zip file")
    try:
        plans = json.loads((folder / "plans.json").read_text())
        dataset_json = json.loads((folder / "dataset.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{folder}: plans.json or dataset.json is not JSON ({e.msg})") from None
    dataset_name = str(plans.get("dataset_name", ""))
    if not DATASET_NAME.match(dataset_name):
        raise UserError(f"{folder / 'plans.json'}: dataset_name '{dataset_name}' is not nnU-Net's DatasetXXX_Name")
    mapping = dataset_json.get(INTENSITY_KEY)
    if mapping is not None:
        PercentileMapping.from_json(mapping, str(folder / "dataset.json"))     # one this version can apply
    checkpoints = {f: read_checkpoint(folder / f"fold_{f}" / checkpoint) for f in folds}
    trainers = {c["trainer_name"] for c in checkpoints.values()}
    configurations = {c["init_args"]["configuration"] for c in checkpoints.values()}
    if len(trainers) > 1 or len(configurations) > 1:
        raise UserError(f"{folder}: the folds' checkpoints come from different trainers or configurations "
                        f"({', '.join(sorted(trainers | configurations))})")
    trainer_name, configuration = trainers.pop(), configurations.pop()
    plans_name = str(plans.get("plans_name", ""))
    if configuration not in plans.get("configurations", {}) or not plans_name:
        raise UserError(f"{folder / 'plans.json'}: no plans_name or no configuration '{configuration}' "
                        f"(the checkpoints' configuration)")
    trainer = _trainer_module(trainer_name)
    import nnunetv2
    root = PurePosixPath(dataset_name) / f"{trainer_name}__{plans_name}__{configuration}"
    record = {
        "format": FORMAT, "competition": COMPETITION,
        "plugin": {"name": "nnunet-vasculature", "version": installed_version()},
        "nnunetv2": getattr(nnunetv2, "__version__", None) or _dist_version("nnunetv2"),
        "model": {"dataset": dataset_name, "trainer": trainer_name, "plans": plans_name,
                  "configuration": configuration, "folds": folds, "checkpoint": checkpoint,
                  "exported_from": str(folder.resolve())},
        "postprocessing": POSTPROCESSING_FILE if pp_content is not None else None,
        "intensity_mapping": mapping,
        "trainer_module": trainer,
        "source_model": _source_model(plans),
    }
    members: list[tuple[Path, PurePosixPath]] = []
    for name in MODEL_FILES:
        if (folder / name).is_file():
            members.append((folder / name, root / name))
    for f in folds:
        for name in (checkpoint, *FOLD_FILES):
            if (folder / f"fold_{f}" / name).is_file():
                members.append((folder / f"fold_{f}" / name, root / f"fold_{f}" / name))
    out_zip = Path(out_zip)
    with atomic_file(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for src, arcname in members:
            zf.write(src, str(arcname))
        zf.writestr(str(root / EXTRA_DIR / RECORD_FILE), json.dumps(record, indent=1))
        if pp_content is not None:
            zf.writestr(str(root / EXTRA_DIR / POSTPROCESSING_FILE), json.dumps(pp_content, indent=1))
        if trainer is not None and trainer["carried"]:
            zf.writestr(str(root / trainer["ext_module"]), _ext_module_source(trainer))
    size = out_zip.stat().st_size
    print(f"wrote {out_zip} ({size / 2**20:.1f} MiB): {root}, folds {', '.join(folds)}, {checkpoint}"
          + ("" if pp_content is not None else "; no postprocessing.json (-pp): the Kaggle script will refuse it"))
    return record


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _checked_members(zf: zipfile.ZipFile, where: str, limits: ArchiveLimits = ArchiveLimits()
                     ) -> tuple[PurePosixPath, list[zipfile.ZipInfo]]:
    """The model root of an exported zip and its members, each checked to stay inside it, and their sizes
    (ratio, per member, total) by the archive checks ``import-pretrained`` uses."""
    infos = zf.infolist()
    for info in infos:
        mode = info.external_attr >> 16
        if "\\" in info.filename or unsafe_member_name(info.filename):
            raise UserError(f"{where}: member '{info.filename}' would be written outside the results folder: refused")
        if stat.S_ISLNK(mode):
            raise UserError(f"{where}: member '{info.filename}' is a symbolic link: refused")
    records = [PurePosixPath(i.filename) for i in infos
               if PurePosixPath(i.filename).parts[2:] == (EXTRA_DIR, RECORD_FILE)]
    if len(records) != 1:
        raise UserError(f"{where}: not a model zip of nnunet-vasculature export-model "
                        f"({len(records)} {EXTRA_DIR}/{RECORD_FILE} records, expected 1)")
    root = PurePosixPath(*records[0].parts[:2])
    outside = [i.filename for i in infos if PurePosixPath(i.filename).parts[:2] != root.parts]
    if outside:
        raise UserError(f"{where}: member '{outside[0]}' is outside the model folder {root}: refused")
    check_zip_members(infos, where, limits)
    return root, infos


def read_zip_record(zip_path: Path, limits: ArchiveLimits = ArchiveLimits()) -> tuple[PurePosixPath, dict]:
    """The model folder (relative to ``$nnUNet_results``) and the checked record of an exported zip.

    Args:
        zip_path: the zip.
        limits: the archive caps.

    Returns:
        (root, record); a one-line UserError for a zip that is not one, has unsafe members, or was exported
        by a newer plugin than the installed one.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            root, _ = _checked_members(zf, str(zip_path), limits)
            text = zf.read(str(root / EXTRA_DIR / RECORD_FILE)).decode()
    except FileNotFoundError:
        raise UserError(f"{zip_path}: no such file") from None
    except (zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise UserError(f"{zip_path}: not a readable zip ({e})") from None
    return root, parse_record(text, f"{zip_path}:{root / EXTRA_DIR / RECORD_FILE}")


def install_model_zip(zip_path: Path, results: Path, overwrite: bool = False,
                      limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Install an exported model under ``results`` as stock nnU-Net does (same layout), with the checks of
    the module's description.

    Args:
        zip_path: the zip from :func:`export_model`.
        results: the ``$nnUNet_results`` folder to install into.
        overwrite: replace an installed model of the same name.
        limits: the archive caps (:mod:`nnunet_vasculature.pretrained.archive`'s constants by default).

    Returns:
        The installed model folder.
    """
    zip_path = Path(zip_path)
    root, record = read_zip_record(zip_path, limits)
    target = Path(results) / root
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf, atomic_dir(target, overwrite) as tmp:
        _, infos = _checked_members(zf, str(zip_path), limits)
        for info in infos:
            rel = PurePosixPath(info.filename).relative_to(root)
            if info.is_dir() or not rel.parts:
                continue
            dest = tmp.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                while block := src.read(1 << 22):
                    out.write(block)
    print(f"installed {zip_path.name} -> {target} (exported by nnunet-vasculature {record['plugin']['version']}, "
          f"folds {', '.join(record['model']['folds'])})")
    return target


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export-model``.

    Args:
        sub: the CLI's sub-command parsers.
    """
    p = sub.add_parser("export-model", help="zip a trained model (nnU-Net's export layout) with its post-processing "
                                            "for a Kaggle notebook",
                       description="Zip a trained model in nnU-Net's export layout (installable with "
                                   "nnUNetv2_install_pretrained_model_from_zip), with the postprocessing.json, the "
                                   "intensity mapping, the trainer's module and the source-model record.")
    p.add_argument("-m", dest="model_folder", type=Path, help="model folder (instead of -d/-c/-tr/-p)")
    p.add_argument("-d", dest="dataset_id", help="dataset ID/name of the trained model")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainer", default="VesselTransferTrainer")
    p.add_argument("-p", dest="plans", default="nnUNetPlans_Task008")
    p.add_argument("-f", dest="folds", nargs="+", required=True, help="folds to export (e.g. 0 or 0 1 2 3 4 or all)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    p.add_argument("-pp", dest="postprocessing", type=Path, help="SenNet postprocessing.json from 'tune'")
    p.add_argument("-o", dest="output", type=Path, required=True, help="MODEL.zip to write")

    def run(a: argparse.Namespace) -> None:
        if (a.model_folder is None) == (a.dataset_id is None):
            raise UserError("give -m MODEL_FOLDER or -d ID (with -c/-tr/-p), not both")
        from nnunet_vasculature.inference.model import model_folder_from_args
        folder = a.model_folder or model_folder_from_args(a.dataset_id, a.configuration, a.trainer, a.plans)
        export_model(folder, a.folds, a.output, a.checkpoint, a.postprocessing)

    p.set_defaults(func=run)


__all__ = ["check_postprocessing", "export_model", "read_zip_record", "install_model_zip", "add_parser"]
