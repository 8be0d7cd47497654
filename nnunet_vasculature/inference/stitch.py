"""``nnunet-vasculature stitch``: stock ``nnUNetv2_predict --save_probabilities`` outputs of the z-chunk
cases of ``convert sennet`` -> one uint8 probability array per kidney, in the same zarr layout as
``predict`` (so ``postprocess`` treats both alike). One chunk is in memory at a time.

Note: chunks predicted separately have seams (each chunk's border lacks context); ``predict`` on the
imagesTs folder reads a kidney's chunks as one volume and has none.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.paths import CASES_FILE, find_raw_dataset
from nnunet_vasculature.io.sennet import slice_id
from nnunet_vasculature.io.store import KidneyWriter, quantize
from nnunet_vasculature.io.volumes import read_npz_probabilities


def stitch(pred_dir: Path, raw_dataset: Path, out: Path, overwrite: bool = False) -> Path:
    import zarr
    meta_file = Path(raw_dataset) / CASES_FILE
    if not meta_file.is_file():
        raise UserError(f"{raw_dataset}: no {CASES_FILE} (was it made by 'convert sennet'?)")
    meta = json.loads(meta_file.read_text())
    group = zarr.open_group(str(out), mode="a")
    done = 0
    for kidney, k in meta["kidneys"].items():
        files = [Path(pred_dir) / f"{c['case']}.npz" for c in k["cases"]]
        present = [f.is_file() for f in files]
        if not any(present):
            continue
        if not all(present):
            missing = files[present.index(False)]
            raise UserError(f"{missing}: missing, but other chunks of {kidney} are in {pred_dir}")
        if kidney in group and not overwrite:
            raise UserError(f"{out}: '{kidney}' exists (pass --overwrite)")
        depth = sum(c["z1"] - c["z0"] for c in k["cases"])
        ids = [slice_id(kidney, s) for c in k["cases"] for s in c["slice_ids"]]
        writer = None
        z = 0
        for c, f in tqdm(list(zip(k["cases"], files)), desc=f"stitch {kidney}", unit="chunk"):
            p = read_npz_probabilities(f)
            quantize(p[1], str(f), first_plane=0)         # NaN or out-of-range values: named with the file and plane
            if p.shape[1] != c["z1"] - c["z0"]:
                raise UserError(f"{f}: probabilities of shape {p.shape}, expected (C, {c['z1'] - c['z0']}, y, x)")
            if writer is None:
                writer = KidneyWriter(group, kidney, (depth, *p.shape[2:]), [k["spacing_um"]] * 3, ids,
                                      {"tool": "stitch", "predictions": str(Path(pred_dir).resolve())},
                                      overwrite=True)
            elif p.shape[2:] != writer.arr.shape[1:]:
                raise UserError(f"{f}: planes of {p.shape[2:]}, the kidney's other chunks have {writer.arr.shape[1:]}")
            writer(z, p[1])
            z += p.shape[1]
        writer.close()
        done += 1
    if not done:
        raise UserError(f"{pred_dir}: no .npz of any case listed in {meta_file}")
    print(f"wrote {done} kidney(s) to {out}")
    return Path(out)


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Registers ``stitch sennet`` (plain ``stitch`` by the default competition word).

    Args:
        groups: the competition sub-parsers of each command (:func:`nnunet_vasculature.competitions.command_groups`).
    """
    p = groups["stitch"].add_parser("sennet", help="stock nnU-Net .npz outputs of z-chunk cases -> one zarr array "
                                                   "per kidney")
    p.add_argument("-i", dest="input", type=Path, required=True, help="folder of nnUNetv2_predict .npz outputs")
    p.add_argument("-d", dest="dataset_id", required=True, help="dataset ID (its sennet_cases.json gives the cut)")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output zarr")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=lambda a: stitch(a.input, find_raw_dataset(a.dataset_id), a.output, a.overwrite))
