"""The pictures the product writes, measured as matplotlib lays them out (issue #34.7): every title lies inside
the figure and no text covers a panel or another text (the overlay's long right-column title used to run off
the edge and the row titles to overlap the row above)."""
import matplotlib
import numpy as np
import pytest
import tifffile
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from nnunet_vasculature.postprocess.overlay import draw_slices, save_panels

matplotlib.use("Agg")


@pytest.fixture
def saved_layout(monkeypatch):
    """The boxes (display pixels) of what each saved figure shows, taken right after ``savefig``: the figure,
    its panels (axes) and its texts (figure title, footnote, panel titles), each text with its string."""
    layouts = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        original(fig, *args, **kwargs)
        renderer = fig.canvas.get_renderer()
        shown = fig.texts + [ax.title for ax in fig.axes]     # fig.texts holds the suptitle too
        texts = [(t.get_text(), t.get_window_extent(renderer)) for t in shown if t.get_text()]
        layouts.append({"figure": fig.bbox, "panels": [ax.get_window_extent(renderer) for ax in fig.axes],
                        "texts": texts})

    monkeypatch.setattr(Figure, "savefig", savefig)
    return layouts


def _overlap(a: Bbox, b: Bbox) -> bool:
    """True when the two boxes share more than a pixel's width and height."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


def _check(layout: dict) -> None:
    figure = layout["figure"]
    for text, box in layout["texts"]:
        assert box.x0 >= figure.x0 and box.x1 <= figure.x1 and box.y0 >= figure.y0 and box.y1 <= figure.y1, \
            f"{text!r} at x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f} leaves the figure " \
            f"{figure.width:.0f} x {figure.height:.0f}"
        for panel in layout["panels"]:
            assert not _overlap(box, panel), f"{text!r} covers a panel ({box} over {panel})"
    for i, (text, box) in enumerate(layout["texts"]):
        for other, other_box in layout["texts"][i + 1:]:
            assert not _overlap(box, other_box), f"{text!r} overlaps {other!r}"


def test_sennet_overlay_titles_inside_the_figure_and_off_the_row_above(tmp_path, saved_layout):
    """The demo's overlay: 3 rows of (image, truth, prediction) slices, the right column titled with the
    post-processing rule ``postprocess.sennet.draw_overlay`` writes and the slice's Dice."""
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (40, 88, 96), dtype=np.uint8)
    files = []
    for z, plane in enumerate(volume):
        files.append(tmp_path / f"{z:04d}.tif")
        tifffile.imwrite(files[-1], plane)
    truth = np.zeros(volume.shape, np.uint8)
    truth[:, 30:60, 20:50] = 1
    predicted = {z: np.roll(truth[z], 5, axis=1).astype(bool) for z in (10, 20, 30)}
    draw_slices(files, truth, predicted, "threshold 0.071, components >= 128 voxels",
                "kidney_1_dense: prediction kidney_1_dense against the labels", tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 0 and len(saved_layout) == 1
    _check(saved_layout[0])


def test_long_titles_on_a_wide_single_row_fit(tmp_path, saved_layout):
    """A wide slide thumbnail (hubmap-kidney's overlay) with titles longer than a panel: wrapped, not cut."""
    image = np.full((120, 400, 3), 128, np.uint8)
    save_panels([[("slide 4ef6695ce (1/64 scale) of a slide much wider than it is high", image),
                  ("truth: 1234 glomeruli, outlined in green over the thumbnail", image),
                  ("prediction (threshold 0.45, components >= 1200 pixels): Dice 0.9123", image)]],
                "4ef6695ce: submission.csv against train.csv", tmp_path / "o.png")
    _check(saved_layout[0])


# -- what the demo's summary.json says made its source model (issue #34.8; beside the pictures the demo writes)
def test_the_demo_names_a_standin_command_that_exists(capsys):
    """``summary.json``'s ``source_model.built_by`` is a command line this CLI parses, rebuilding the shipped
    stand-in with its record's seed and iterations (it named ``demo build-source``, since renamed ``standin``)."""
    import shlex

    from nnunet_vasculature.cli import build_parser
    from nnunet_vasculature.demo.sennet import source_model
    info = source_model(None)
    argv = shlex.split(info["built_by"])
    assert argv[0] == "nnunet-vasculature", argv
    parser, _ = build_parser(argv[1:])
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"built_by {info['built_by']!r}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert args.command == "standin" and args.iterations == info["training_iterations"], args
