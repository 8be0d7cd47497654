"""Human Organ Atlas datasets by name (``hoa:LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05``),
through the HOA team's package ``hoa-tools`` (the optional extra ``nnunet-vasculature[hoa]``).

The catalogue (name, voxel size, DOI, where the data lives) is hoa-tools'. The voxels are read

- from a local copy when :data:`MIRROR_ENV` names a folder laid out like the bucket
  (``$NNUNET_VASCULATURE_HOA_MIRROR/<donor>/<organ>/<dataset>/``, e.g. made with ``gcloud storage cp -r``):
  the N5 or OME-Zarr reader of this package, metadata from the store itself. A dataset hoa-tools does not
  list (a synthetic one, ``nnunet-vasculature hoa-store``) is found by its catalogue entry in the mirror,
  ``<mirror>/metadata/<name>.json`` in hoa-tools' own schema (:data:`MIRROR_CATALOGUE`);
- over the network only when asked (``remote=True``, ``predict --remote``): hoa-tools'
  ``Dataset.data_array(downsample_level=L)`` (anonymous Google Cloud Storage), spacing
  ``voxel_size_um * 2**L`` as hoa-tools states it. The storage host (or the proxy) is first connected to
  with a :data:`CONNECT_TIMEOUT_S` timeout: without network the answer is one line within seconds, not a
  minute of retries.
"""
from __future__ import annotations

import difflib
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.pyramid import BlockReader, Level, Pyramid, check_dtype, check_level_shapes
from nnunet_vasculature.io.volume_source import CATALOGUE

PREFIX = "hoa:"
MIRROR_ENV = "NNUNET_VASCULATURE_HOA_MIRROR"
INSTALL_HINT = "pip install 'nnunet-vasculature[hoa]' (hoa-tools, Python >= 3.11)"
MAX_LEVELS = 10
MIRROR_CATALOGUE = "metadata"          # <mirror>/metadata/<name>.json: catalogue entries of datasets hoa-tools lacks
CONNECT_TIMEOUT_S = 5.0
STORAGE_URL = "https://storage.googleapis.com"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"     # gcsfs's switch to another storage server (tests)


def hoa_dataset(name: str) -> Any:
    """hoa-tools' ``Dataset`` of ``name``; an unknown name is a UserError suggesting close ones.

    Args:
        name: the dataset name (without ``hoa:``).

    Returns:
        the ``hoa_tools.dataset.Dataset``.
    """
    try:
        from hoa_tools.dataset import Dataset, get_dataset
        from hoa_tools.inventory import load_inventory
    except ImportError:
        raise UserError(f"hoa:{name}: Human Organ Atlas inputs need hoa-tools: {INSTALL_HINT}") from None
    try:
        return get_dataset(name)
    except KeyError:
        catalogue = mirror_catalogue()
        entry = catalogue / f"{name}.json" if catalogue is not None else None
        if entry is not None and entry.is_file():
            try:
                return Dataset.model_validate_json(entry.read_text())
            except ValueError as e:         # pydantic's ValidationError is a ValueError
                raise UserError(f"{entry}: not a hoa-tools catalogue entry ({str(e).splitlines()[0]})") from None
        known = [str(n) for n in load_inventory().index]
        known += [f.stem for f in catalogue.glob("*.json")] if catalogue is not None else []
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            "; list them with hoa_tools.inventory.load_inventory()"
        raise UserError(f"hoa:{name}: no such Human Organ Atlas dataset{hint}") from None


def mirror_catalogue() -> Path | None:
    """The folder of catalogue entries in the local mirror (:data:`MIRROR_ENV`), None without one.

    Returns:
        ``<mirror>/metadata`` if it is a folder, else None.
    """
    mirror = os.environ.get(MIRROR_ENV)
    folder = Path(mirror) / MIRROR_CATALOGUE if mirror else None
    return folder if folder is not None and folder.is_dir() else None


def check_reachable(where: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once to the storage host (or the HTTPS proxy); failing within ``timeout`` is a UserError.

    Args:
        where: the dataset (for the message).
        timeout: seconds.
    """
    url = urllib.request.getproxies().get("https") or os.environ.get(EMULATOR_ENV) or STORAGE_URL
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise UserError(f"{where}: cannot reach {host}:{port} within {timeout:g} s ({reason}); no network? "
                        f"Read it from a local copy under ${MIRROR_ENV} instead") from None


def provenance(dataset: Any) -> dict:
    """What outputs record about an HOA dataset (name, DOI, voxel size, where it lives, organ, donor).

    Args:
        dataset: hoa-tools' ``Dataset``.

    Returns:
        a JSON-able dict.
    """
    return {"dataset": dataset.name, "doi": dataset.citation.doi, "url": dataset.data.gcs_url,
            "voxel_size_um": float(dataset.data.voxel_size_um), "organ": str(dataset.sample.organ),
            "organ_context": dataset.sample.organ_context, "donor": dataset.donor.id,
            "catalogue": "hoa-tools"}


def _store_format(url: str) -> tuple[str, str]:
    """(``"n5"`` or ``"zarr"``, path inside the bucket) of a ``n5://gs://BUCKET/PATH`` URL."""
    for fmt in ("n5", "zarr"):
        prefix = f"{fmt}://gs://"
        if url.startswith(prefix):
            return fmt, url.removeprefix(prefix).split("/", 1)[1].strip("/")
    raise UserError(f"{url}: not an n5:// or zarr:// Google Cloud Storage URL")


def mirror_path(dataset: Any, mirror: Path) -> Path:
    """Where the local copy of ``dataset`` lies under a mirror of the bucket.

    Args:
        dataset: hoa-tools' ``Dataset``.
        mirror: the mirror's root.

    Returns:
        ``mirror/<path in the bucket>``.
    """
    return Path(mirror) / _store_format(dataset.data.gcs_url)[1]


def read_hoa(name: str, remote: bool = False) -> Pyramid:
    """The levels of the HOA dataset ``name``: from the local mirror (:data:`MIRROR_ENV`) if it holds it,
    else over the network when ``remote``, else a UserError saying how to get it.

    Args:
        name: the dataset name (``hoa:`` removed).
        remote: allow reading from Google Cloud Storage.

    Returns:
        the pyramid, with the dataset's provenance.
    """
    dataset = hoa_dataset(name)
    fmt, _ = _store_format(dataset.data.gcs_url)
    info = provenance(dataset)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and mirror_path(dataset, Path(mirror)).is_dir():
        local = mirror_path(dataset, Path(mirror))
        if fmt == "n5":
            from nnunet_vasculature.io.n5 import read_n5
            pyramid = read_n5(local, name)
        else:
            from nnunet_vasculature.io.omezarr import read_omezarr
            pyramid = read_omezarr(local, name)
        spacing0 = pyramid.levels[0].spacing
        if max(abs(s / info["voxel_size_um"] - 1) for s in spacing0) > 0.01:
            info["note"] = f"store spacing {spacing0} µm differs from the catalogue's {info['voxel_size_um']} µm"
        return Pyramid(name, f"hoa:{name} ({local})", f"HOA {pyramid.kind}", pyramid.levels,
                       {**pyramid.provenance, **info, "read_from": str(local)}, pyramid.files)
    if not remote:
        where = f"; or copy it under ${MIRROR_ENV}" if not mirror else \
            f"; it is not under ${MIRROR_ENV} ({mirror_path(dataset, Path(mirror))})"
        raise UserError(f"hoa:{name}: stored remotely ({dataset.data.gcs_url}); pass --remote to read it over "
                        f"the network{where}")
    check_reachable(f"hoa:{name}")
    levels = _remote_levels(dataset, fmt)
    check_level_shapes(levels, f"hoa:{name}")
    return Pyramid(name, f"hoa:{name}", f"HOA {'N5' if fmt == 'n5' else 'OME-Zarr'} (remote)", levels,
                   {**info, "read_from": dataset.data.gcs_url}, spacing_source=CATALOGUE)


def _remote_levels(dataset: Any, fmt: str) -> list[Level]:
    """Levels 0, 1, ... of hoa-tools' ``data_array`` until one is missing."""
    levels: list[Level] = []
    voxel = float(dataset.data.voxel_size_um)
    for index in range(MAX_LEVELS):
        try:
            array = dataset.data_array(downsample_level=index)
        except (KeyError, RuntimeError, FileNotFoundError) as e:
            if index == 0:
                raise UserError(f"hoa:{dataset.name}: level 0 not found at {dataset.data.gcs_url} "
                                f"({type(e).__name__}: {e})") from None
            break
        except Exception as e:      # no network: aiohttp / gcsfs / OS errors
            raise UserError(f"hoa:{dataset.name}: cannot read {dataset.data.gcs_url} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); no network?") from None
        if tuple(array.dims) != ("z", "y", "x"):
            raise UserError(f"hoa:{dataset.name}: hoa-tools gives dims {array.dims}; expected (z, y, x)")
        spacing = voxel * 2 ** index
        translation = 0.5 * spacing if fmt == "zarr" else (2 ** index - 1) / 2 * voxel
        levels.append(Level(str(index), tuple(int(s) for s in array.shape), (spacing,) * 3, (translation,) * 3,
                            int(array.data.chunks[0][0]), check_dtype(array.dtype, f"hoa:{dataset.name}"),
                            _opener(array)))
    return levels


def _opener(array: Any) -> Any:
    def open_reader() -> BlockReader:
        def read(z0: int, z1: int) -> np.ndarray:
            try:
                return np.ascontiguousarray(array.data[z0:z1].compute())
            except Exception as e:      # network faults while reading
                raise UserError(f"hoa:{array.name}: reading planes {z0}..{z1 - 1} failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
        return read
    return open_reader


__all__ = ["PREFIX", "MIRROR_ENV", "MIRROR_CATALOGUE", "INSTALL_HINT", "CONNECT_TIMEOUT_S", "hoa_dataset",
           "mirror_catalogue", "check_reachable", "provenance", "mirror_path", "read_hoa"]
