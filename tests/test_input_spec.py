"""The ``-i`` value parsed once (issue 32): :func:`parse_input` tells every kind of input apart from its text and
its metadata files, refuses a wrong ``--remote`` / ``--level`` / missing input before anything is read, and
the InputSpec it gives is what ``inference/`` opens and names outputs from.

Fixtures are written by tifffile, SimpleITK, imagecodecs and the independent HOA-layout writers of
``hoa_helpers`` (tensorstore / zarr), never by this package."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers.hoa import mean2, write_hoa_n5, write_hoa_omezarr04

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.inputs import output_path
from nnunet_vasculature.io.input_spec import (
    HOA,
    JP2,
    KAGGLE_KIDNEY,
    KAGGLE_TEST,
    N5,
    NNUNET_IMAGE,
    NNUNET_IMAGES,
    OMEZARR,
    InputSpec,
    open_input,
    parse_input,
)


@pytest.fixture
def volume():
    return np.random.default_rng(3).integers(0, 60000, (8, 12, 10), dtype=np.uint16)


def _kaggle(root, volume, name="kidney_5"):
    images = root / name / "images"
    images.mkdir(parents=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(images / f"{z:04d}.tif", plane)
    return root / name


def _inputs(tmp_path, volume):
    """One input of every kind: (value, kind)."""
    import imagecodecs
    import SimpleITK as sitk
    kidney = _kaggle(tmp_path / "test", volume)
    images = tmp_path / "imagesTs"
    images.mkdir()
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((50.0, 50.0, 50.0))
    sitk.WriteImage(image, str(images / "kidney_9_0000.nii.gz"))
    jp2 = tmp_path / "organ_25.0um_jp2"
    jp2.mkdir()
    for z, plane in enumerate(volume):
        (jp2 / f"slice_{z:04d}.jp2").write_bytes(imagecodecs.jpeg2k_encode(plane, level=0))
    return [(str(kidney), KAGGLE_KIDNEY), (str(kidney / "images"), KAGGLE_KIDNEY),
            (str(tmp_path / "test"), KAGGLE_TEST),
            (str(images / "kidney_9_0000.nii.gz"), NNUNET_IMAGE), (str(images), NNUNET_IMAGES),
            (str(write_hoa_n5(tmp_path / "organ_n5", [volume, mean2(volume)], 25.0, block=(4, 4, 4))), N5),
            (str(write_hoa_omezarr04(tmp_path / "organ.ome.zarr", [volume, mean2(volume)], 25.0, chunk=4)),
             OMEZARR),
            (str(jp2), JP2), ("hoa:LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05", HOA)]


def test_every_kind_is_told_apart_once(tmp_path, volume):
    for value, kind in _inputs(tmp_path, volume):
        spec = parse_input(value)
        assert (spec.kind, str(spec), spec.multiscale) == (kind, value, kind in (N5, OMEZARR, JP2, HOA)), value
        assert (spec.path is None) == (kind == HOA) and spec.level == "auto" and not spec.remote
    assert parse_input("hoa: NAME ", remote=True).name == "NAME"


def test_opened_volumes_carry_kaggle_ids_and_level(tmp_path, volume):
    """Single-resolution and multiscale inputs alike: one Kaggle id per plane (the multiscale readers no
    longer make them; the opener does), and a multiscale volume its level, chunk depth and provenance."""
    values = dict((kind, value) for value, kind in _inputs(tmp_path, volume))
    (kidney,) = open_input(parse_input(values[KAGGLE_KIDNEY]))
    assert kidney.slice_ids == [f"kidney_5_{z:04d}" for z in range(8)] and kidney.level is None
    assert kidney.chunk_depth == 0 and kidney.provenance == {} and kidney.translation == (0.0, 0.0, 0.0)
    (image,) = open_input(parse_input(values[NNUNET_IMAGE]))
    assert image.slice_ids[0] == "kidney_9_0000" and image.spacing == (50.0, 50.0, 50.0)
    lines = []
    (n5,) = open_input(parse_input(values[N5], level=1), log=lines.append)
    assert n5.slice_ids == [f"organ_n5_{z:04d}" for z in range(4)] and n5.level == 1 and n5.chunk_depth == 4
    assert n5.provenance["level"] == 1 and n5.choice == lines[0] and "as asked" in lines[0]
    np.testing.assert_array_equal(n5.read(0, 4), mean2(volume))
    (jp2,) = open_input(parse_input(values[JP2]), log=None)
    assert jp2.spacing == (25.0, 25.0, 25.0) and jp2.slice_ids[-1] == "organ_25.0um_jp2_0007"
    np.testing.assert_array_equal(jp2.read(0, 8), volume)


def test_wrong_flags_and_missing_inputs_are_refused_when_parsed(tmp_path, volume):
    """Each a one-line UserError naming the input or the flag, from the text and the folder listing alone."""
    kidney = _kaggle(tmp_path / "test", volume)
    (tmp_path / "empty").mkdir()
    cases = [((str(kidney),), {"remote": True}, "--remote: only hoa:NAME inputs"),
             ((str(kidney),), {"level": 1}, f"--level 1: {kidney} is not a multiscale input"),
             (("hoa:  ",), {}, "give a dataset name after 'hoa:'"),
             ((str(tmp_path / "nothing"),), {}, "nothing: not found"),
             ((str(tmp_path / "empty"),), {}, "empty: no kidney slices, nnU-Net images or kidney folders")]
    for args, flags, message in cases:
        with pytest.raises(UserError, match=message) as e:
            parse_input(*args, **flags)
        assert "\n" not in str(e.value)
    assert parse_input(str(kidney), level=None).level == "auto"         # a volume without a level: auto


def test_spec_travels_as_json(tmp_path, volume):
    n5 = write_hoa_n5(tmp_path / "organ_n5", [volume], 25.0, block=(4, 4, 4))
    spec = parse_input(str(n5), level=0, spacing=7.0)
    again = InputSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.path == n5
    hoa = parse_input("hoa:X", remote=True)
    assert InputSpec.from_json(json.loads(json.dumps(hoa.to_json()))) == hoa and hoa.absolute() == hoa


def test_absolute_spec(tmp_path, volume, monkeypatch):
    kidney = _kaggle(tmp_path / "test", volume)
    monkeypatch.chdir(tmp_path)
    spec = parse_input("test/kidney_5").absolute()
    assert spec.path == kidney and str(spec) == str(kidney) and spec.kind == KAGGLE_KIDNEY


def test_outputs_are_named_from_the_spec(tmp_path, volume):
    values = dict((kind, value) for value, kind in _inputs(tmp_path, volume))
    n5 = parse_input(values[N5])
    assert output_path(n5, None, open_input(n5, log=None)) == Path("organ_n5.ome.zarr")
    kidney = parse_input(values[KAGGLE_KIDNEY])
    with pytest.raises(UserError, match="give -o"):
        output_path(kidney, None, open_input(kidney))
    with pytest.raises(UserError, match="the output would replace the input"):
        output_path(kidney, kidney.path, open_input(kidney))
