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
  ``voxel_size_um * 2**L`` as hoa-tools states it. The storage host is first asked once over HTTP (through
  the proxy of the environment, ``HTTPS_PROXY`` / ``NO_PROXY``, as the reads go) with a
  :data:`CONNECT_TIMEOUT_S` timeout: without network, or where the host or proxy accepts the connection but
  never answers, the answer is one line within seconds, not a minute of retries or a silent wait. The reads
  themselves get a :data:`READ_TIMEOUT_S` timeout per request (no bytes for that long: gcsfs retries, then
  fails) through fsspec's configuration of the ``gcs`` filesystems, which hoa-tools' ``GCSFileSystem`` takes.
"""
from __future__ import annotations

import difflib
import http.client
import os
import urllib.error
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
CONNECT_TIMEOUT_S = 5.0                 # the reachability probe: connecting, and then its answer
READ_TIMEOUT_S = 30.0                   # a remote read: connecting, and then each wait for bytes
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


def check_reachable(where: str, timeout: float = CONNECT_TIMEOUT_S, path: str = "/storage/v1/b") -> None:
    """Ask the storage host once over HTTP, through the environment's proxy as the remote reads do; no HTTP
    answer within ``timeout`` (no connection, or a host or proxy that accepts it and stays silent) is a
    UserError. Any HTTP status is an answer: the host is there.

    Args:
        where: the dataset (for the message).
        timeout: seconds to connect, and again to wait for the answer.
        path: the request's path and query on the storage host (e.g. a listing of the dataset's folder).
    """
    endpoint = os.environ.get(EMULATOR_ENV) or STORAGE_URL
    endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    proxy = proxy if proxy and not urllib.request.proxy_bypass(host) else None
    reached = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else parts
    target = f"{'the proxy ' if proxy else ''}{reached.hostname or ''}:" \
             f"{reached.port or (443 if reached.scheme == 'https' else 80)}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({parts.scheme: proxy} if proxy else {}))
    try:
        with opener.open(endpoint.rstrip("/") + path, timeout=timeout):
            return
    except urllib.error.HTTPError as e:         # an answer, whatever its status
        e.close()
        return
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            reason = "no answer"
        elif isinstance(reason, http.client.RemoteDisconnected):
            reason = "the connection was closed without an answer"
        else:
            reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise UserError(f"{where}: cannot reach {target} within {timeout:g} s ({reason}); no network? "
                        f"Read it from a local copy under ${MIRROR_ENV} instead") from None


def configure_remote_reads(timeout: float = READ_TIMEOUT_S) -> None:
    """Defaults for the Google Cloud Storage filesystems hoa-tools opens, set in fsspec's configuration
    (``fsspec.config.conf``, the kwargs every new ``gs``/``gcs`` filesystem starts from): a request timeout
    (``timeout`` seconds to connect and to wait for each piece of the answer) and the environment's proxy
    settings (aiohttp's ``trust_env``). Values already configured there are kept. gcsfs' own log lines (a
    traceback per failed retry) go nowhere unless ``NNUNET_VASCULATURE_VERBOSE=1``: the error that ends the
    run is one line.

    Args:
        timeout: seconds.
    """
    import logging

    import aiohttp
    from fsspec.config import conf

    from nnunet_vasculature.errors import VERBOSE_ENV
    if os.environ.get(VERBOSE_ENV) != "1":
        logging.getLogger("gcsfs").propagate = False    # its records reach no handler (once, however often called)
    wanted = {"requests_timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
              "session_kwargs": {"trust_env": True}}
    configured = {key for protocol in ("gs", "gcs") for key in conf.get(protocol, {})}
    conf.setdefault("gcs", {}).update({key: value for key, value in wanted.items() if key not in configured})


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
    bucket, _, inside = dataset.data.gcs_url.split("://gs://", 1)[1].partition("/")
    check_reachable(f"hoa:{name}", path=f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?"
                    f"{urllib.parse.urlencode({'prefix': inside, 'maxResults': 1})}")
    configure_remote_reads()
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
            raise UserError(f"hoa:{dataset.name}: cannot read {dataset.data.gcs_url} ({_fault(e)}); "
                            f"no network?") from None
        if tuple(array.dims) != ("z", "y", "x"):
            raise UserError(f"hoa:{dataset.name}: hoa-tools gives dims {array.dims}; expected (z, y, x)")
        spacing = voxel * 2 ** index
        translation = 0.5 * spacing if fmt == "zarr" else (2 ** index - 1) / 2 * voxel
        levels.append(Level(str(index), tuple(int(s) for s in array.shape), (spacing,) * 3, (translation,) * 3,
                            int(array.data.chunks[0][0]), check_dtype(array.dtype, f"hoa:{dataset.name}"),
                            _opener(array)))
    return levels


def _fault(error: Exception) -> str:
    """One line for a failed remote read; a timeout (fsspec's FSTimeoutError is one) says how long it waited."""
    if isinstance(error, TimeoutError):
        return f"no answer within {READ_TIMEOUT_S:g} s, after gcsfs' retries"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'}"


def _opener(array: Any) -> Any:
    def open_reader() -> BlockReader:
        def read(z0: int, z1: int) -> np.ndarray:
            try:
                return np.ascontiguousarray(array.data[z0:z1].compute())
            except Exception as e:      # network faults while reading
                raise UserError(f"hoa:{array.name}: reading planes {z0}..{z1 - 1} failed ({_fault(e)})") from None
        return read
    return open_reader


__all__ = ["PREFIX", "MIRROR_ENV", "MIRROR_CATALOGUE", "INSTALL_HINT", "CONNECT_TIMEOUT_S", "READ_TIMEOUT_S",
           "hoa_dataset", "mirror_catalogue", "check_reachable", "configure_remote_reads", "provenance",
           "mirror_path", "read_hoa"]
