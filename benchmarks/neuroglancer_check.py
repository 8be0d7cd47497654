"""Neuroglancer check of ``view`` (issue 34.9): a tiny model's prediction drawn by the shipped client in headless
chromium, its vessel labels found in the screenshot.

    python -m benchmarks neuroglancer_check [--work DIR] [--screenshot docs/images/neuroglancer_output.png]

Writes a synthetic HOA kidney (``hoa-store``: OME-Zarr 0.4, stored x, y, z), predicts it with a tiny random
model (``predict``, NGFF output), writes ``labels/vessels`` from the probabilities' top decile (the labels
``apply`` writes, without tuning a rule), serves them with ``view``'s server and opens its link in
``chromium --headless`` three times: with the three layers, without ``vessels``, with the source only. In the
panel, the labels are drawn when the first screenshot has many more pixels of the label colour (red) than the
second, the probabilities when the second has many more cyan ones than the third, the source when the third has
grey ones. Exits non-zero when any is missing. Needs Debian's ``chromium`` and the
``neuroglancer`` package (``pip install -e '.[view]'``); no network.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                  "--window-size=1200,800"]
DATA_AREA = np.s_[50:750, 150:1150]     # the panel without the top bar, the axis names and the scale bar
MIN_PIXELS = 500            # pixels of a layer's colour that count as "drawn" (the view is 1200 x 800)
READY = "!!(window.viewer && window.viewer.isReady())"     # Neuroglancer: every layer loaded, every chunk drawn


def _cli(*argv: str) -> None:
    from nnunet_vasculature.cli import main
    rc = main(list(argv))
    if rc != 0:
        raise SystemExit(f"nnunet-vasculature {' '.join(argv)}: exit {rc}")


def make_data(work: Path) -> tuple[Path, Path]:
    """A synthetic HOA kidney (OME-Zarr 0.4) and a tiny model's NGFF prediction of it with ``labels/vessels``.

    Args:
        work: a scratch folder.

    Returns:
        the prediction and the source store.
    """
    import zarr

    from nnunet_vasculature.demo.tiny_model import make_model_folder
    from nnunet_vasculature.io.ngff import NgffLabelsWriter
    _cli("hoa-store", "-o", str(work / "mirror"), "--levels", "2", "--chunk", "32", "--overwrite")
    source = next((work / "mirror").rglob("*.ome.zarr"))
    model = make_model_folder(work / "model")
    output = work / "prediction.ome.zarr"
    _cli("predict", "-i", str(source), "-o", str(output), "-m", str(model), "-f", "0", "-device", "cpu",
         "--disable_tta", "--overwrite")
    probabilities = zarr.open_group(str(output), mode="r")["0"][:]
    threshold = np.percentile(probabilities, 90)
    labels = NgffLabelsWriter(output, {"tool": "benchmarks/neuroglancer_check", "threshold_u8": float(threshold)},
                              overwrite=True)
    labels(0, probabilities > threshold)
    labels.close()
    return output, source


class DevTools:
    """Headless chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol on fds 3 and 4, messages
    ending in NUL): no websocket package, and it waits in real time. ``--screenshot`` with
    ``--virtual-time-budget`` never returns here: the client's open event stream (``/events/<token>``) keeps a
    fetch pending, which holds virtual time."""

    def __init__(self, chromium: str, profile: str):
        to_chromium, self._to_us = os.pipe(), None
        from_chromium = os.pipe()
        self._write, self._read = to_chromium[1], from_chromium[0]
        child_in, child_out = to_chromium[0], from_chromium[1]

        def pipes_on_3_and_4() -> None:
            high_in, high_out = os.dup(child_in) + 100, os.dup(child_out) + 100
            os.dup2(child_in, high_in)
            os.dup2(child_out, high_out)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, "--remote-debugging-pipe",
                                         f"--user-data-dir={profile}", "about:blank"],
                                        pass_fds=(3, 4), preexec_fn=pipes_on_3_and_4,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._id = b"", 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0):
        """Send one command and return its result (events in between are dropped)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method}")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._write)
        os.close(self._read)


def screenshot(url: str, target: Path, timeout: float = 90.0, settle: float = 3.0) -> np.ndarray:
    """Open ``url`` in headless chromium, wait until Neuroglancer's panels report every visible chunk drawn (for
    ``settle`` seconds on end), and save a screenshot.

    Args:
        url: the link.
        target: the PNG to write.
        timeout: seconds.
        settle: seconds the display must stay ready.

    Returns:
        the screenshot, (height, width, 3) uint8.
    """
    from PIL import Image
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile)
        try:
            page = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
            browser.call("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 800,
                                                                "deviceScaleFactor": 1, "mobile": False}, session)
            browser.call("Page.navigate", {"url": url}, session)
            deadline, ready_since = time.monotonic() + timeout, None
            while time.monotonic() < deadline:
                ready = browser.call("Runtime.evaluate", {"expression": READY, "returnByValue": True},
                                     session)["result"].get("value") is True
                ready_since = (ready_since or time.monotonic()) if ready else None
                if ready_since is not None and time.monotonic() - ready_since >= settle:
                    break
                time.sleep(0.25)
            else:
                raise SystemExit(f"Neuroglancer was not ready after {timeout} s")
            data = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        finally:
            browser.close()
    target.write_bytes(base64.b64decode(data))
    return np.asarray(Image.open(target).convert("RGB"))


def colour_counts(image: np.ndarray) -> dict:
    """Pixels of each layer's colour: red (labels), cyan (probabilities), grey (source: R = G = B, mid-tones).

    Args:
        image: (height, width, 3) uint8.

    Returns:
        ``{"red", "cyan", "grey"}`` pixel counts.
    """
    r, g, b = (image[..., i].astype(int) for i in range(3))
    red = (r > 120) & (r - g > 60) & (r - b > 60)
    cyan = (b > 80) & (g > 80) & (b - r > 50) & (g - r > 50)
    grey = (np.abs(r - g) < 6) & (np.abs(g - b) < 6) & (r > 40) & (r < 230)
    return {"red": int(red.sum()), "cyan": int(cyan.sum()), "grey": int(grey.sum())}


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns 0 when the source, the probabilities and the labels are drawn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--screenshot", type=Path, help="also copy the three-layer screenshot here")
    parser.add_argument("--layout", default="xy")
    args = parser.parse_args(argv)
    from nnunet_vasculature.view import client_folder, make_server, read_image, viewer_link, viewer_state
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        output, source = make_data(work)
        server = make_server({"output": output, "source": source}, client_folder(), 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        try:
            state = viewer_state(read_image(output), read_image(source), port, args.layout)
            layers = {layer["name"]: layer for layer in state["layers"]}
            views = {"all": state, "without_vessels": {**state, "layers": [layers["source"], layers["probabilities"]]},
                     "source_only": {**state, "layers": [layers["source"]]}}
            print(f"link: {viewer_link(state, port)}")
            shots = {name: screenshot(viewer_link(view, port), work / f"{name}.png") for name, view in views.items()}
        finally:
            server.stopping.set()
            server.shutdown()
            server.server_close()
        counts = {name: colour_counts(image[DATA_AREA]) for name, image in shots.items()}
        drawn = {"labels": counts["all"]["red"] - counts["without_vessels"]["red"] >= MIN_PIXELS,
                 "probabilities": counts["without_vessels"]["cyan"] - counts["source_only"]["cyan"] >= MIN_PIXELS,
                 "source": counts["source_only"]["grey"] >= MIN_PIXELS}
        print(json.dumps({"pixels": counts, "drawn": drawn}))
        if args.screenshot:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "all.png", args.screenshot)
            print(f"screenshot: {args.screenshot}")
    if not all(drawn.values()):
        raise SystemExit(f"not drawn: {', '.join(k for k, v in drawn.items() if not v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
