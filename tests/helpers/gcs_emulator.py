"""A read-only Google Cloud Storage JSON API over a local folder, for gcsfs' ``STORAGE_EMULATOR_HOST``
(gcsfs' documented switch for emulators): bucket ``B`` is ``root/B``. Serves object downloads
(``alt=media``, with ``Range``), object metadata and prefix listings: enough for hoa-tools' remote
stores to read a local copy over loopback HTTP, with no network."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


def _handler(root: Path, log: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body: bytes, kind="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _missing(self):
            self._send(404, json.dumps({"error": {"code": 404, "message": "No such object"}}).encode())

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            parts = url.path.split("/")
            log.append(url.path)
            try:
                i = parts.index("b")
            except ValueError:
                return self._missing()
            bucket = parts[i + 1]
            if len(parts) > i + 3 and parts[i + 2] == "o":      # one object
                key = unquote("/".join(parts[i + 3:]))
                file = root / bucket / key
                if not file.is_file():
                    return self._missing()
                if query.get("alt") == ["media"]:
                    data = file.read_bytes()
                    rng = self.headers.get("Range")
                    if rng and rng.startswith("bytes="):
                        start, _, end = rng[6:].partition("-")
                        data = data[int(start or 0):(int(end) + 1) if end else None]
                        return self._send(206, data, "application/octet-stream")
                    return self._send(200, data, "application/octet-stream")
                return self._send(200, json.dumps(_meta(bucket, key, file)).encode())
            if len(parts) == i + 3 and parts[i + 2] == "o":     # listing
                prefix = query.get("prefix", [""])[0]
                delimiter = query.get("delimiter", [""])[0]
                base = root / bucket
                items, prefixes = [], set()
                for f in sorted(base.rglob("*")):
                    key = f.relative_to(base).as_posix()
                    if not f.is_file() or not key.startswith(prefix):
                        continue
                    rest = key[len(prefix):]
                    if delimiter and delimiter in rest:
                        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                    else:
                        items.append(_meta(bucket, key, f))
                out = {"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)}
                return self._send(200, json.dumps(out).encode())
            return self._missing()
    return Handler


def _meta(bucket: str, key: str, file: Path) -> dict:
    return {"kind": "storage#object", "bucket": bucket, "name": key, "size": str(file.stat().st_size),
            "generation": "1", "metageneration": "1", "updated": "2024-01-01T00:00:00.000Z"}


@contextmanager
def gcs_emulator(root: Path):
    """Serve ``root`` on 127.0.0.1; yields (``host:port``, list of the paths requested)."""
    log: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(root), log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
