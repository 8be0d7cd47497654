"""``nnunet-vasculature view``: look at a ``predict`` output in Neuroglancer, where the Human Organ Atlas shows
its data.

Serves the ``.ome.zarr`` output (and, with ``--source``, the OME-Zarr or HOA-layout N5 it was predicted from) and
the Neuroglancer client that the ``neuroglancer`` Python package ships (its static files; nothing is fetched from
the network) from one :class:`http.server.ThreadingHTTPServer` on 127.0.0.1, and prints the link whose state
fragment holds the layers: the source image (grey), the probabilities (an image layer, transparent where 0) and
``labels/vessels`` (a segmentation layer in the label image's colour). Every data response carries
``Access-Control-Allow-Origin: *`` and byte ranges are served (sharded or remote-style readers ask for them), so
the same URLs also open in any other Neuroglancer. Sources are ``zarr2://`` (NGFF 0.4) or ``zarr3://`` (NGFF 0.5)
URLs; Neuroglancer places each by its NGFF scale and translation and matches axes by name, so a HOA source stored
(x, y, z) overlays the output. An N5 source (recognised and read as ``predict`` reads it:
:mod:`nnunet_vasculature.io.n5`) is an ``n5://`` URL; Neuroglancer takes its voxel size from the N5 attributes and
puts voxel ``i`` on ``[i, i + 1)`` (a corner origin), so the layer's transform moves it by the reader's translation
less half a voxel, to where ``predict`` (and the output's NGFF translation, of voxel centres) has it.

The shipped client is the one the ``neuroglancer`` package's own viewer uses: it is served under ``/v/<token>/``
and listens to ``/events/<token>``, which this server keeps open and silent (the state comes from the link).
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.n5 import is_n5, read_n5

HELP = ("serve a predict output (.ome.zarr, with its labels/vessels and optionally the source OME-Zarr or N5) "
        "on 127.0.0.1 and print the Neuroglancer link showing them (pip install -e '.[view]')")
HOST = "127.0.0.1"
TOKEN = "nnunet-vasculature"          # the client's path /v/<token>/ (the python client needs one)
LAYOUTS = ("xy", "xz", "yz", "4panel", "3d")
UNITS = {"micrometer": 1e-6, "nanometer": 1e-9, "millimeter": 1e-3, "meter": 1.0, "angstrom": 1e-10}
PROBABILITY_SHADER = """#uicontrol invlerp normalized(range=[0, 255])
#uicontrol vec3 color color(default="#00e5ff")
void main() {
  float value = clamp(normalized(), 0.0, 1.0);
  emitRGBA(vec4(color, value));
}
"""
CONTENT_TYPES = {".js": "application/javascript", ".wasm": "application/wasm", ".css": "text/css",
                 ".html": "text/html", ".map": "application/json", ".json": "application/json"}
KEEPALIVE_SECONDS = 10.0
FIT_PIXELS = 640            # the initial zoom fits the output's larger side in this many screen pixels


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``view``.

    Args:
        sub: the top-level sub-parsers.
    """
    p = sub.add_parser("view", help=HELP, description=HELP)
    p.add_argument("-i", "--input", required=True, type=Path, help="the .ome.zarr written by predict")
    p.add_argument("--source", type=Path, help="the OME-Zarr or HOA-layout N5 folder the output was predicted from "
                   "(shown under it)")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free one)")
    p.add_argument("--layout", choices=LAYOUTS, default="xy", help="Neuroglancer layout (default xy)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Check the stores, start the server, print the link, serve until Ctrl-C.

    Args:
        args: the parsed ``view`` arguments.
    """
    output = read_image(args.input)
    if output["format"] != "ngff":
        raise UserError(f"{args.input}: an N5 folder; -i takes the .ome.zarr that predict wrote (an N5 goes in "
                        "--source)")
    source = read_image(args.source) if args.source is not None else None
    client = client_folder()
    server = make_server({"output": args.input, **({"source": args.source} if args.source else {})},
                         client, args.port, verbose=args.verbose)
    port = server.server_address[1]
    link = viewer_link(viewer_state(output, source, port, args.layout), port)
    if not output["has_labels"]:
        print(f"note: {args.input} has no labels/vessels (run apply to write it); showing the probabilities only")
    print(f"serving {args.input}{f' and {args.source}' if args.source else ''} on http://{HOST}:{port} "
          "(Ctrl-C to stop)")
    print(f"Neuroglancer: {link}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


def client_folder() -> Path:
    """The Neuroglancer client shipped inside the installed ``neuroglancer`` package.

    Returns:
        the folder holding its ``index.html``.

    Raises:
        UserError: the package is not installed, or holds no client.
    """
    import importlib.util
    spec = importlib.util.find_spec("neuroglancer")      # located, not imported (its viewer is not needed)
    if spec is None or spec.origin is None:
        raise UserError("view needs the package 'neuroglancer' (pip install -e '.[view]')")
    folder = Path(spec.origin).parent / "static" / "client"
    if not (folder / "index.html").is_file():
        raise UserError(f"{folder}: the neuroglancer package holds no client (reinstall it: pip install -e '.[view]')")
    return folder


# ---- the stores ------------------------------------------------------------------------------------------
def _attributes(path: Path) -> tuple[dict, str] | None:
    """An NGFF image's attributes and version from its metadata file (zarr format 2 or 3), or None."""
    for name in (".zattrs", "zarr.json"):
        try:
            attrs = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if name == "zarr.json":
            attrs = attrs.get("attributes", {}) if isinstance(attrs, dict) else {}
        if isinstance(attrs, dict) and isinstance(attrs.get("ome"), dict):
            return attrs["ome"], str(attrs["ome"].get("version", "0.5"))
        if isinstance(attrs, dict) and isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
            return attrs, str(attrs["multiscales"][0].get("version", "0.4"))
    return None


def _array_metadata(path: Path) -> dict:
    for name in (".zarray", "zarr.json"):
        try:
            return json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
    raise UserError(f"{path}: no zarr array metadata (.zarray or zarr.json)")


def read_image(path: Path) -> dict:
    """What the link needs from an NGFF image or an N5 multiscale folder: format, version, axes, level 0's scale,
    translation and shape.

    Args:
        path: an OME-Zarr image folder, or an N5 multiscale folder in the Human Organ Atlas layout.

    Returns:
        ``{"path", "format" ("ngff" or "n5"), "version", "axes" (names), "units", "scale", "translation",
        "shape", "has_labels", "label_colour", "window"}`` (``window``: the display range from ``omero``, or
        None); an N5 folder's are per stored axis, in micrometres, as ``predict`` reads them.

    Raises:
        UserError: neither an NGFF multiscale image nor an N5 multiscale folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not found (expected an .ome.zarr folder)")
    found = _attributes(path)
    if found is None and is_n5(path):
        return _read_n5(path)
    if found is None:
        raise UserError(f"{path}: not an NGFF OME-Zarr image (no multiscales in .zattrs or zarr.json) nor an N5 "
                        "folder (no attributes.json)")
    attrs, version = found
    multiscale = attrs["multiscales"][0]
    try:
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in multiscale["axes"]]
        units = [a.get("unit") if isinstance(a, dict) else None for a in multiscale["axes"]]
        level0 = multiscale["datasets"][0]
        transforms = list(multiscale.get("coordinateTransformations", [])) + list(level0["coordinateTransformations"])
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{path}: NGFF multiscales without axes or datasets") from None
    scale, translation = [1.0] * len(axes), [0.0] * len(axes)
    for transform in transforms:          # applied in order: a translation listed first is scaled
        if transform.get("type") == "scale":
            scale = [s * f for s, f in zip(scale, transform["scale"])]
            translation = [t * f for t, f in zip(translation, transform["scale"])]
        elif transform.get("type") == "translation":
            translation = [t + d for t, d in zip(translation, transform["translation"])]
    shape = _array_metadata(path / level0["path"]).get("shape")
    label = _attributes(path / "labels" / "vessels")
    colour = None
    if label is not None:
        colours = label[0].get("image-label", {}).get("colors", [])
        colour = next((c.get("rgba") for c in colours if c.get("label-value") == 1), None)
    channels = attrs.get("omero", {}).get("channels", []) if isinstance(attrs.get("omero"), dict) else []
    window = channels[0].get("window") if channels and isinstance(channels[0], dict) else None
    return {"path": path, "format": "ngff", "version": version, "axes": axes, "units": units, "scale": scale,
            "translation": translation, "shape": shape, "has_labels": label is not None, "label_colour": colour,
            "window": [window["start"], window["end"]] if isinstance(window, dict) and "end" in window else None}


def _read_n5(path: Path) -> dict:
    """:func:`read_image` of an N5 multiscale folder: level 0's geometry as :func:`io.n5.read_n5` gives it
    (z, y, x), listed in the stored axis order (the order Neuroglancer reads the N5's axes in)."""
    pyramid = read_n5(path)
    level = pyramid.levels[0]
    stored = [str(name) for name in pyramid.provenance["stored_axes"]]
    order = ["zyx".index(name) for name in stored]
    return {"path": path, "format": "n5", "version": None, "axes": stored, "units": ["micrometer"] * len(stored),
            "scale": [level.spacing[i] for i in order], "translation": [level.translation[i] for i in order],
            "shape": [level.shape[i] for i in order], "has_labels": False, "label_colour": None, "window": None}


def _n5_source(image: dict, port: int, mount: str) -> dict:
    """An N5 image's layer source: its ``n5://`` URL and the transform that puts its voxel centres where
    :func:`_read_n5` has them (Neuroglancer's N5 voxel ``i`` spans ``[i, i + 1)``: half a voxel less)."""
    axes = image["axes"]
    dimensions = {name: [float(f"{scale * 1e-6:.12g}"), "m"] for name, scale in zip(axes, image["scale"])}
    matrix = [[1.0 if row == column else 0.0 for column in range(len(axes))]
              + [translation / scale - 0.5]
              for row, (scale, translation) in enumerate(zip(image["scale"], image["translation"]))]
    return {"url": f"n5://http://{HOST}:{port}/{mount}/{quote(image['path'].name)}",
            "transform": {"outputDimensions": dimensions, "matrix": matrix}}


def _zarr_url(image: dict, port: int, mount: str, inner: str = "") -> str:
    scheme = "zarr2" if image["version"] == "0.4" else "zarr3"
    return f"{scheme}://http://{HOST}:{port}/{mount}/{quote(image['path'].name)}{inner}"


def _hex(rgba: Any, default: str) -> str:
    try:
        return "#" + "".join(f"{int(c):02x}" for c in list(rgba)[:3])
    except (TypeError, ValueError):
        return default


def viewer_state(output: dict, source: dict | None, port: int, layout: str = "xy") -> dict:
    """The Neuroglancer state: global dimensions from the output's level-0 NGFF scale, centred on it, and its
    layers (``source``, ``probabilities``, ``vessels``).

    Args:
        output: :func:`read_image` of the predict output.
        source: :func:`read_image` of the source (an OME-Zarr or an N5 folder), or None.
        port: the server's port.
        layout: the Neuroglancer layout.

    Returns:
        the state dict (what the link's fragment holds).
    """
    dimensions, position = {}, []
    for name in ("x", "y", "z"):      # x first: the xy panel shows x across, y down
        if name not in output["axes"]:
            continue
        i = output["axes"].index(name)
        factor = UNITS.get(output["units"][i] or "", None)
        dimensions[name] = [float(f"{output['scale'][i] * factor:.12g}"), "m"] if factor else [output["scale"][i], ""]
        position.append(output["translation"][i] / output["scale"][i] + output["shape"][i] / 2)
    layers = []
    if source is not None:
        url = _n5_source(source, port, "source") if source["format"] == "n5" else _zarr_url(source, port, "source")
        layer = {"type": "image", "source": url, "name": "source"}
        if source["window"]:
            layer["shaderControls"] = {"normalized": {"range": source["window"]}}
        layers.append(layer)
    layers.append({"type": "image", "source": _zarr_url(output, port, "output"), "name": "probabilities",
                   "shader": PROBABILITY_SHADER, "blend": "default"})
    if output["has_labels"]:
        colour = _hex(output["label_colour"], "#ff0000")
        layers.append({"type": "segmentation", "source": _zarr_url(output, port, "output", "/labels/vessels"),
                       "name": "vessels", "segments": ["1"], "segmentColors": {"1": colour},
                       "selectedAlpha": 0.7})
    extent = max(output["shape"][output["axes"].index(name)] for name in ("x", "y") if name in output["axes"])
    return {"dimensions": dimensions, "position": position, "crossSectionScale": extent / FIT_PIXELS,
            "crossSectionBackgroundColor": "#000000", "layers": layers, "layout": layout}


def viewer_link(state: dict, port: int) -> str:
    """The link that opens the served client with ``state`` (in its ``#!`` fragment).

    Args:
        state: :func:`viewer_state`.
        port: the server's port.

    Returns:
        the URL.
    """
    fragment = quote(json.dumps(state, separators=(",", ":")), safe="~@$&()*!+=:;,.?/'")
    return f"http://{HOST}:{port}/v/{TOKEN}/#!{fragment}"


# ---- the server --------------------------------------------------------------------------------------------
class ViewServer(ThreadingHTTPServer):
    """A threading HTTP server holding the folders it serves (``mounts``: URL prefix -> store) and the client."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], mounts: dict[str, Path], client: Path, verbose: bool):
        self.mounts, self.client, self.verbose = mounts, client, verbose
        self.stopping = threading.Event()
        super().__init__(address, Handler)


def make_server(stores: dict[str, Path], client: Path, port: int, verbose: bool = False) -> ViewServer:
    """Bind the server on 127.0.0.1 (not yet serving: call ``serve_forever``).

    Args:
        stores: ``{"output": path, "source": path}``; each is served under ``/<key>/<its folder name>/``.
        client: the Neuroglancer client folder (:func:`client_folder`), served under ``/v/<token>/``.
        port: the port (0: a free one).
        verbose: log every request.

    Returns:
        the server.

    Raises:
        UserError: the port is taken.
    """
    mounts = {f"{key}/{Path(path).name}": Path(path).resolve() for key, path in stores.items()}
    try:
        return ViewServer((HOST, port), mounts, Path(client).resolve(), verbose)
    except OSError as e:
        raise UserError(f"{HOST}:{port}: cannot serve there ({e.strerror}; pass another --port, or 0)") from None


class Handler(BaseHTTPRequestHandler):
    """Files of the mounted stores and of the client (with CORS and single byte ranges); the client's event
    stream (open and silent) and its state/action posts (acknowledged)."""

    server: ViewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")

    def _empty(self, status: int, extra: dict | None = None) -> None:
        self.send_response(status)
        self._cors()
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        self._empty(HTTPStatus.NO_CONTENT, {"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                            "Access-Control-Allow-Headers": "Range, Content-Type"})

    def do_HEAD(self) -> None:  # noqa: N802
        self._get(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._get(body=True)

    def do_POST(self) -> None:  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == f"/state/{TOKEN}":
            try:
                generation = json.loads(body).get("g")
            except (ValueError, AttributeError):
                generation = None
            self._send(json.dumps({"g": generation}).encode(), "application/json")
        elif path in (f"/action/{TOKEN}", f"/credentials/{TOKEN}"):
            self._send(b"", "text/plain")
        else:
            self._empty(HTTPStatus.NOT_FOUND)

    def _send(self, data: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self._cors()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, path: str) -> Path | None:
        """The file a URL path names, inside the client or a mounted store; None: not there."""
        client_prefix = f"/v/{TOKEN}/"
        if path.startswith(client_prefix):
            root, relative = self.server.client, path[len(client_prefix):] or "index.html"
        else:
            root, relative = None, ""
            for mount, folder in self.server.mounts.items():
                if path.startswith(f"/{mount}/"):
                    root, relative = folder, path[len(mount) + 2:]
                    break
            if root is None:
                return None
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def _events(self, body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self._cors()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True
        if not body:
            return
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                self.server.stopping.wait(KEEPALIVE_SECONDS)
        except OSError:
            pass

    def _get(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == f"/events/{TOKEN}":
            return self._events(body)
        if path in ("/", f"/v/{TOKEN}"):
            return self._empty(HTTPStatus.FOUND, {"Location": f"/v/{TOKEN}/"})
        target = self._file(path)
        if target is None:
            return self._empty(HTTPStatus.NOT_FOUND)
        size = target.stat().st_size
        start, end = 0, size - 1
        ranged = self.headers.get("Range")
        if ranged is not None:
            parsed = parse_range(ranged, size)
            if parsed is None:
                return self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
            start, end = parsed
        self.send_response(HTTPStatus.PARTIAL_CONTENT if ranged is not None else HTTPStatus.OK)
        self._cors()
        self.send_header("Accept-Ranges", "bytes")
        content_type = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        self.send_header("Content-Type", content_type or "application/octet-stream")
        if ranged is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body and end >= start:
            with open(target, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range of a file (first-last, first-, -suffix), clipped to it.

    Args:
        header: the ``Range`` header.
        size: the file's size.

    Returns:
        the first and last byte (inclusive), or None when the range is malformed, multiple or unsatisfiable.
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            return None
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return None
            return max(0, size - suffix), size - 1
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, end


def wait_until_served(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port`` (for scripts starting ``view``).

    Args:
        port: the port.
        timeout: seconds.

    Raises:
        TimeoutError: nothing listens in time.
    """
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing serves {HOST}:{port} after {timeout} s") from None
            time.sleep(0.1)

