"""Issue 35, items 9, 10 and 14-16: a prediction that needs more memory than the machine (or, with `--workers N`,
N slabs at once) has is refused before any work; an instance table with very many instances per tile is scored in
bounded memory; `bundle` never writes over its own inputs; an output that is an existing folder is named in one
line and nothing is left behind.

Input stores are written by zarr directly, never by this package's writers."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from helpers.bundle import bundle_cli
from helpers.model import make_model_folder
from helpers.postprocess import _kidney, _write_kidney

from nnunet_vasculature.cli import main


def _one_line(capsys, code):
    """The error line (progress bars of the work done before it may precede it), and no traceback."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert not [line for line in lines[:-1] if "error" in line], err
    return lines[-1]


def _mem_available():
    """MemAvailable of /proc/meminfo in bytes (None where unreadable), read here independently of the package."""
    try:
        line = next(x for x in open("/proc/meminfo").read().splitlines() if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def _left_behind(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _unloadable_model(tmp_path):
    """A model folder whose checkpoint is not one: a run that loaded it would fail otherwise."""
    folder = make_model_folder(tmp_path / "model")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    return folder


def _declared_omezarr(tmp_path, name, shape):
    """An OME-Zarr image of one level declaring ``shape`` at 50 µm, written by zarr with no chunk (zarr arrays are
    lazy: only the metadata exists)."""
    image = tmp_path / f"{name}.ome.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=3)
    group.create_array("0", shape=shape, chunks=tuple(min(n, 1000) for n in shape), dtype="uint16",
                       dimension_names=["z", "y", "x"])
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": name, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [50.0, 50.0, 50.0]}]}],
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]}]}
    return image


# --------------------------------------------------------------------------------------------- item 10
def test_declared_huge_omezarr_is_refused_before_the_model_loads(tmp_path, capsys):
    """An OME-Zarr declaring 20000^3 voxels (no chunk written: zarr arrays are lazy) is refused in one line naming
    the input, the memory it needs and the machine's, before the model loads (before: prediction started and
    died with a MemoryError; the checkpoint here is unreadable, so a run that loaded it fails otherwise)."""
    free = _mem_available()
    if free is None or free > 2 ** 40:
        pytest.skip("MemAvailable unknown or above 1 TiB here")
    folder = _unloadable_model(tmp_path)
    image = _declared_omezarr(tmp_path, "huge", (20000, 20000, 20000))
    out = tmp_path / "out.ome.zarr"
    err = _one_line(capsys, main(["predict", "-i", str(image), "-o", str(out), "-m", str(folder), "-device", "cpu",
                                  "--disable_tta"]))
    assert err.startswith("error: huge: predicting (20000, 20000, 20000) needs about ") and \
        "this machine has" in err and "available" in err, err
    needed = float(err.split("needs about ")[1].split(" GiB")[0])
    assert needed > free / 2 ** 30, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_bundle_refuses_an_output_that_is_an_input(tmp_path, capsys, where):
    """`bundle -o X --find-links X --overwrite` (or X inside / around the wheel folder) is refused in one line and
    the wheel folder is untouched (before: atomic_dir replaced it)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "some-1.0-py3-none-any.whl").write_bytes(b"a wheel")
    out = {"same": wheels, "inside": wheels / "bundle", "containing": tmp_path}[where]
    err = _one_line(capsys, bundle_cli(["-o", str(out), "--find-links", str(wheels), "--overwrite",
                                        "--torch-version", "2.5.0", "--torchvision-version", "0.20.0"]))
    assert f"{out.resolve()}: the output -o would replace the input --find-links" in err, err
    assert sorted(p.name for p in wheels.iterdir()) == ["some-1.0-py3-none-any.whl"]


def test_bundle_refuses_an_output_that_holds_a_constraint_file(tmp_path, capsys):
    """`bundle -o X -c X/constraints.txt --overwrite`: X would be replaced while pip reads the constraint file from
    it; refused in one line, the file untouched."""
    folder = tmp_path / "here"
    folder.mkdir()
    pins = folder / "constraints.txt"
    pins.write_text("numpy==2.4.6\n")
    err = _one_line(capsys, bundle_cli(["-o", str(folder), "-c", str(pins), "--overwrite",
                                        "--torch-version", "2.5.0", "--torchvision-version", "0.20.0"]))
    assert f"{folder.resolve()}: the output -o would replace the input -c" in err, err
    assert pins.read_text() == "numpy==2.4.6\n"


# --------------------------------------------------------------------------------------------- item 16
def _sennet_store(tmp_path):
    """A complete probability store of one kidney and its postprocessing.json, written by zarr directly."""
    store = tmp_path / "p.zarr"
    a = zarr.open_group(str(store), mode="w").create_array("kidney_5", shape=(4, 6, 7), chunks=(1, 6, 7),
                                                           dtype="uint8")
    a[:] = 200
    a.attrs.update({"kidney": "kidney_5", "slice_ids": [f"kidney_5_{z:04d}" for z in range(4)], "complete": True,
                    "source": {"tool": "predict"}})
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    return store, pp


def test_submit_into_an_existing_folder_names_it_and_leaves_nothing(tmp_path, capsys):
    store, pp = _sennet_store(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    err = _one_line(capsys, main(["submit", "-i", str(store), "-pp", str(pp), "-o", str(folder)]))
    assert err == f"error: {folder}: is a folder; give the output a file name", err
    assert _left_behind(tmp_path) == [] and list(folder.iterdir()) == []


def test_score_json_into_an_existing_folder_names_it_and_leaves_nothing(tmp_path, capsys):
    gt, prob = _kidney(np.random.default_rng(4))
    labels = _write_kidney(tmp_path, "kidney_2", gt, prob)
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"competition": "sennet", "threshold_u8": 140, "min_component_voxels": 0}))
    folder = tmp_path / "scores"
    folder.mkdir()
    err = _one_line(capsys, main(["score", "--labels", str(labels), "--pred", str(tmp_path / "probs.zarr" / "kidney_2"),
                                  "-pp", str(pp), "--json", str(folder)]))
    assert err == f"error: {folder}: is a folder; give the output a file name", err
    assert _left_behind(tmp_path) == [] and list(folder.iterdir()) == []


def test_export_model_into_an_existing_folder_names_it_and_leaves_nothing(tmp_path, capsys):
    folder = make_model_folder(tmp_path / "results" / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    out = tmp_path / "m.zip"
    out.mkdir()
    err = _one_line(capsys, main(["export-model", "-m", str(folder), "-f", "0", "-o", str(out)]))
    assert err == f"error: {out}: is a folder; give the output a file name", err
    assert _left_behind(tmp_path) == [] and list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------- item 14
def _many_instances_csvs(tmp_path, n=4000, size=512, hit=False):
    """A submission, sample and solution of one 512^2 tile whose prediction has ``n`` one-pixel instances (and with
    ``hit`` first the truth's own mask, scored 0.9), encoded with pycocotools, zlib and base64 directly (the
    competition's format)."""
    import base64
    import csv
    import zlib

    from pycocotools import mask as coco_mask

    def encode(mask):
        counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        return base64.b64encode(zlib.compress(counts)).decode("ascii")

    truth = np.zeros((size, size), bool)
    truth[:4, :4] = True
    tokens = ["0", "0.9", encode(truth)] if hit else []
    for k in range(n):
        mask = np.zeros((size, size), bool)
        mask[k // size, k % size] = True
        tokens += ["0", "0.5", encode(mask)]
    files = {"submission.csv": ("id,height,width,prediction_string", f"t1,{size},{size},{' '.join(tokens)}"),
             "sample.csv": ("id,height,width,prediction_string", f"t1,{size},{size},"),
             "solution.csv": ("id,height,width,annotations", f"t1,{size},{size},{encode(truth)}")}
    for name, (header, row) in files.items():
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header.split(","))
            writer.writerow(row.split(",", 3))
    return tmp_path / "submission.csv", tmp_path / "sample.csv", tmp_path / "solution.csv"


def _traced(call: str) -> tuple[str, int]:
    """``call`` (an expression of hubmap_vasculature's functions) in a fresh interpreter under tracemalloc: its
    value as printed, and the peak allocation in bytes."""
    code = textwrap.dedent(f"""
        import tracemalloc
        from nnunet_vasculature.postprocess import hubmap_vasculature
        tracemalloc.start()
        value = hubmap_vasculature.{call}
        print(value, tracemalloc.get_traced_memory()[1])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    value, peak = r.stdout.split()
    return value, int(peak)


def test_validate_streams_a_row_of_many_instances(tmp_path):
    """validate decodes a 4000-instance row of a 512^2 tile one mask at a time: its peak allocation (tracemalloc,
    in a fresh interpreter) stays under 64 MiB (before: every mask was stacked, 4000 x 512^2 bytes = 1 GiB)."""
    sub, sample, _ = _many_instances_csvs(tmp_path)
    n, peak = _traced(f"validate({str(sub)!r}, {str(sample)!r})")
    assert int(n) == 4000 and peak < 64 * 2 ** 20, peak


def test_score_streams_a_row_of_many_instances(tmp_path):
    """score hubmap-vasculature reads a 4001-instance row of a 512^2 tile as run-length masks (pycocotools' IoU on
    the runs): its peak allocation (tracemalloc, in a fresh interpreter) stays under 64 MiB, and the AP is the one
    of the decoded masks (the truth's own mask, scored first, is the one hit: 1.0). Before: more than 1024
    instances were refused, and up to 1024 were decoded to a full-tile stack each."""
    sub, _, solution = _many_instances_csvs(tmp_path, hit=True)
    ap, peak = _traced(f"score_csv({str(solution)!r}, {str(sub)!r})")
    assert float(ap) == 1.0 and peak < 64 * 2 ** 20, (ap, peak)


def test_score_of_run_length_masks_equals_the_decoded_masks(tmp_path):
    """The AP of a row scored from its runs equals the AP of the same masks decoded (by pycocotools, here) and
    scored as a dense stack, on a tile where some detections hit and some miss."""
    import csv

    from pycocotools import mask as coco_mask

    from nnunet_vasculature.metrics.average_precision import average_precision
    from nnunet_vasculature.postprocess.hubmap_vasculature import score_csv

    rng = np.random.default_rng(3)
    truths, dets, scores = [], [], []
    for k in range(12):
        y, x = rng.integers(0, 50, 2)
        truth = np.zeros((64, 64), bool)
        truth[y:y + 10, x:x + 10] = True
        truths.append(truth)
        det = np.zeros((64, 64), bool)
        shift = k % 4                   # 0..3 pixels off: IoU 1.0, 0.82, 0.67, 0.54
        det[y + shift:y + shift + 10, x:x + 10] = True
        dets.append(det)
        scores.append(float(rng.random()))

    def encode(mask):
        import base64
        import zlib
        counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        return base64.b64encode(zlib.compress(counts)).decode("ascii")

    for name, header, row in (("solution.csv", "id,height,width,annotations", " ".join(map(encode, truths))),
                              ("submission.csv", "id,prediction_string",
                               " ".join(f"0 {s} {encode(d)}" for s, d in zip(scores, dets)))):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header.split(","))
            writer.writerow(["t1", 64, 64, row] if name == "solution.csv" else ["t1", row])
    dense = average_precision([(np.stack(truths), np.stack(dets), scores)])
    assert 0 < dense < 1                                # some hit, some miss
    assert score_csv(tmp_path / "solution.csv", tmp_path / "submission.csv") == dense


def test_score_refuses_a_tile_whose_iou_table_exceeds_the_cap_in_one_line(tmp_path, capsys, monkeypatch):
    """The cap is applied where a tile is scored: with the cap lowered to 4000 x 1 x 8 bytes, the 4001-instance row
    against its one truth is refused in one line naming the file and the tile."""
    from nnunet_vasculature.postprocess import hubmap_vasculature
    sub, _, solution = _many_instances_csvs(tmp_path, hit=True)
    monkeypatch.setattr(hubmap_vasculature, "IOU_MATRIX_BYTES", 4000 * 8)
    err = _one_line(capsys, main(["score", "hubmap-vasculature", "--solution", str(solution), "--submission",
                                  str(sub)]))
    assert err.startswith(f"error: {sub} t1: 4001 instances against 1 truths in one tile; their IoU table"), err


def test_the_iou_table_cap_in_bytes():
    from nnunet_vasculature.errors import UserError
    from nnunet_vasculature.postprocess.hubmap_vasculature import check_pair_count
    check_pair_count(4000, 8000, "s.csv t1")            # 244 MiB: scored
    with pytest.raises(UserError, match=r"s.csv t1: 4000 instances against 9000 truths in one tile; their IoU "
                                        r"table would take 275 MiB, at most 256 MiB are scored"):
        check_pair_count(4000, 9000, "s.csv t1")


def test_bundle_on_a_full_disk_says_so(monkeypatch, tmp_path):
    """pip's own words on a full disk are "ERROR: Exception:" and a traceback ending in ENOSPC: the line says
    what happened (issue 35 item 18)."""
    from nnunet_vasculature.export import bundle
    full = subprocess.CompletedProcess([], 2, stdout="", stderr="ERROR: Exception:\nTraceback (most recent call "
                                       "last):\n  File \"pip/_internal/...\"\nOSError: [Errno 28] No space left on "
                                       "device: '/out/x.whl'\n")
    assert bundle._last_error(full) == "no space left on the device"
    other = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found for x\n")
    assert bundle._last_error(other) == "No matching distribution found for x"


def test_a_truncated_npz_of_apply_hubmap_vasculature_is_named(tmp_path, capsys):
    """apply hubmap-vasculature on a folder holding a truncated probabilities .npz: one line naming the file."""
    probs = tmp_path / "probs"
    probs.mkdir()
    p = np.random.default_rng(0).random((1, 1, 32, 32)).astype(np.float32)
    np.savez_compressed(probs / "tile0.npz", probabilities=np.concatenate([1 - p, p]))
    (probs / "tile0.npz").write_bytes((probs / "tile0.npz").read_bytes()[:150])
    assert main(["apply", "hubmap-vasculature", "-i", str(probs), "-o", str(tmp_path / "inst")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert len(err) == 1 and str(probs / "tile0.npz") in err[0], err
    assert not (tmp_path / "inst").exists()


# --------------------------------------------------------------------------------------------- items 9 and 10
def _no_cluster(monkeypatch, cores=8):
    """``--workers`` up to ``cores`` pass the core check; a cluster that would be started or reached fails the
    run with a line the tests do not expect."""
    from nnunet_vasculature.inference import distributed

    def connect(*args):
        raise distributed.UserError("a dask cluster was started")
    monkeypatch.setattr(distributed, "usable_cores", lambda: cores)
    monkeypatch.setattr(distributed, "_connect", connect)
    return distributed


def test_declared_huge_omezarr_with_workers_is_refused_before_any_output_or_worker(tmp_path, capsys, monkeypatch):
    """`predict --workers 2` on an OME-Zarr declaring 20000^3 voxels is refused in one line naming the input and
    the memory one worker's slab needs, before the output image exists and before any dask cluster is started
    (before: the memory was never checked on this path; 2 workers started and the output was created)."""
    from nnunet_vasculature.inference import budget
    _no_cluster(monkeypatch)
    monkeypatch.setattr(budget, "available_memory", lambda: 16 * 2 ** 30)
    image = _declared_omezarr(tmp_path, "huge", (20000, 20000, 20000))
    out = tmp_path / "out.ome.zarr"
    err = _one_line(capsys, main(["predict", "-i", str(image), "-o", str(out), "-m", str(_unloadable_model(tmp_path)),
                                  "-device", "cpu", "--disable_tta", "--workers", "2"]))
    assert err.startswith("error: huge: predicting (20000, 20000, 20000) needs about ") and \
        "of memory per worker, this machine has 16.00 GiB available" in err, err
    assert float(err.split("needs about ")[1].split(" GiB")[0]) > 16, err
    assert not out.exists()


def test_more_workers_than_memory_holds_are_refused_naming_a_count_that_fits(tmp_path, capsys, monkeypatch):
    """`--workers 4` where the available memory holds 2.5 workers' slabs (each the `--dry_run` host figure) is
    refused in one line saying `--workers 2`, before any output or cluster exists (before: only the cores capped
    N); `--workers 2` passes the memory check (it reaches the cluster start, stubbed here)."""
    from nnunet_vasculature.inference import budget
    from nnunet_vasculature.inference.options import PredictionOptions
    _no_cluster(monkeypatch)
    folder = _unloadable_model(tmp_path)
    image = _declared_omezarr(tmp_path, "small", (64, 512, 512))
    out = tmp_path / "out.ome.zarr"
    [figures] = budget.dry_run(str(image), PredictionOptions(folder, (0,), tta=False), device="cpu", out=out)
    need = figures["host_bytes"]
    monkeypatch.setattr(budget, "available_memory", lambda: 2 * need + need // 2)
    args = ["predict", "-i", str(image), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    err = _one_line(capsys, main(args + ["--workers", "4"]))
    assert err.startswith("error: small: --workers 4 need about 4 x ") and err.endswith("use --workers 2 (see "
                                                                                           "--dry_run)"), err
    assert not out.exists()
    assert _one_line(capsys, main(args + ["--workers", "2"])) == "error: a dask cluster was started"


def test_a_remote_cluster_is_checked_against_its_workers_memory_limit(tmp_path, capsys, monkeypatch):
    """`--scheduler`: one slab of a 20000^3 OME-Zarr is compared with the largest `memory_limit` the scheduler
    reports for its workers (not this machine's memory), in one line before the output exists (before: the
    output was created and the slabs submitted)."""
    from nnunet_vasculature.inference import budget
    distributed = _no_cluster(monkeypatch)
    monkeypatch.setattr(budget, "available_memory", lambda: 2 ** 50)     # this machine's memory is not asked

    class Client:
        closed = False

        def scheduler_info(self, n_workers=5):
            return {"workers": {"tcp://a:1": {"memory_limit": 2 ** 30}, "tcp://b:1": {"memory_limit": 4 * 2 ** 30}}}

        def close(self):
            Client.closed = True
    monkeypatch.setattr(distributed, "_connect", lambda *args: (Client(), None))
    image = _declared_omezarr(tmp_path, "huge", (20000, 20000, 20000))
    out = tmp_path / "out.ome.zarr"
    err = _one_line(capsys, main(["predict", "-i", str(image), "-o", str(out), "-m", str(_unloadable_model(tmp_path)),
                                  "-device", "cpu", "--disable_tta", "--scheduler", "tcp://a:8786"]))
    assert "of memory per worker, each of the cluster's workers has at most 4.00 GiB available" in err, err
    assert not out.exists() and Client.closed
