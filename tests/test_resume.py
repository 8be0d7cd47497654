"""`predict` run again with the same command (issue 34 item 1): the kidneys it finished are kept untouched, the
interrupted one resumes to the bytes of an uninterrupted run, and a kidney made with other options or of another
input is refused in one line before the model is loaded (the checkpoint is made unreadable for those runs:
loading it would end in another error)."""
import os

import numpy as np
import tifffile
import zarr
from helpers.model import make_model_folder
from helpers.predict import _image, _kaggle_kidney

from nnunet_vasculature.cli import main


def _main(capsys, args):
    """Exit code, stderr lines, stdout of the in-process CLI."""
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out


def _files(folder):
    """Every file under ``folder`` with its modification time and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def _unloadable(folder):
    """Make the model's checkpoint unreadable: a run that loads the model fails."""
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")


def _test_folder(root):
    _kaggle_kidney(root, _image((20, 36, 32), seed=5), "kidney_5")
    return _kaggle_kidney(root, _image((17, 34, 36), seed=6), "kidney_6").parent


def test_interrupted_test_folder_keeps_finished_kidneys_and_resumes(tmp_path, capsys):
    """Interrupted in the 2nd kidney (its array part-written, or not yet created): the same command keeps the
    1st (same files, same content) and completes the 2nd, equal to an uninterrupted run
    (before: refused, "'kidney_5' is already written")."""
    folder = make_model_folder(tmp_path / "model")
    test = _test_folder(tmp_path / "kaggle")
    args = ["-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(["predict", "-i", str(test), "-o", str(tmp_path / "ref.zarr"), *args]) == 0
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")["kidney_6"][:]
    out = tmp_path / "resume.zarr"
    command = ["predict", "-i", str(test), "-o", str(out), *args]
    assert main(command) == 0
    for interruption in ("part-written", "not created"):
        g = zarr.open_group(str(out), mode="a")
        if interruption == "part-written":        # as predict leaves it, stopped after plane 8 of kidney_6
            g["kidney_6"].attrs.update({"complete": False, "planes_done": 8})
            g["kidney_6"][8:] = 0
        else:
            del g["kidney_6"]
        kept = _files(out / "kidney_5")
        rc, err, stdout = _main(capsys, command)
        assert rc == 0, err
        assert "kidney_5: already complete" in stdout and "skipped" in stdout
        assert ("resuming kidney_6 at plane 8" in stdout) == (interruption == "part-written")
        assert _files(out / "kidney_5") == kept
        arr = zarr.open_group(str(out), mode="r")["kidney_6"]
        assert arr.attrs["complete"]
        np.testing.assert_array_equal(arr[:], ref)


def test_a_kidney_made_otherwise_is_refused_before_the_model_loads(tmp_path, capsys):
    """Complete or interrupted, a kidney made with other options or of another input is one line naming it
    and nothing is written; a finished output run again needs no model at all."""
    folder = make_model_folder(tmp_path / "model")
    test = _test_folder(tmp_path / "kaggle")
    out = tmp_path / "p.zarr"
    command = ["predict", "-i", str(test), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(command) == 0
    _unloadable(folder)
    before = _files(out)
    rc, err, stdout = _main(capsys, command)
    assert rc == 0 and stdout.count("already complete") == 2, (err, stdout)
    rc, err, _ = _main(capsys, [*command, "-step_size", "0.75"])
    assert rc == 2 and err == [f"error: {out}: 'kidney_5' holds a complete prediction made with other settings "
                               f"(step_size differ; pass --overwrite to replace it)"], err
    slice_file = test / "kidney_6" / "images" / "0003.tif"
    os.utime(slice_file, ns=(slice_file.stat().st_atime_ns, slice_file.stat().st_mtime_ns + 10 ** 9))
    rc, err, stdout = _main(capsys, command)          # only the clock changed: the same input (issue 35 item 18)
    assert rc == 0 and stdout.count("already complete") == 2, (err, stdout)
    tifffile.imwrite(slice_file, tifffile.imread(slice_file) ^ 1)      # other bytes, same size
    rc, err, _ = _main(capsys, command)
    assert rc == 2 and err == [f"error: {out}: 'kidney_6' holds a complete prediction of another input (its files, "
                               f"sizes or content differ; pass --overwrite to start again)"], err
    g = zarr.open_group(str(out), mode="a")                   # kidney_6 interrupted: refused alike
    g["kidney_6"].attrs.update({"complete": False, "planes_done": 8})
    before = _files(out)
    rc, err, _ = _main(capsys, command)
    assert rc == 2 and len(err) == 1 and "'kidney_6' holds an interrupted run of another input" in err[0], err
    assert _files(out) == before


def test_ome_zarr_output_is_kept_resumed_or_refused(tmp_path, capsys):
    """The same for an `.ome.zarr` output: run again it is kept; interrupted after the first 64-plane chunk row it
    resumes there to the same levels; other options are refused before the model loads."""
    folder = make_model_folder(tmp_path / "model")
    kidney = _kaggle_kidney(tmp_path / "kaggle", _image((70, 36, 32), seed=3))
    out = tmp_path / "kidney_5.ome.zarr"
    command = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(command) == 0
    image = zarr.open_group(str(out), mode="r")
    levels = sorted((k for k in image.array_keys() if k.isdigit()), key=int)   # listing order is the filesystem's
    ref = {k: image[k][:] for k in levels}
    kept = _files(out)
    rc, err, stdout = _main(capsys, command)
    assert rc == 0 and "kidney_5: already complete" in stdout, (err, stdout)
    assert _files(out) == kept
    g = zarr.open_group(str(out), mode="a")                   # as predict leaves it, stopped after chunk row 1
    g.attrs["nnunet_vasculature"] = {**g.attrs["nnunet_vasculature"], "complete": False}
    g["0"].attrs["planes_done"] = 64
    g["0"][64:] = 0
    for k in levels[1:]:
        g[k][:] = 0
    rc, err, stdout = _main(capsys, command)
    assert rc == 0 and "resuming kidney_5 at plane 64" in stdout, (err, stdout)
    image = zarr.open_group(str(out), mode="r")
    assert image.attrs["nnunet_vasculature"]["complete"]
    for k in levels:
        np.testing.assert_array_equal(image[k][:], ref[k])
    _unloadable(folder)
    kept = _files(out)
    rc, err, _ = _main(capsys, [*command, "--tta_scale", "1.5"])
    assert rc == 2 and err == [f"error: {out}: 'kidney_5' holds a complete prediction made with other settings "
                               f"(tta_scale differ; pass --overwrite to replace it)"], err
    assert _files(out) == kept
