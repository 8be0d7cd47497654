"""The record an exported model carries beside nnU-Net's own files, and the checks made when it is read.

An exported model folder (``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``, as stock
``nnUNetv2_install_pretrained_model_from_zip`` unpacks it) holds, besides nnU-Net's files, a folder
:data:`EXTRA_DIR` with:

- ``export.json`` (:data:`RECORD_FILE`): the format (:data:`FORMAT`), the competition, the plugin version
  that exported it (``plugin.version``: a model is refused by an older plugin), nnU-Net's version, the model
  (dataset, trainer, plans, configuration, folds, checkpoint), the post-processing file, the intensity
  mapping of a ``--percentile_norm`` dataset (also in the model's ``dataset.json``, where ``predict`` reads
  it), the trainer's module when it is one of this package's, and the source-model record (the plans'
  ``transfer_source``, with the known download it matches, if any);
- ``postprocessing.json`` (SenNet's ``tune`` output), when exported with ``-pp``;
- ``ext/`` (:data:`EXT_DIR`): one uniquely named module importing the trainer class from the installed
  package, so that stock ``nnUNetv2_predict`` finds it with ``nnUNet_extTrainer`` pointing there.

Nothing here imports torch or nnU-Net: the checks run before any heavy work.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_vasculature.errors import UserError

EXTRA_DIR = "nnunet_vasculature"
RECORD_FILE = "export.json"
POSTPROCESSING_FILE = "postprocessing.json"
EXT_DIR = "ext"
FORMAT = "nnunet-vasculature-model/1"
COMPETITION = "sennet"          # the competition whose submission an exported model makes


def installed_version() -> str:
    """The version of the installed nnunet-vasculature.

    Returns:
        The package's ``__version__``.
    """
    from nnunet_vasculature import __version__
    return __version__


def check_plugin_version(needed: str, where: str, installed: str | None = None) -> None:
    """A one-line UserError when ``needed`` is newer than the installed plugin.

    Args:
        needed: the plugin version the model was exported with.
        where: the file named in the message.
        installed: the installed version (default: this package's).
    """
    from packaging.version import InvalidVersion, Version
    installed = installed or installed_version()
    try:
        newer = Version(str(needed)) > Version(installed)
    except InvalidVersion:
        raise UserError(f"{where}: plugin version {needed!r} is not a version number") from None
    if newer:
        raise UserError(f"{where}: exported by nnunet-vasculature {needed}, newer than the installed {installed}; "
                        f"install nnunet-vasculature>={needed} (e.g. from the bundle made with that version)")


def parse_record(text: str, where: str, installed: str | None = None) -> dict:
    """An ``export.json``'s content, checked: its format, and a plugin version not newer than the installed one.

    Args:
        text: the file's text.
        where: the file named in messages.
        installed: the installed plugin version (default: this package's).

    Returns:
        The record.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{where}: not an nnunet-vasculature model record (format "
                        f"{record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT!r})")
    version = (record.get("plugin") or {}).get("version")
    if not isinstance(version, str):
        raise UserError(f"{where}: no plugin.version")
    check_plugin_version(version, where, installed)
    return record


def read_record(model_folder: Path) -> dict | None:
    """The export record of a model folder, checked (:func:`parse_record`); None for a model that was not
    exported by this package (a folder trained here, or any stock nnU-Net model).

    Args:
        model_folder: the model folder.

    Returns:
        The record or None.
    """
    path = Path(model_folder) / EXTRA_DIR / RECORD_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return parse_record(text, str(path))


def model_postprocessing(model_folder: Path) -> Path | None:
    """The postprocessing.json an exported model carries, or None.

    Args:
        model_folder: the model folder.

    Returns:
        Its path, or None when the model carries none.
    """
    record = read_record(model_folder)
    if record is None or not record.get("postprocessing"):
        return None
    return Path(model_folder) / EXTRA_DIR / record["postprocessing"]


__all__ = ["EXTRA_DIR", "RECORD_FILE", "POSTPROCESSING_FILE", "EXT_DIR", "FORMAT", "COMPETITION",
           "installed_version", "check_plugin_version", "parse_record", "read_record", "model_postprocessing"]
