"""HuBMAP Hacking the Kidney: column-major RLE, slide TIFF layouts, conversion, metric (fast tests).

Fixtures are built from DOMAIN.md §7 facts with independent code: tifffile writes the TIFF layouts
directly, masks are numpy discs, RLEs come from the usual Kaggle snippet (``img.T.flatten()`` ...),
decoding follows the documented ``reshape((width, height)).T``.
"""
import csv
import json

import numpy as np
import pytest
import tifffile

from nnunet_vasculature.cli import main
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.rle import ColumnStripEncoder, column_major_regions, rle_decode, rle_encode


def kaggle_encode(img):
    """The usual Kaggle kernel encoder of the competition (column-major)."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def domain_decode(rle, height, width):
    """DOMAIN.md §7: decode a flat array with reshape((width, height)).T."""
    s = rle.split()
    flat = np.zeros(width * height, np.uint8)
    for start, length in zip(s[0::2], s[1::2]):
        flat[int(start) - 1:int(start) - 1 + int(length)] = 1
    return flat.reshape((width, height)).T


def test_column_major_rle_hand_examples():
    m = np.array([[1, 0],
                  [1, 1],
                  [0, 1]], np.uint8)           # down column 0: 1 1 0, column 1: 0 1 1
    assert rle_encode(m, order="F") == "1 2 5 2"
    assert rle_encode(m) == "1 1 3 2 6 1"       # row-major (SenNet) unchanged
    assert (rle_decode("1 2 5 2", (3, 2), order="F") == m).all()
    # pixel 2 is row 2, column 1 (1-based)
    assert (rle_decode("2 1", (3, 2), order="F") == np.array([[0, 0], [1, 0], [0, 0]])).all()
    assert rle_encode(np.zeros((3, 2)), order="F", empty="") == ""
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 12, 2)
        img = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        assert rle_encode(img, order="F", empty="") == kaggle_encode(img)
        assert (rle_decode(kaggle_encode(img), (h, w), order="F") == domain_decode(kaggle_encode(img), h, w)).all()
    with pytest.raises(ValueError):
        rle_decode("5 3", (2, 3), order="F")        # runs to pixel 7 of 6


def test_strip_encoder_equals_whole_mask_encoder():
    rng = np.random.default_rng(1)
    cases = [np.ones((4, 5), bool), np.zeros((4, 5), bool)]
    cases += [rng.random((int(rng.integers(1, 9)), int(rng.integers(1, 12)))) < rng.random() for _ in range(150)]
    for m in cases:
        whole = kaggle_encode(m.astype(np.uint8))
        enc = ColumnStripEncoder(m.shape[0], empty="")
        cuts = sorted({0, m.shape[1], *rng.integers(0, m.shape[1] + 1, 3).tolist()})
        for a, b in zip(cuts[:-1], cuts[1:]):
            enc.add(m[:, a:b])
        assert enc.finish() == whole


def test_column_major_region_reader():
    rng = np.random.default_rng(2)
    m = np.zeros((37, 23), np.uint8)
    m[5:30, 3:9] = 1                       # runs continuing down several columns
    m[rng.random(m.shape) < 0.1] = 1
    m[:, 20:] = 1                          # runs that wrap from the bottom of one column to the top of the next
    region = column_major_regions(kaggle_encode(m), 37, 23)
    for y0, y1, x0, x1 in [(0, 37, 0, 23), (4, 31, 2, 10), (36, 37, 19, 23), (0, 1, 0, 1)]:
        assert (region(y0, y1, x0, x1) == m[y0:y1, x0:x1]).all()
    with pytest.raises(ValueError, match="past the image"):
        column_major_regions("850 5", 37, 23)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["hwc_tiled", "hwc_strips", "1x1x3xHxW", "chw_planar", "bands_as_pages"])
def test_slide_layouts_read_region_by_region(tmp_path, layout):
    from nnunet_vasculature.io.slide import Slide
    img = _rgb(130, 90)
    p = tmp_path / "s.tiff"
    if layout == "hwc_tiled":
        tifffile.imwrite(p, img, tile=(32, 32), photometric="rgb")
    elif layout == "hwc_strips":
        tifffile.imwrite(p, img, photometric="rgb", rowsperstrip=8)
    elif layout == "1x1x3xHxW":
        tifffile.imwrite(p, img.transpose(2, 0, 1)[None, None], photometric="minisblack")
    elif layout == "chw_planar":
        tifffile.imwrite(p, np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="minisblack",
                         planarconfig="separate", metadata=None)
    else:
        with tifffile.TiffWriter(p) as w:
            for c in range(3):
                w.write(np.ascontiguousarray(img[..., c]), photometric="minisblack")
    with Slide(p, 130, 90) as s:
        assert s.shape == (130, 90)
        assert (s.region(7, 77, 11, 80) == img[7:77, 11:80]).all()
        assert (s.region(120, 200, 80, 200) == img[120:, 80:]).all()     # clipped at the edge
        assert (s.thumbnail(4) == img[::4, ::4]).all()
    with pytest.raises(UserError, match="says 91 x 130"):
        Slide(p, 130, 91)


# --- a tiny download in the Kaggle layout, written with tifffile / csv / the Kaggle snippet ----------------

INFO_COLS = ["image_file", "glomerulus_segmentation_file", "anatomical_structures_segmention_file",
             "patient_number", "width_pixels", "height_pixels"]


def _disc_slide(h, w, discs, seed):
    """Pink tissue on white glass with purple discs; the glomerulus mask of the discs."""
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 242, np.uint8)
    tissue = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 < 1
    img[tissue] = [220, 150, 200]
    mask = np.zeros((h, w), np.uint8)
    for cy, cx, r in discs:
        d = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        mask[d] = 1
        img[d] = [140, 70, 150]
    noise = np.random.default_rng(seed).integers(-5, 6, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8), mask


def make_download(root, sizes=((96, 128), (112, 96), (96, 96)), patients=("1", "1", "2")):
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows, info, masks = [], [], {}
    for i, ((h, w), pat) in enumerate(zip(sizes, patients)):
        sid = f"slide{i}"
        discs = [(h // 2, w // 2, 9), (h // 3, w // 3, 6)]
        img, mask = _disc_slide(h, w, discs, i)
        tifffile.imwrite(root / "train" / f"{sid}.tiff", img if i % 2 == 0 else img.transpose(2, 0, 1)[None, None],
                         photometric="rgb" if i % 2 == 0 else "minisblack")
        feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
            [cx + r * np.cos(t), cy + r * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 33)]]},
            "properties": {"classification": {"name": "unhealthy" if k == 1 else "glomerulus"}}}
            for k, (cy, cx, r) in enumerate(discs)]
        (root / "train" / f"{sid}.json").write_text(json.dumps(feats))
        rows.append((sid, kaggle_encode(mask)))
        info.append((f"{sid}.tiff", f"{sid}.json", f"{sid}-anatomical-structure.json", pat, w, h))
        masks[sid] = (img, mask)
    for name, header, data in (("train.csv", ("id", "encoding"), rows),
                               ("HuBMAP-20-dataset_information.csv", INFO_COLS, info)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *data])
    return masks


def _convert(root, raw, *extra):
    return main(["convert", "hubmap-kidney", str(root), "-d", "640", "-o", str(raw), "--downscale", "2",
                 "--tile", "32", *extra])


def _block_mean(a, ds):
    h, w = a.shape[:2]
    H, W = -(-h // ds) * ds, -(-w // ds) * ds
    pad = [(0, H - h), (0, W - w)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a.astype(float), pad).reshape(H // ds, ds, W // ds, ds, *a.shape[2:]).mean((1, 3))


def test_convert_output_read_by_nnunet(tmp_path, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    masks = make_download(tmp_path / "kaggle")
    assert _convert(tmp_path / "kaggle", tmp_path / "raw") == 0
    ds_dir = tmp_path / "raw" / "Dataset640_HuBMAPKidney"
    verify_dataset_integrity(str(ds_dir), num_processes=1)
    dj = json.loads((ds_dir / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}
    assert dj["labels"] == {"background": 0, "glomerulus": 1}
    io = NaturalImage2DIO()
    img, _ = io.read_images([str(ds_dir / "imagesTr" / "slide1_y00032_x00000_0000.png")])
    seg, _ = io.read_seg(str(ds_dir / "labelsTr" / "slide1_y00032_x00000.png"))
    assert img.shape[0] == 3
    raw_img, raw_mask = masks["slide1"]
    ref_img = np.rint(_block_mean(raw_img, 2))[32:56, 0:32]
    ref_lab = (_block_mean(raw_mask, 2) >= 0.5)[32:56, 0:32]
    assert np.abs(img[:, 0].transpose(1, 2, 0) - ref_img).max() <= 1
    assert (seg[0, 0] == ref_lab).all() and ref_lab.any()
    # folds grouped by patient: slide0 and slide1 (patient 1) never split across train/val
    splits = json.loads((ds_dir / "splits_final.json").read_text())
    assert len(splits) == 2
    for f in splits:
        for part in ("train", "val"):
            slides = {c.split("_")[0] for c in f[part]}
            assert not ({"slide0", "slide1"} & slides) or {"slide0", "slide1"} <= slides


def test_convert_polygons_with_unhealthy_class(tmp_path):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    make_download(tmp_path / "kaggle")
    assert _convert(tmp_path / "kaggle", tmp_path / "raw", "--classes", "glomerulus", "unhealthy") == 0
    ds_dir = tmp_path / "raw" / "Dataset640_HuBMAPKidney"
    assert json.loads((ds_dir / "dataset.json").read_text())["labels"]["unhealthy"] == 2
    # slide0 (96 x 128 at 2x -> 48 x 64): disc 0 (healthy) at (48, 64) r 9, disc 1 (unhealthy) at (32, 42) r 6
    seg, _ = NaturalImage2DIO().read_seg(str(ds_dir / "labelsTr" / "slide0_y00000_x00032.png"))
    assert seg[0, 0, 24 - 0, 32 - 32] == 1            # centre of the healthy disc: (24, 32) downscaled
    seg2, _ = NaturalImage2DIO().read_seg(str(ds_dir / "labelsTr" / "slide0_y00000_x00000.png"))
    assert seg2[0, 0, 16, 21] == 2                     # centre of the unhealthy disc: (16, 21)


def _edit_csv(path, fn):
    rows = list(csv.reader(open(path)))
    fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("breakage,message", [
    ("unreadable_tiff", "slide1.tiff: cannot read"),
    ("rle_past_image", "runs past the image"),
    ("no_mask", "no mask for slide"),
    ("size_mismatch", "dataset_information.csv says 97 x 112"),
])
def test_convert_bad_input_one_line_nothing_written(tmp_path, capsys, breakage, message):
    root = tmp_path / "kaggle"
    make_download(root)
    if breakage == "unreadable_tiff":
        (root / "train" / "slide1.tiff").write_bytes(b"II*\x00garbage")
    elif breakage == "rle_past_image":
        _edit_csv(root / "train.csv", lambda r: r[2].__setitem__(1, r[2][1] + f" {112 * 96 - 2} 10"))
    elif breakage == "no_mask":
        _edit_csv(root / "train.csv", lambda r: r.pop(3))
    else:
        _edit_csv(root / "HuBMAP-20-dataset_information.csv", lambda r: r[2].__setitem__(4, "97"))
    assert _convert(root, tmp_path / "raw") == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0] and "Traceback" not in stderr, stderr
    if breakage != "size_mismatch":
        assert "slide1" in err[0] or "slide2" in err[0] or "train.csv" in err[0]
    assert not list((tmp_path / "raw").glob("*Dataset640*"))


def test_dice_metric_hand_cases(tmp_path, capsys):
    from nnunet_vasculature.io.rle import rle_runs
    from nnunet_vasculature.postprocess.hubmap_kidney import dice_runs
    empty = rle_runs("")
    assert dice_runs(empty, empty) == 1.0
    assert dice_runs(rle_runs("1 4"), empty) == 0.0
    assert dice_runs(rle_runs("1 4"), rle_runs("3 4")) == pytest.approx(2 * 2 / 8)
    assert dice_runs(rle_runs("6 3 1 4"), rle_runs("2 10")) == pytest.approx(2 * 6 / (7 + 10))  # unsorted runs
    rng = np.random.default_rng(3)
    for _ in range(30):
        a, b = rng.random((2, 9, 7)) < rng.random()
        ref = 2 * (a & b).sum() / (a.sum() + b.sum()) if a.any() or b.any() else 1.0
        assert dice_runs(rle_runs(kaggle_encode(a.astype(np.uint8))),
                         rle_runs(kaggle_encode(b.astype(np.uint8)))) == pytest.approx(ref)
    sol, sub, sample = tmp_path / "solution.csv", tmp_path / "sub.csv", tmp_path / "sample.csv"
    sol.write_text("id,encoding,width,height\na,1 4,4,4\nb,,4,4\n")
    sub.write_text("id,predicted\na,3 4\nb,\n")
    sample.write_text("id,predicted\na,\nb,\n")
    assert main(["score", "hubmap-kidney", "--solution", str(sol), "--submission", str(sub)]) == 0
    out = capsys.readouterr().out
    assert "0.500000" in out and "1.000000" in out and "mean                 0.750000" in out
    assert main(["validate", "hubmap-kidney", str(sub), "--sample", str(sample)]) == 0
    sub.write_text("id,predicted\na,3 40\nb,\n")
    assert main(["score", "hubmap-kidney", "--solution", str(sol), "--submission", str(sub)]) == 2
    sub.write_text("id,predicted\na,3 4\n")
    assert main(["validate", "hubmap-kidney", str(sub), "--sample", str(sample)]) == 2
    assert "id b of the sample submission is missing" in capsys.readouterr().err


@pytest.mark.parametrize("ds,shape,classes", [(4, (37, 53), 2), (3, (31, 20), 3), (2, (16, 9), 2), (1, (7, 12), 2)])
def test_slide_upsampling_is_nnunets_order1_resampling_of_logits(ds, shape, classes):
    """predict hubmap-kidney's strip upsampler = skimage order-1 ``resize`` (mode edge, no anti-aliasing: what nnU-Net's
    ``resampling_fn_probabilities`` calls) of the downscaled logits to ds x the size, cropped, then softmax;
    whatever the column chunks the logits arrive in; strips arrive left to right and tile the width."""
    from skimage.transform import resize

    from nnunet_vasculature.inference.slide import _Upsampler
    rng = np.random.default_rng(ds)
    h, w = shape[0] * ds - (ds - 1) // 2, shape[1] * ds - (ds > 1)       # full size not a multiple of ds
    hs, ws = -(-h // ds), -(-w // ds)
    logits = rng.normal(0, 3, (classes, hs, ws)).astype(np.float32)
    up = np.stack([resize(c.astype(np.float64), (hs * ds, ws * ds), order=1, mode="edge", anti_aliasing=False)
                   for c in logits])[:, :h, :w]
    e = np.exp(up - up.max(0))
    ref = np.rint((1 - e[0] / e.sum(0)) * 255)
    strips = []
    u = _Upsampler(ds, h, w, hs, ws, lambda x0, strip: strips.append((x0, strip)))
    cuts = [0] + sorted(rng.choice(np.arange(1, ws), size=min(3, ws - 1), replace=False).tolist()) + [ws]
    for a, b in zip(cuts[:-1], cuts[1:]):
        u.add(logits[:, :, a:b], a, b)
    assert [x for x, _ in strips] == list(np.cumsum([0] + [s.shape[1] for _, s in strips[:-1]]))
    got = np.concatenate([s for _, s in strips], axis=1).astype(float)
    assert got.shape == (h, w)
    assert np.abs(got - ref).max() <= 1 and (got == ref).mean() > 0.99


def test_tissue_mask_ignores_noisy_glass():
    """White glass with pixel noise (a thumbnail samples single pixels) is not tissue; a pink region is."""
    from nnunet_vasculature.io.slide import tissue_mask
    rng = np.random.default_rng(0)
    img = np.full((80, 100, 3), 242.0) + rng.normal(0, 6, (80, 100, 3))
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 30) ** 2 < 15 ** 2
    img[disc] = [222, 160, 200] + rng.normal(0, 6, (disc.sum(), 3))
    m = tissue_mask(np.clip(img, 0, 255).astype(np.uint8))
    assert m[disc].mean() > 0.97
    assert not m[:, 50:].any()                       # glass only: no tile there would be predicted


def _slide_store(path, prob):
    """predict hubmap-kidney's output: the array with the run record it writes (``source``)."""
    import zarr
    arr = zarr.create_array(str(path), shape=prob.shape, chunks=(prob.shape[0], 7), dtype="uint8")
    arr[:] = prob
    arr.attrs["source"] = {"tool": "predict hubmap-kidney", "model": {"folder": "m", "folds": ["0"]}}
    return path


def _run(capsys, args):
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


@pytest.mark.parametrize("step", ["0", "1.5", "nan"])
def test_predict_refuses_a_step_size_outside_0_1_before_any_work(tmp_path, capsys, step):
    """``predict hubmap-kidney -step_size`` is checked as ``predict``'s is, first, in one line (before: no check;
    the model folder was loaded, here: an error about the missing model instead)."""
    slide = tmp_path / "s.tiff"
    tifffile.imwrite(slide, np.zeros((64, 64, 3), np.uint8))
    rc, _, err = _run(capsys, ["predict", "hubmap-kidney", "-i", str(slide), "-o", str(tmp_path / "o"), "-m",
                               str(tmp_path / "no_model"), "-device", "cpu", "-step_size", step])
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: -step_size {float(step):g}: give a fraction"), err
    assert not (tmp_path / "o").exists()


def test_submit_removes_components_smaller_than_the_tuned_size(tmp_path, capsys):
    """min_component_pixels drops 8-connected components below the size (checked with scikit-image's labelling of
    the whole slide), across the strips the slide is read in; the submission decodes with the kernels' decoder."""
    from skimage.measure import label
    rng = np.random.default_rng(8)
    prob = np.zeros((40, 60), np.uint8)
    prob[rng.random(prob.shape) > 0.93] = 200                     # speckle: mostly 1-3 px components
    prob[5:15, 5:20] = 220                                        # 150 px blob spanning strips (columns 0-6, 7-13, ...)
    prob[30, 30:36] = 180                                         # 6 px line
    for k in range(9):                                            # a 9 px diagonal: one component only if 8-connected
        prob[20 + k, 40 + k] = 190
    store = _slide_store(tmp_path / "s1.zarr", prob)
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"competition": "hubmap-kidney", "threshold_u8": 128, "min_component_pixels": 8}))
    sub = tmp_path / "sub.csv"
    assert _run(capsys, ["submit", "hubmap-kidney", "-i", str(store), "-pp", str(pp), "-o", str(sub)])[0] == 0
    got = domain_decode(list(csv.DictReader(open(sub)))[0]["predicted"], *prob.shape).astype(bool)
    mask = prob >= 128
    lab = label(mask, connectivity=2)
    expect = mask & (np.bincount(lab.ravel())[lab] >= 8)
    assert expect[20, 40] and not expect[30, 30] and (expect != mask).sum() > 20   # removal matters here
    np.testing.assert_array_equal(got, expect)


def test_tune_declares_its_own_flags_plots_and_refuses_a_repeated_slide(tmp_path, capsys):
    rng = np.random.default_rng(9)
    truth = np.zeros((30, 40), bool)
    truth[5:20, 8:30] = True
    prob = np.clip(truth * 170 + rng.random(truth.shape) * 90, 0, 255).astype(np.uint8)
    prob[rng.random(prob.shape) > 0.97] = 250                      # speckle
    store = _slide_store(tmp_path / "s1.zarr", prob)
    train = tmp_path / "train.csv"
    train.write_text(f"id,encoding\ns1,{kaggle_encode(truth.astype(np.uint8))}\n")
    pp, png = tmp_path / "pp.json", tmp_path / "curve.png"
    rc, _, err = _run(capsys, ["tune", "hubmap-kidney", "-i", str(store), "--labels", str(train), "-o", str(pp),
                               "--closing", "1"])
    assert rc == 2 and any("unrecognized arguments: --closing" in line for line in err), err
    assert _run(capsys, ["tune", "hubmap-kidney", "-i", str(store), "--labels", str(train), "-o", str(pp),
                         "--cc_sizes", "8", "32", "128", "512", "--plot", str(png)])[0] == 0
    res = json.loads(pp.read_text())
    assert sorted(map(int, res["component_removal_scores"])) == [0, 8, 32, 128, 512]      # the sizes given
    assert res["competition"] == "hubmap-kidney" and png.read_bytes()[:4] == b"\x89PNG"
    train.write_text(f"id,encoding\ns1,{kaggle_encode(truth.astype(np.uint8))}\ns1,1 4\n")
    rc, _, err = _run(capsys, ["tune", "hubmap-kidney", "-i", str(store), "--labels", str(train),
                               "-o", str(tmp_path / "pp2.json")])
    assert rc == 2 and len(err) == 1 and "train.csv:3: a second row for id s1" in err[0], err


def test_overlay_colours_truth_prediction_and_overlap_apart(tmp_path, capsys):
    from PIL import Image
    truth = np.zeros((64, 96), bool)
    truth[10:40, 10:50] = True
    pred = np.zeros_like(truth)
    pred[20:50, 30:80] = True
    tifffile.imwrite(tmp_path / "s1.tiff", np.full((64, 96, 3), 128, np.uint8))
    (tmp_path / "train.csv").write_text(f"id,encoding\ns1,{kaggle_encode(truth.astype(np.uint8))}\n")
    (tmp_path / "sub.csv").write_text(f"id,predicted\ns1,{kaggle_encode(pred.astype(np.uint8))}\n")
    rc, out, _ = _run(capsys, ["overlay", "hubmap-kidney", "--slide", str(tmp_path / "s1.tiff"), "--truth",
                               str(tmp_path / "train.csv"), "--submission", str(tmp_path / "sub.csv"),
                               "-o", str(tmp_path / "o.png")])
    assert rc == 0
    im = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    for colour in ((0, 200, 0), (230, 0, 200), (255, 220, 0)):
        assert (np.abs(im - (0.45 * 128 + 0.55 * np.array(colour))) <= 3).all(-1).sum() > 100, colour
