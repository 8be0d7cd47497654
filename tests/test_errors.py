"""The command-line boundary: OS and decoding faults are one line naming the file; killed runs' hidden
temporaries are cleaned by the next run."""
import argparse
import errno
import os
import subprocess
import sys

import pytest

from nnunet_vasculature.cli import main
from nnunet_vasculature.errors import VERBOSE_ENV, atomic_dir, atomic_file, run_cli


def _parser(fault):
    p = argparse.ArgumentParser()
    p.set_defaults(func=lambda a: (_ for _ in ()).throw(fault))
    return p


@pytest.mark.parametrize("fault, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/kidney_5.zarr/0.0"),
     "error: /data/out/kidney_5.zarr/0.0: no space left on the device"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/sub.csv"), "error: /ro/sub.csv: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "error: /ro/x: read-only file system"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "bad"),
     "error: a text file is not UTF-8 (bad at byte 0)"),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), "error: a file is truncated"),
])
def test_os_and_decoder_faults_are_one_line(fault, line, capsys, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert run_cli(_parser(fault), []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line) and VERBOSE_ENV in err[0]


def test_verbose_keeps_the_traceback_and_bugs_are_not_hidden(capsys, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert run_cli(_parser(OSError(errno.ENOSPC, "No space left on device", "/x")), []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: /x: no space left")
    with pytest.raises(ZeroDivisionError):          # a bug is not dressed up as a user fault
        run_cli(_parser(ZeroDivisionError("bug")), [])


def test_an_unwritable_output_is_one_line_from_a_real_command(tmp_path, capsys):
    """The output's parent is a file: the writer's OSError becomes one line naming the path."""
    (tmp_path / "afile").write_text("x")
    assert main(["synthesize", "sennet", "-o", str(tmp_path / "afile" / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "afile") in err[0] and "Traceback" not in err[0]


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}"
    (stale / "inner").mkdir(parents=True)
    (stale / "inner" / "big.bin").write_bytes(b"0" * 1000)
    live = tmp_path / f".out.tmp-{os.getppid()}"     # a running process's temporary is left alone
    live.mkdir()
    stale_file = tmp_path / f".table.csv.tmp-{dead}"
    stale_file.write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("ok")
    with atomic_file(tmp_path / "table.csv") as tmp:
        tmp.write_text("a,b\n")
    assert not stale.exists() and not stale_file.exists() and live.exists()
    assert (tmp_path / "out" / "done").read_text() == "ok" and (tmp_path / "table.csv").read_text() == "a,b\n"


def _one_line(capsys, args, *expect):
    capsys.readouterr()
    rc = main(args)
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]      # progress bars aside
    assert rc != 0 and len(err) == 1 and "Traceback" not in stderr and all(e in err[0] for e in expect), stderr
    return err[0]


def test_faults_in_real_files_are_one_line_naming_the_file(tmp_path, capsys):
    """RLE numbers beyond 64 bits, a CSV that is not UTF-8, a truncated .npz and a corrupt zarr chunk each once
    ended in a traceback."""
    import numpy as np
    import zarr

    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\nkidney_5_0000,1 0\n")
    huge = tmp_path / "huge.csv"
    huge.write_text("id,rle\nkidney_5_0000,99999999999999999999999 1\n")
    _one_line(capsys, ["validate", str(huge), "--sample", str(sample)], str(huge), "beyond 64 bits")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,rle\nkidney_5_0000,1 0 é\n".encode("latin-1"))
    _one_line(capsys, ["validate", str(latin), "--sample", str(sample)], str(latin), "not UTF-8")
    npz = tmp_path / "kidney_5.npz"
    np.savez_compressed(npz, probabilities=np.zeros((2, 4, 4, 4), np.float32))
    npz.write_bytes(npz.read_bytes()[:60])
    labels = tmp_path / "kidney_5" / "labels"
    labels.mkdir(parents=True)
    _one_line(capsys, ["tune", "-i", str(npz), "--labels", str(labels), "-o", str(tmp_path / "pp.json")], str(npz))
    store = tmp_path / "p.zarr"
    a = zarr.open_group(str(store), mode="w").create_array("kidney_5", shape=(4, 6, 7), chunks=(1, 6, 7),
                                                           dtype="uint8")
    a[:] = 200
    a.attrs.update({"kidney": "kidney_5", "slice_ids": [f"kidney_5_{z:04d}" for z in range(4)], "complete": True,
                    "source": {"tool": "predict"}})
    (store / "kidney_5" / "c" / "1" / "0" / "0").write_bytes(b"garbage")       # zarr v3 chunk of plane 1
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    _one_line(capsys, ["submit", "-i", str(store), "-pp", str(pp), "-o", str(tmp_path / "s.csv")], str(store))
    assert not (tmp_path / "s.csv").exists()
    # the same corrupt chunk in level 0 of an NGFF probability image (predict's .ome.zarr), made with zarr directly
    image = tmp_path / "kidney_5.ome.zarr"
    g = zarr.open_group(str(image), mode="w")
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}]}]},
                    "nnunet_vasculature": {"kidney": "kidney_5", "complete": True,
                                           "slice_ids": [f"kidney_5_{z:04d}" for z in range(4)]}})
    g.create_array("0", shape=(4, 6, 7), chunks=(1, 6, 7), dtype="uint8")[:] = 200
    (image / "0" / "c" / "1" / "0" / "0").write_bytes(b"garbage")
    _one_line(capsys, ["submit", "-i", str(image), "-pp", str(pp), "-o", str(tmp_path / "s.csv")], str(image))
    assert not (tmp_path / "s.csv").exists()
