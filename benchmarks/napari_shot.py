"""The napari screenshot of docs/hoa.md: a trained model's prediction of a synthetic HOA kidney and its
``labels/vessels`` opened with napari-ome-zarr's reader, the labels drawn as a red outline.

    /tmp/napari-venv/bin/python benchmarks/napari_shot.py -m MODEL_FOLDER -pp postprocessing.json \\
        [--work /tmp/napari_shot] [--screenshot docs/images/napari_ome_zarr_output.png]

Writes a synthetic HOA kidney (``hoa-store``: OME-Zarr 0.4, stored x, y, z), predicts it with the given model on
the CPU (``predict``, NGFF output) and thresholds it with the given post-processing (``apply``: writes
``labels/vessels`` into the image), each with this repository's ``nnunet-vasculature`` (``--cli``, default
``.venv/bin/nnunet-vasculature``); then opens the source and the output in napari with napari-ome-zarr's own
reader, the source transposed to (z, y, x) (napari aligns layers by axis position, not by name), the labels
layer made visible (the reader loads it hidden) and drawn as a contour, napari's notifications off, and saves
``viewer.screenshot(canvas_only=False)`` (the window with its layer list) as an optimised PNG. Run it with a
Python holding napari and napari-ome-zarr (``python3 -m venv /tmp/napari-venv && /tmp/napari-venv/bin/pip install
'napari[pyqt5]==0.9.2' napari-ome-zarr``), not in the package's environment; napari needs OpenGL: an X display
(or ``xvfb-run -a``), ``QT_QPA_PLATFORM=offscreen`` without one does not give Qt an OpenGL context. The demo's
model: ``-m demo-output/nnUNet_results/Dataset501_SenNetDemo/VesselTransferTrainer_demo__nnUNetPlans_Task008__3d_\
fullres -pp demo-output/postprocessing.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1200, 800)        # the window's size in screen pixels (the docs show it at about this width)


def _cli(cli: Path, *argv: str) -> None:
    rc = subprocess.run([str(cli), *argv], stdout=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"nnunet-vasculature {' '.join(argv)}: exit {rc}")


def make_data(work: Path, cli: Path, model: Path, postprocessing: Path) -> tuple[Path, Path]:
    """A synthetic HOA kidney (OME-Zarr 0.4) and the model's prediction of it with ``labels/vessels``.

    Args:
        work: a scratch folder.
        cli: the ``nnunet-vasculature`` executable.
        model: the nnU-Net model folder (fold 0 is used).
        postprocessing: the ``postprocessing.json`` that ``apply`` thresholds with.

    Returns:
        the source store and the prediction.
    """
    _cli(cli, "hoa-store", "-o", str(work / "mirror"), "--overwrite")
    source = next((work / "mirror").rglob("*.ome.zarr"))
    output = work / "out.ome.zarr"
    _cli(cli, "predict", "-i", str(source), "-o", str(output), "-m", str(model), "-f", "0", "-device", "cpu",
         "--overwrite")
    _cli(cli, "apply", "-i", str(output), "-pp", str(postprocessing))
    return source, output


def level0_geometry(path: Path) -> tuple[list, list]:
    """Level 0's NGFF scale and translation (transforms applied in the listed order), per listed axis.

    napari-ome-zarr 0.10.0 keeps only part of them (HOA's translation-before-scale comes out as scale 1, this
    tool's scale-then-translation without its translation), so the layers are placed from the metadata here.

    Args:
        path: an NGFF 0.4 image.

    Returns:
        the scale and the translation.
    """
    multiscale = json.loads((path / ".zattrs").read_text())["multiscales"][0]
    scale, translation = [1.0] * len(multiscale["axes"]), [0.0] * len(multiscale["axes"])
    for transform in multiscale["datasets"][0]["coordinateTransformations"]:
        if transform["type"] == "scale":
            scale = [a * b for a, b in zip(scale, transform["scale"])]
            translation = [a * b for a, b in zip(translation, transform["scale"])]
        elif transform["type"] == "translation":
            translation = [a + b for a, b in zip(translation, transform["translation"])]
    return scale, translation


def read_layers(path: Path) -> list[tuple]:
    """napari-ome-zarr's layer data of one store, placed by :func:`level0_geometry` and (z, y, x) first: a store
    listing its axes x, y, z is transposed (arrays, axis names, units, scale and translation).

    Args:
        path: an OME-Zarr image (its ``labels/vessels`` come with it).

    Returns:
        ``(data, kwargs, layer type)`` tuples as the reader gives them.
    """
    from napari_ome_zarr import napari_get_reader
    scale, translation = level0_geometry(path)
    layers = []
    for data, kwargs, kind in napari_get_reader(str(path))(str(path)):
        kwargs = {key: value for key, value in kwargs.items() if key not in ("affine", "visible")}
        kwargs.update(scale=scale, translate=translation)
        if tuple(kwargs.get("axis_labels", ())) == ("x", "y", "z"):
            data = [level.transpose(2, 1, 0) for level in data]
            kwargs.update({key: list(reversed(kwargs[key])) for key in ("axis_labels", "units", "scale", "translate")})
        layers.append((data, kwargs, kind))
    return layers


def shoot(source: Path, output: Path, target: Path) -> dict:
    """Open both stores in napari and save the window's screenshot.

    Args:
        source: the source OME-Zarr.
        output: the prediction with ``labels/vessels``.
        target: the PNG to write.

    Returns:
        what was shown: napari's version, the layers, and the outline's pixels in the screenshot.
    """
    import napari
    from napari.settings import get_settings
    from PIL import Image
    get_settings().application.gui_notification_level = "none"
    viewer = napari.Viewer(show=False, title="napari-ome-zarr: source, probabilities, labels/vessels")
    names = []
    for path, role in ((source, "source"), (output, "output")):
        for data, kwargs, kind in read_layers(path):
            if kind == "image":
                kwargs["name"] = "source (synthetic kidney)" if role == "source" else "probabilities"
                if role == "output":
                    kwargs.update(colormap="magma", opacity=0.6, blending="additive", contrast_limits=(0, 255))
                else:       # the scan's own range (its 0.5-99.5 percentiles), not the dtype's
                    kwargs.update(colormap="gray", contrast_limits=tuple(
                        float(v) for v in np.percentile(np.asarray(data[-1]), (0.5, 99.5))))
            layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
            if kind == "labels":
                layer.contour = 1
                layer.visible = True
            names.append(layer.name)
    viewer.dims.set_point(0, viewer.dims.range[0].start + (viewer.dims.range[0].stop - viewer.dims.range[0].start) / 2)
    viewer.window.resize(*WINDOW)
    viewer.reset_view()
    image = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    viewer.close()
    Image.fromarray(image).save(target, optimize=True)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    return {"napari": napari.__version__, "layers": names, "outline_pixels": int(red.sum()),
            "size": list(image.shape[:2])}


def main(argv: list[str] | None = None) -> int:
    """Make the data, take the screenshot, print what it shows; returns 0 when the outline is in it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True, type=Path, help="nnU-Net model folder (fold 0)")
    parser.add_argument("-pp", "--postprocessing", required=True, type=Path, help="postprocessing.json for apply")
    parser.add_argument("--cli", type=Path, default=REPO / ".venv" / "bin" / "nnunet-vasculature")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--screenshot", type=Path, default=Path("napari_ome_zarr_output.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        source, output = make_data(work, args.cli, args.model, args.postprocessing)
        shown = shoot(source, output, args.screenshot)
    print(shown, f"\nscreenshot: {args.screenshot}")
    if shown["outline_pixels"] == 0:
        raise SystemExit("no red outline in the screenshot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
