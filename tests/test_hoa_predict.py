"""predict on Human Organ Atlas-layout inputs (issue 24): the level whose spacing is a Kaggle kidney's gives
exactly the prediction of its TIFF slices; the OME-Zarr output overlays the source level, validates as NGFF
(ome-zarr-models) and reads back through ome-zarr; apply writes labels/vessels, score reads the image;
bad input is one line before the model is loaded; ``--dry_run`` counts tiles as nnU-Net does.

Input stores are written by tensorstore / zarr (tests/helpers/hoa.py), never by this package."""
import json

import numpy as np
import pytest
import zarr
from helpers.hoa import mean2, write_hoa_n5, write_hoa_omezarr04
from helpers.model import make_model_folder
from helpers.predict import _image, _kaggle_kidney

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.sennet_inputs import kaggle_kidney


def _main(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, [line for line in err.splitlines() if line.startswith("error")], out


def _twin_levels(folder):
    """Levels (fine, the Kaggle kidney itself, coarse) of an HOA-layout twin of a Kaggle kidney folder."""
    tiff = kaggle_kidney(folder)
    kidney = tiff.read(0, tiff.shape[0]).astype(np.uint16)
    return [kidney.repeat(2, 0).repeat(2, 1).repeat(2, 2), kidney, kidney[::2, ::2, ::2]], tiff.spacing[0]


def _broken_model(path):
    """A model folder whose checkpoints are not checkpoints: any attempt to load the weights fails."""
    folder = make_model_folder(path, folds=(0, 1))
    for f in (0, 1):
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    return folder


@pytest.mark.slow
def test_hoa_store_predicts_like_its_tiff_slices(tmp_path, kaggle_small, capsys, monkeypatch):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v04 import Image
    folder = make_model_folder(tmp_path / "model")          # 50 µm: the kidney (50.28 µm) is resampled
    kidney_dir = kaggle_small / "test" / "kidney_5"
    levels, spacing = _twin_levels(kidney_dir)
    n5 = write_hoa_n5(tmp_path / "twin_n5", levels, spacing / 2, block=(16, 64, 64))
    ome = write_hoa_omezarr04(tmp_path / "twin.ome.zarr", levels, spacing / 2, chunk=16)
    args = ["-m", str(folder), "-device", "cpu", "--disable_tta"]
    rc, err, _ = _main(capsys, ["predict", "-i", str(kidney_dir), "-o", str(tmp_path / "tiff.zarr"), *args])
    assert rc == 0, err
    reference = zarr.open_group(str(tmp_path / "tiff.zarr"), mode="r")["kidney_5"][:]
    assert reference.max() > 0 and len(np.unique(reference)) > 10      # a prediction, not a constant

    rc, err, out = _main(capsys, ["predict", "-i", str(n5), "-o", str(tmp_path / "n5.ome.zarr"), *args])
    assert rc == 0, err
    assert "level 1 of 3" in out and f"shape {reference.shape} (z, y, x)" in out
    image = zarr.open_group(str(tmp_path / "n5.ome.zarr"), mode="r")
    np.testing.assert_array_equal(image["0"][:], reference)         # exactly the TIFF slices' prediction
    Image.from_zarr(image)                                            # valid NGFF 0.4 (independent validator)
    ms = image.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    scale, translation = ms["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == pytest.approx([spacing] * 3)
    assert translation["translation"] == pytest.approx([spacing / 4] * 3)   # N5 level 1: half a level-0 voxel
    record = image.attrs["nnunet_vasculature"]
    assert record["provenance"]["level"] == 1 and record["provenance"]["model"]["folds"] == ["0"]
    assert record["complete"] and record["slice_ids"][0] == "twin_n5_0000"
    nodes = list(Reader(parse_url(str(tmp_path / "n5.ome.zarr")))())      # read back by ome-zarr
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), reference)

    # OME-Zarr 0.4 as HOA writes it (x, y, z storage, translation before scale); default output ./twin.ome.zarr
    monkeypatch.chdir(tmp_path)
    rc, err, _ = _main(capsys, ["predict", "-i", "twin.ome.zarr", *args])
    assert rc == 2 and "would replace the input" in err[0], err          # the default would be the input itself
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    rc, err, out = _main(capsys, ["predict", "-i", str(ome), *args])
    assert rc == 0, err
    made = zarr.open_group(str(tmp_path / "run" / "twin.ome.zarr"), mode="r")
    np.testing.assert_array_equal(made["0"][:], reference)
    transforms = made.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms[1]["translation"] == pytest.approx([spacing / 2] * 3)  # 0.5 before scale 50.28


@pytest.mark.slow
def test_ome_zarr_output_apply_labels_and_score(tmp_path, kaggle_small, capsys):
    """A Kaggle kidney written as an NGFF image; apply adds labels/vessels; score and tune read the image."""
    from ome_zarr_models.v04 import Image
    folder = make_model_folder(tmp_path / "model")
    img = _image((20, 36, 32), seed=5)
    kidney = _kaggle_kidney(tmp_path / "kaggle", img)
    out = tmp_path / "k5.ome.zarr"
    args = ["-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(["predict", "-i", str(kidney), "-o", str(out), *args]) == 0
    assert main(["predict", "-i", str(kidney), "-o", str(tmp_path / "k5.zarr"), *args]) == 0
    probs = zarr.open_group(str(out), mode="r")["0"][:]
    np.testing.assert_array_equal(probs, zarr.open_group(str(tmp_path / "k5.zarr"), mode="r")["kidney_5"][:])
    labels = tmp_path / "labels"
    labels.mkdir()
    import tifffile
    for z in range(img.shape[0]):
        tifffile.imwrite(labels / f"{z:04d}.tif", ((probs[z] >= 128) * 255).astype(np.uint8))
    pp = tmp_path / "pp.json"
    capsys.readouterr()
    assert main(["tune", "-i", str(out), "--labels", str(labels), "-o", str(pp)]) == 0
    assert main(["score", "--pred", str(out), "-pp", str(pp), "--labels", str(labels)]) == 0
    assert "kidney_5" in capsys.readouterr().out
    assert main(["apply", "-i", str(out), "-pp", str(pp)]) == 0
    image = zarr.open_group(str(out), mode="r")
    Image.from_zarr(image)
    mask = image["labels/vessels/0"][:]
    expected = zarr.open_group(str(out), mode="r")["0"][:] >= json.loads(pp.read_text())["threshold_u8"]
    assert mask.dtype == np.uint8 and mask.shape == probs.shape
    assert set(np.unique(mask)) <= {0, 1} and (mask.astype(bool) <= expected).all() and mask.any()
    assert image["labels"].attrs["labels"] == ["vessels"]


def test_bad_input_is_one_line_before_the_model(tmp_path, capsys, monkeypatch):
    """Each refusal names the problem in one line; the checkpoints are garbage, so none came from loading."""
    monkeypatch.chdir(tmp_path)         # default outputs (NAME.ome.zarr) land here, where the end checks for them
    folder = _broken_model(tmp_path / "model")
    volume = np.random.default_rng(1).integers(0, 60000, (32, 32, 32), dtype=np.uint16)
    n5 = write_hoa_n5(tmp_path / "n5", [volume, mean2(volume)], 25.0, block=(16, 16, 16))
    kidney = _kaggle_kidney(tmp_path / "kaggle", _image((8, 36, 32)))
    _kaggle_kidney(tmp_path / "kaggle", _image((8, 36, 32)), "kidney_6")
    base = ["-m", str(folder), "-device", "cpu"]
    cases = [
        (["-i", str(n5), "--level", "5"], "level 5 does not exist"),
        (["-i", str(n5), "--level", "x"], "--level x: give 'auto' or a level number"),
        (["-i", str(kidney), "--level", "1", "-o", str(tmp_path / "o.zarr")], "is not a multiscale input"),
        (["-i", str(n5), "--remote"], "--remote: only hoa:NAME inputs"),
        (["-i", str(kidney), "--remote", "--dry_run"], "--remote: only hoa:NAME inputs"),
        (["-i", str(kidney), "--level", "1", "--dry_run"], "is not a multiscale input"),
        (["-i", str(kidney.parent), "-o", str(tmp_path / "two.ome.zarr")], "an OME-Zarr image holds one volume"),
        (["-i", str(kidney)], "give -o"),
    ]
    for extra, message in cases:
        rc, err, _ = _main(capsys, ["predict", *extra, *base])
        assert rc == 2 and len(err) == 1 and message in err[0], (extra, err)
    (n5 / "s1" / "attributes.json").write_text(json.dumps({
        **json.loads((n5 / "s1" / "attributes.json").read_text()), "dimensions": [16, 16, 5]}))
    rc, err, _ = _main(capsys, ["predict", "-i", str(n5), *base])
    assert rc == 2 and len(err) == 1 and "contradict" in err[0], err
    assert not list(tmp_path.glob("*.ome.zarr")) and not (tmp_path / "o.zarr").exists()


def test_dry_run_counts_tiles_as_nnunet(tmp_path, capsys):
    """Tiles, passes (mirroring x rotations x folds) from the plans only (the checkpoints are garbage)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    folder = _broken_model(tmp_path / "model")
    kidney = _kaggle_kidney(tmp_path / "kaggle", _image((45, 70, 90)))
    patch = [16, 32, 32]
    shape = compute_new_shape((45, 70, 90), [50.28] * 3, [50.0] * 3)
    steps = compute_steps_for_sliding_window([max(s, p) for s, p in zip(shape, patch)], patch, 0.5)
    tiles = len(steps[0]) * len(steps[1]) * len(steps[2])
    for extra, per_tile in [([], 8 * 2), (["--disable_tta"], 2), (["--tta_rotations"], 8 * 2 * 2),
                            (["-f", "0"], 8)]:
        argv = ["predict", "-i", str(kidney), "-m", str(folder), "-f", "0", "1", "-device", "cpu", "--dry_run",
                *extra]
        rc, err, out = _main(capsys, argv)
        assert rc == 0, err
        assert f"model space {tuple(int(s) for s in shape)}" in out
        assert f"tiles {tiles} (" in out and f"{per_tile} network passes per tile -> {tiles * per_tile} network" in out
        assert "memory: cpu" in out
    assert not list(tmp_path.glob("*.zarr"))


def test_dry_run_level_choice(tmp_path, capsys):
    folder = _broken_model(tmp_path / "model")
    volume = np.random.default_rng(1).integers(0, 60000, (64, 64, 64), dtype=np.uint16)
    store = write_hoa_omezarr04(tmp_path / "organ.ome.zarr", [volume, mean2(volume)], 25.0, chunk=32)
    rc, err, out = _main(capsys, ["predict", "-i", str(store), "-m", str(folder), "-device", "cpu", "--dry_run"])
    assert rc == 0, err
    assert "level 1 of 2" in out and "input (32, 32, 32) at 50 µm" in out
    rc, err, out = _main(capsys, ["predict", "-i", str(store), "-m", str(folder), "-device", "cpu", "--dry_run",
                                  "--level", "0"])
    assert rc == 0 and "input (64, 64, 64) at 25 µm -> model space (32, 32, 32)" in out


def test_dry_run_counts_absent_chunks(tmp_path, capsys):
    """An absent chunk of an OME-Zarr / N5 input is read as the fill value (zarr's rule) and counted in the log
    and in --dry_run (issue 35.8)."""
    folder = _broken_model(tmp_path / "model")
    volume = np.random.default_rng(1).integers(1, 60000, (64, 64, 64), dtype=np.uint16)
    store = write_hoa_omezarr04(tmp_path / "organ.ome.zarr", [volume, mean2(volume)], 25.0, chunk=16)
    (store / "1" / "0" / "1" / "0").unlink()
    rc, err, out = _main(capsys, ["predict", "-i", str(store), "-m", str(folder), "-device", "cpu", "--dry_run"])
    assert rc == 0, err
    assert "organ: 1 of 8 chunks of level 1 are absent, read as the fill value 0" in out
    assert "organ: voxel size 50 µm (the input's metadata), model 50 µm: not resampled" in out
    rc, err, out = _main(capsys, ["predict", "-i", str(store), "-m", str(folder), "-device", "cpu", "--dry_run",
                                  "--level", "0"])
    assert rc == 0 and "organ: all 64 chunks of level 0 are stored" in out


def test_hoa_name_offline_from_hoa_store(tmp_path, capsys, monkeypatch):
    """``hoa-store`` writes a mirror that ``predict -i hoa:NAME`` reads out of the box, without network: its
    catalogue entry found in the mirror, level 1 chosen for the 50 µm model (issue 34.4)."""
    pytest.importorskip("hoa_tools")
    from nnunet_vasculature.synthetic.hoa_store import write_hoa_store
    mirror = tmp_path / "mirror"
    names = write_hoa_store(mirror, voxel_um=25.0, levels=3, chunk=32)
    monkeypatch.setenv("NNUNET_VASCULATURE_HOA_MIRROR", str(mirror))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")     # any network use would fail
    monkeypatch.chdir(tmp_path)
    folder = make_model_folder(tmp_path / "model")
    for name in names:
        rc, err, out = _main(capsys, ["predict", "-i", f"hoa:{name}", "-m", str(folder), "-device", "cpu",
                                      "--disable_tta"])
        assert rc == 0, err
        assert f"{name}: level 1 of 3" in out and f"{name}: voxel size 50 µm (the input's metadata)" in out
        image = zarr.open_group(str(tmp_path / f"{name}.ome.zarr"), mode="r")
        record = image.attrs["nnunet_vasculature"]
        assert record["complete"] and record["provenance"]["dataset"] == name
        assert image["0"].shape[0] in (40, 44) and image["0"][:].max() > 0


def test_input_is_parsed_once_per_predict(tmp_path, capsys, monkeypatch):
    """The ``-i`` value is parsed once (issue 32.1): the CLI's InputSpec is what opening the volumes, naming the
    output and the NGFF metadata use; no step sniffs the folder again."""
    import nnunet_vasculature.io.input_spec as input_spec
    folder = make_model_folder(tmp_path / "model")
    volume = np.random.default_rng(1).integers(0, 60000, (32, 32, 32), dtype=np.uint16)
    (tmp_path / "data").mkdir()
    store = write_hoa_omezarr04(tmp_path / "data" / "organ.ome.zarr", [volume, mean2(volume)], 50.0, chunk=16)
    sniffed = []
    real = input_spec._multiscale_kind
    monkeypatch.setattr(input_spec, "_multiscale_kind", lambda path: sniffed.append(path) or real(path))
    monkeypatch.chdir(tmp_path)
    rc, err, _ = _main(capsys, ["predict", "-i", str(store), "-m", str(folder), "-device", "cpu", "--disable_tta"])
    assert rc == 0, err
    written = zarr.open_group(str(tmp_path / "organ.ome.zarr"), mode="r")      # named from the spec
    assert written["0"].shape == (32, 32, 32) and written["0"][:].max() > 0
    assert sniffed == [store]
