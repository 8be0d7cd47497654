"""Issue 35 items 17-18: the remaining tracebacks and unclear lines of the second fuzz, each one line naming the
file and the problem, and the input fingerprint that follows content rather than the clock."""
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_vasculature.io.volume_source import VolumeSource, fingerprint


def _source(files):
    return VolumeSource("kidney_5", (len(files), 4, 4), (1.0, 1.0, 1.0), [], files=list(files))


def test_fingerprint_follows_content_not_the_clock(tmp_path):
    """A file repaired to the same bytes (a new modification time) keeps the fingerprint: before, resuming after
    it was refused as "another input". Other bytes of the same size, small file or sampled large one, change it."""
    small, large = tmp_path / "0000.tif", tmp_path / "0001.tif"
    small.write_bytes(np.arange(1000, dtype=np.uint16).tobytes())
    large.write_bytes(np.random.default_rng(0).integers(0, 255, 40 * 2 ** 20, dtype=np.uint8).tobytes())
    before = fingerprint(_source([small, large]))
    for f in (small, large):
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10 ** 9))
    assert fingerprint(_source([small, large])) == before
    data = bytearray(small.read_bytes())
    data[500] ^= 1
    small.write_bytes(bytes(data))
    changed = fingerprint(_source([small, large]))
    assert changed != before
    with open(large, "r+b") as f:                 # a byte at the end of the large file
        f.seek(40 * 2 ** 20 - 10)
        f.write(b"\xff\x00")
    assert fingerprint(_source([small, large])) != changed


def _errors(capsys, args):
    """Exit code and stderr of the in-process CLI."""
    from nnunet_vasculature.cli import main
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def test_a_corrupt_chunk_leaves_no_zarr_read_pending(tmp_path):
    """zarr reads a block's chunks as concurrent tasks; one failing raised at once and left the others running,
    which a process exiting on the error reported as asyncio "Task was destroyed but it is pending!" tracebacks
    in about half the runs of `submit`. The error now comes after the block's other reads are finished."""
    import asyncio

    import zarr
    from zarr.core.sync import sync

    from nnunet_vasculature.errors import UserError
    from nnunet_vasculature.io.volumes import open_zarr_array
    store = tmp_path / "p.zarr"
    a = zarr.open_group(str(store), mode="w").create_array("kidney_5", shape=(200, 128, 128), chunks=(1, 128, 128),
                                                           dtype="uint8")
    a[:] = np.random.default_rng(0).integers(0, 255, a.shape, dtype=np.uint8)
    (store / "kidney_5" / "c" / "1" / "0" / "0").write_bytes(b"garbage")

    async def pending():
        return sum(not t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task())
    arr = open_zarr_array(store / "kidney_5")
    for _ in range(3):
        with pytest.raises(UserError) as e:
            arr[0:200]
        assert str(e.value).startswith(f"{store / 'kidney_5'}: planes 0..199 cannot be read (RuntimeError: ")
        assert sync(pending()) == 0


def test_tune_hubmap_kidney_on_a_chunk_of_random_bytes_is_one_line(tmp_path, capsys):
    """A slide store whose chunk holds random bytes: before, a Zstd RuntimeError traceback from `tune`."""
    import zarr
    prob = np.zeros((30, 40), np.uint8)
    prob[5:20, 8:30] = 200
    store = tmp_path / "s1.zarr"
    arr = zarr.create_array(str(store), shape=prob.shape, chunks=(30, 20), dtype="uint8", fill_value=0)
    arr[:] = prob
    arr.attrs.update({"every_chunk_stored": True, "source": {"tool": "predict hubmap-kidney", "model": {}}})
    (store / "c" / "0" / "1").write_bytes(np.random.default_rng(1).bytes(300))
    train = tmp_path / "train.csv"
    train.write_text("id,encoding\ns1,1 40\n")
    rc, err = _errors(capsys, ["tune", "hubmap-kidney", "-i", str(store), "--labels", str(train),
                               "-o", str(tmp_path / "pp.json")])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"error: {store}: region [0:30, ") and "cannot be read" in lines[0], err
    assert not (tmp_path / "pp.json").exists()


@pytest.mark.parametrize("fault", ["no data", "data without test", "model folder", "model missing"])
def test_kaggle_script_refuses_a_bad_data_or_model_path_in_one_line(tmp_path, fault):
    """A missing --data, or a folder given as --model: before, a traceback (after the wheels and model steps)."""
    from nnunet_vasculature.export import bundle
    data, model = tmp_path / "data", tmp_path / "model.zip"
    (data / "test").mkdir(parents=True)
    model.write_bytes(b"PK")
    if fault == "no data":
        data = tmp_path / "absent"
    elif fault == "data without test":
        (data / "test").rmdir()
    elif fault == "model folder":
        model = tmp_path / "model_folder"
        model.mkdir()
    else:
        model = tmp_path / "absent.zip"
    named = data if "data" in fault else model
    r = subprocess.run([sys.executable, str(bundle.TEMPLATE), "--data", str(data), "--model", str(model),
                        "--out", str(tmp_path / "s.csv"), "--device", "cpu", "--work", str(tmp_path / "w")],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {named}: "), r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "s.csv").exists()


def _image_with_record(path, zarr_format):
    """A probability image as predict records it, made with zarr directly (NGFF 0.4 or 0.5)."""
    import zarr
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    record = {"kidney": "kidney_5", "complete": True, "slice_ids": [f"kidney_5_{z:04d}" for z in range(4)]}
    ngff = {"multiscales": [{"version": "0.4", "datasets": [{"path": "0"}]}]} if zarr_format == 2 else \
        {"ome": {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}]}]}}
    g.attrs.update({**ngff, "nnunet_vasculature": record})
    g.create_array("0", shape=(4, 6, 7), chunks=(1, 6, 7), dtype="uint8")[:] = 200
    return path


def _truncate(file, keep=40):
    file.write_bytes(file.read_bytes()[:keep])
    return file


def test_truncated_metadata_of_a_store_or_image_is_named(tmp_path, capsys):
    """A truncated `zarr.json` of a store's kidney array (before: a JSONDecodeError traceback from `submit`), or a
    truncated `.zattrs`/`zarr.json` of an `.ome.zarr` (before: "not a readable zarr store", or for `apply` without
    -o "give -o"): one line naming the damaged file."""
    import zarr
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    store = tmp_path / "p.zarr"
    a = zarr.open_group(str(store), mode="w").create_array("kidney_5", shape=(4, 6, 7), chunks=(1, 6, 7),
                                                           dtype="uint8")
    a[:] = 200
    a.attrs.update({"kidney": "kidney_5", "slice_ids": [f"kidney_5_{z:04d}" for z in range(4)], "complete": True})
    damaged = _truncate(store / "kidney_5" / "zarr.json", 50)
    cases = [(["submit", "-i", str(store), "-pp", str(pp), "-o", str(tmp_path / "s.csv")], damaged)]
    for fmt, name in ((2, ".zattrs"), (3, "zarr.json")):
        image = _image_with_record(tmp_path / f"k{fmt}.ome.zarr", fmt)
        damaged = _truncate(image / name)
        cases += [(["submit", "-i", str(image), "-pp", str(pp), "-o", str(tmp_path / "s.csv")], damaged),
                  (["apply", "-i", str(image), "-pp", str(pp)], damaged)]
    for args, damaged in cases:
        rc, err = _errors(capsys, args)
        assert rc == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1] == (f"error: {damaged}: truncated or not JSON (the store's metadata is "
                                                f"damaged: restore it, or predict again)"), (args, err)
    assert not (tmp_path / "s.csv").exists()


def test_resuming_into_an_image_with_truncated_metadata_is_one_line(tmp_path, capsys):
    """`predict -o OUT.ome.zarr` again after OUT's metadata was truncated: one line naming the file, before the
    model loads, and nothing written."""
    from helpers.model import make_model_folder
    from helpers.predict import _image, _kaggle_kidney
    folder = make_model_folder(tmp_path / "model")
    kidney = _kaggle_kidney(tmp_path / "kaggle", _image((6, 36, 32), seed=3))
    out = tmp_path / "k.ome.zarr"
    args = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    rc, err = _errors(capsys, args)
    assert rc == 0, err
    damaged = _truncate(out / ".zattrs", 100)          # NGFF 0.4, predict's default
    before = damaged.read_bytes()
    rc, err = _errors(capsys, args)
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: {damaged}: truncated or not JSON"), err
    assert damaged.read_bytes() == before


def test_a_train_csv_id_with_spaces_around_it_is_named(tmp_path, capsys):
    """HuBMAP Kidney train.csv ids with surrounding spaces: before, "no mask for slide" (the slide's mask is
    there, under ' id '); now the line and the whitespace are named."""
    import csv

    from nnunet_vasculature.synthetic.hubmap_kidney import synthesize
    kaggle = synthesize(tmp_path / "kaggle", seed=1, n_train=2, n_test=1, size=256)
    with open(kaggle / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[2][0] = f" {rows[2][0]} "
    with open(kaggle / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    raw = tmp_path / "raw"
    raw.mkdir()
    rc, err = _errors(capsys, ["convert", "hubmap-kidney", str(kaggle), "-d", "643", "-o", str(raw)])
    assert rc == 2 and err.strip().splitlines() == [
        f"error: {kaggle / 'train.csv'}:3: id {rows[2][0]!r} has whitespace around it (ids match exactly: remove "
        f"the spaces)"], err
    assert list(raw.iterdir()) == []


def test_nan_in_an_npz_is_reported_at_its_plane_with_the_file(tmp_path, capsys):
    """NaN at plane 3 of an nnU-Net `.npz` given to `tune`: before, "probabilities are not finite" without the
    plane; now the file and plane 3."""
    probabilities = np.full((2, 6, 8, 8), 0.5, np.float32)
    probabilities[1, 3, 2, 2] = np.nan
    npz = tmp_path / "kidney_5.npz"
    np.savez_compressed(npz, probabilities=probabilities)
    labels = tmp_path / "kidney_5" / "labels"
    labels.mkdir(parents=True)
    rc, err = _errors(capsys, ["tune", "-i", str(npz), "--labels", str(labels), "-o", str(tmp_path / "pp.json")])
    assert rc == 2 and err.strip().splitlines()[-1] == (f"error: {npz}: probabilities are not finite (NaN or "
                                                        f"infinity) at plane 3"), err


def test_a_complete_store_whose_folder_lacks_the_zarr_suffix_is_read_per_kidney(tmp_path, capsys):
    """A predict store renamed without `.zarr`: before, "zarr group holds 2 arrays; name one"; a store is known by
    its metadata too, and every kidney is submitted."""
    import zarr
    store = tmp_path / "probabilities"
    g = zarr.open_group(str(store), mode="w")
    for k in ("kidney_5", "kidney_6"):
        a = g.create_array(k, shape=(4, 6, 7), chunks=(1, 6, 7), dtype="uint8")
        a[:] = 200
        a.attrs.update({"kidney": k, "slice_ids": [f"{k}_{z:04d}" for z in range(4)], "complete": True,
                        "source": {"tool": "predict"}})
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    rc, err = _errors(capsys, ["submit", "-i", str(store), "-pp", str(pp), "-o", str(tmp_path / "s.csv")])
    assert rc == 0, err
    ids = [line.split(",")[0] for line in (tmp_path / "s.csv").read_text().splitlines()[1:]]
    assert ids == [f"{k}_{z:04d}" for k in ("kidney_5", "kidney_6") for z in range(4)]


def test_labels_folder_with_too_few_slices_is_named(tmp_path, kaggle_small, capsys):
    """`convert sennet --labels kidney_2=DIR` with DIR short of slices: before, the line named the Kaggle kidney
    folder, whose labels are complete; now DIR."""
    import shutil
    labels = tmp_path / "pseudo"
    shutil.copytree(kaggle_small / "train" / "kidney_2" / "labels", labels)
    for f in sorted(labels.iterdir())[-4:]:
        f.unlink()
    raw = tmp_path / "raw"
    raw.mkdir()
    rc, err = _errors(capsys, ["convert", "sennet", str(kaggle_small), "-d", "505", "-o", str(raw),
                               "--labels", f"kidney_2={labels}"])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: {labels}: "), err
    assert "images but" in lines[0] and not any(raw.iterdir())


@pytest.mark.parametrize("failure", ["ENOSPC", "short write"])
def test_convert_onto_a_full_disk_names_the_file_and_says_so(tmp_path, kaggle_small, capsys, monkeypatch, failure):
    """A full disk during `convert sennet`: before, "221184 requested and 32640 written" (numpy's short write)
    without the file; now the case file and "no space left", and no dataset."""
    import errno

    import tifffile
    real = tifffile.imwrite

    def full_disk(path, data, *args, **kwargs):
        if "labelsTr" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device") if failure == "ENOSPC" else \
                OSError(f"{data.nbytes} requested and 32640 written")
        return real(path, data, *args, **kwargs)
    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    raw = tmp_path / "raw"
    raw.mkdir()
    rc, err = _errors(capsys, ["convert", "sennet", str(kaggle_small), "-d", "506", "-o", str(raw)])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "labelsTr" in lines[0] and lines[0].endswith(".tif: cannot write: no space left on the device"), err
    assert not any(raw.iterdir())
