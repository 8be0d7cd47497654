"""HuBMAP Hacking the Kidney: RLE speed, conversion throughput / peak RSS, slide prediction peak RSS vs slide size.

    nice -n 10 .venv/bin/python -m benchmarks hubmap_kidney [--shape 25000 34000] [--model MODEL_FOLDER] [--work DIR]

Each measurement prints its reference measured in the same run:
  rle      column-major RLE of a full-size mask: the usual Kaggle snippet vs ``rle_encode(order="F")`` vs the
           strip encoder (1024-column strips) - same string asserted;
  convert  ``convert hubmap-kidney`` of a synthetic slide of --shape (written tile by tile) vs of a small one:
           time, megapixels/s and peak RSS of the converting process;
  predict  ``predict hubmap-kidney`` (no TTA) of the big slide vs the small one with the 2D model of --model (e.g. the
           demo's), peak RSS of each process, and of a process that only loads the model.
Peak RSS is the VmHWM of a fresh child process per measurement (its ``ru_maxrss`` would carry this process's
high-water mark, e.g. the RLE step's, into the child). The figures of the parts run are appended to
the run records (`python -m benchmarks --table hubmap_kidney`).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import kaggle_rle, record, run_child

HERE = Path(__file__).resolve().parent


def _child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (:func:`benchmarks.common.run_child`); it must set ``result`` (a dict);
    adds its wall time and peak RSS (VmHWM, ``peak_rss_mb``)."""
    try:
        r = run_child(f"import time\nt0 = time.time()\n{code}\nreport(**result, seconds=time.time() - t0)")
    except RuntimeError as e:
        raise SystemExit(f"child failed:\n{e}") from None
    r["peak_rss_mb"] = r.pop("peak_rss_mib")
    return r



def rle_line(r: dict) -> str:
    """The printed line of :func:`bench_rle`'s figures."""
    return (f"rle  {r['width']} x {r['height']} mask ({r['foreground (%)']:.1f}% foreground, {r['runs']} runs): "
            f"Kaggle snippet {r['Kaggle snippet (s)']:.2f} s | rle_encode(order='F') {r['rle_encode (s)']:.2f} s "
            f"({r['Kaggle snippet (s)'] / r['rle_encode (s)']:.1f}x) | strip encoder {r['strip encoder (s)']:.2f} s "
            f"({r['Kaggle snippet (s)'] / r['strip encoder (s)']:.1f}x); identical strings")


def bench_rle(shape: tuple[int, int]) -> dict:
    """Column-major RLE of a glomerulus-like mask of ``shape``: the Kaggle snippet, ``rle_encode`` and the strip
    encoder (same string asserted); prints and returns the figures."""
    from nnunet_vasculature.io.rle import ColumnStripEncoder, rle_encode
    h, w = shape
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, np.uint8)
    yy, xx = np.ogrid[-120:121, -120:121]
    disc = (yy ** 2 + xx ** 2 <= 120 ** 2).astype(np.uint8)
    for _ in range(h * w // 400_000):                       # glomerulus-like discs, ~10 % of the pixels
        y, x = rng.integers(0, h - 241), rng.integers(0, w - 241)
        mask[y:y + 241, x:x + 241] |= disc
    t = time.perf_counter()
    ref = kaggle_rle(mask.T)      # the snippet's img.T.flatten(): column-major
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    ours = rle_encode(mask, order="F", empty="")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    enc = ColumnStripEncoder(h, empty="")
    for x in range(0, w, 1024):
        enc.add(mask[:, x:x + 1024])
    strips = enc.finish()
    t_strip = time.perf_counter() - t
    assert ours == ref == strips
    r = {"width": w, "height": h, "foreground (%)": float(mask.mean() * 100), "runs": len(ref.split()) // 2,
         "Kaggle snippet (s)": t_ref, "rle_encode (s)": t_ours, "strip encoder (s)": t_strip,
         "snippet / rle_encode": t_ref / t_ours, "snippet / strip encoder": t_ref / t_strip}
    print(rle_line(r))
    return r


def _slides(work: Path, shape: tuple[int, int], synthesized: list[dict]) -> dict[str, Path]:
    """A Kaggle-layout folder with one small (~1.6k px) training slide and one of ``shape`` (written tile by
    tile); kept between runs (the big one under a name with its shape). The time and peak RSS of each slide
    synthesized now are appended to ``synthesized``."""
    kaggle = {}
    for name, full in (("small", False), ("big", True)):
        k = work / (f"kaggle_big_{shape[0]}x{shape[1]}" if full else "kaggle_small")
        if not (k / "train.csv").exists():
            r = _child(f"from nnunet_vasculature.synthetic.hubmap_kidney import synthesize\n"
                       f"synthesize({str(k)!r}, 0, {'full' if full else 'small'!r}, True, n_train=1, n_test=0, "
                       f"full_shape={tuple(shape)!r})\nresult = {{}}")
            synthesized.append({"synthesized slide": name, "seconds": r["seconds"], "peak RSS (MB)": r["peak_rss_mb"]})
            print(f"synthesize {name}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
        kaggle[name] = k
    return kaggle


def convert_line(r: dict) -> str:
    """The printed line of one of :func:`bench_convert`'s rows."""
    return (f"convert {r['converted slide']:5s}: {r['Mpx']:8.1f} Mpx in {r['seconds']:6.1f} s = "
            f"{r['Mpx/s']:6.1f} Mpx/s, peak RSS {r['peak RSS (MB)']:6.0f} MB")


def bench_convert(work: Path, kaggle: dict[str, Path]) -> list[dict]:
    """``convert hubmap-kidney`` of each slide in a fresh process; prints and returns a row per slide."""
    rows = []
    for name, k in kaggle.items():
        r = _child(f"from nnunet_vasculature.dataset_conversion.hubmap_kidney import convert_hubmap_kidney\n"
                   f"from nnunet_vasculature.io.slide import read_info\n"
                   f"convert_hubmap_kidney({str(k)!r}, 650, raw_root={str(work / ('raw_' + name))!r}, downscale=4, "
                   f"overwrite=True)\ni = list(read_info({str(k)!r}).values())[0]\n"
                   f"result = {{'mpx': i['width'] * i['height'] / 1e6}}")
        rows.append({"converted slide": name, "Mpx": r["mpx"], "seconds": r["seconds"],
                     "Mpx/s": r["mpx"] / r["seconds"], "peak RSS (MB)": r["peak_rss_mb"]})
        print(convert_line(rows[-1]))
    return rows


def predict_line(r: dict) -> str:
    """The printed line of one of :func:`bench_predict`'s rows."""
    if r["predicted slide"] == "model only":
        return f"predict hubmap-kidney model only (loaded, no slide): peak RSS {r['peak RSS (MB)']:.0f} MB"
    return (f"predict hubmap-kidney {r['predicted slide']:5s}: {r['width']} x {r['height']} px, {r['tiles']} tiles "
            f"({r['skipped (no tissue)']} skipped, no tissue), {r['seconds']:.0f} s, "
            f"peak RSS {r['peak RSS (MB)']:.0f} MB")


def bench_predict(work: Path, kaggle: dict[str, Path], model: Path) -> list[dict]:
    """``predict hubmap-kidney`` of each slide, and a process that only loads the model; prints and returns the rows."""
    options = f"PredictionOptions.of({str(model)!r}, ['0'], tta=False)"
    r = _child(f"from nnunet_vasculature.inference.options import PredictionOptions\n"
               f"from nnunet_vasculature.inference.slide import SlidePredictor\n"
               f"SlidePredictor({options}, device='cpu')\nresult = {{}}")
    rows = [{"predicted slide": "model only", "peak RSS (MB)": r["peak_rss_mb"]}]
    print(predict_line(rows[-1]))
    for name, k in kaggle.items():
        slide = sorted((k / "train").glob("*.tiff"))[0]
        r = _child(f"from nnunet_vasculature.inference.options import PredictionOptions\n"
                   f"from nnunet_vasculature.inference.slide import predict_slides\n"
                   f"predict_slides([{str(slide)!r}], {str(work / ('pred_' + name))!r}, {options}, 'cpu', "
                   f"overwrite=True)\n"
                   f"import zarr\na = zarr.open_array({str(work / ('pred_' + name) / (slide.stem + '.zarr'))!r})\n"
                   f"result = {{'shape': list(a.shape), "
                   f"**{{k: a.attrs[k] for k in ('tiles', 'skipped_without_tissue')}}}}")
        h, w = r["shape"]
        rows.append({"predicted slide": name, "width": w, "height": h, "tiles": r["tiles"],
                     "skipped (no tissue)": r["skipped_without_tissue"], "seconds": r["seconds"],
                     "peak RSS (MB)": r["peak_rss_mb"]})
        print(predict_line(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=2, default=[25000, 34000], help="big slide height width")
    ap.add_argument("--model", type=Path, help="a trained 2D model folder from convert hubmap-kidney data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_hubmap_kidney"))
    ap.add_argument("--only", choices=("rle", "convert", "predict"), nargs="+", default=["rle", "convert", "predict"])
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"max RSS of this process so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    figures = {}
    if "rle" in a.only:
        figures["rle"] = [bench_rle(tuple(a.shape))]
    if "convert" in a.only or "predict" in a.only:
        synthesized = []
        kaggle = _slides(a.work, tuple(a.shape), synthesized)
        if synthesized:
            figures["synthesize"] = synthesized
        if "convert" in a.only:
            figures["convert"] = bench_convert(a.work, kaggle)
        if "predict" in a.only:
            if a.model is None:
                figures["predict"] = "skipped (no --model)"
                print("predict hubmap-kidney: skipped (pass --model, e.g. the demo's "
                      "nnUNet_results/.../nnUNetTrainer_demo__nnUNetPlans_cpu__2d)")
            else:
                figures["predict"] = bench_predict(a.work, kaggle, a.model)
    record("hubmap_kidney", figures, a)


if __name__ == "__main__":
    main()
