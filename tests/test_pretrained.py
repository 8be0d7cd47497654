"""v1 -> v2 weight import, checked against the real v1 Generic_UNet (nnunet==1.7.1)."""
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.pretrained import load_v1_as_v2
from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model, restricted_loads
from nnunet_vasculature.pretrained.v1_export import v1_state_dict
from v1_helpers import make_v1_zip

CONFIGS = [
    # (pool, conv, patch): anisotropic first stage like Task008, isotropic, and deeper anisotropic
    ([[1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], (8, 16, 16)),
    ([[2, 2, 2], [2, 2, 2]], [[3, 3, 3], [3, 3, 3], [3, 3, 3]], (16, 16, 16)),
    ([[1, 2, 2], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], (8, 32, 24)),
]


@pytest.mark.parametrize("pool,conv,patch", CONFIGS)
def test_logits_match_real_v1(tmp_path, pool, conv, patch):
    zpath, nets = make_v1_zip(tmp_path / "Task008_HepaticVessel.zip", pool=pool, conv=conv, patch=patch)
    ours = load_v1_as_v2(zpath)
    x = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = nets[0](x)[0]          # v1 returns the deep-supervision tuple, full resolution first
        out = ours(x)
    assert out.shape == (2, 3, *patch)
    assert torch.max(torch.abs(out - ref)).item() <= 1e-4


def test_deep_supervision_outputs_match(tmp_path):
    pool, conv, patch = CONFIGS[0]
    zpath, nets = make_v1_zip(tmp_path / "t.zip", pool=pool, conv=conv, patch=patch)
    ours = load_v1_as_v2(zpath)
    ours.decoder.deep_supervision = True
    x = torch.randn(1, 1, *patch)
    with torch.no_grad():
        ref = nets[0](x)
        out = ours(x)
    assert len(out) == len(ref) == len(pool)
    # v1 upscale_logits=False: lower resolutions are returned as is, same order as v2
    for a, b in zip(out, ref):
        assert a.shape == b.shape and torch.max(torch.abs(a - b)).item() <= 1e-4


def test_unpacked_folder_and_fold_choice(tmp_path):
    zpath, nets = make_v1_zip(tmp_path / "t.zip", folds=(0, 1))
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "unpacked")
    x = torch.randn(1, 1, 8, 16, 16)
    ours = load_v1_as_v2(tmp_path / "unpacked", fold=1)
    with torch.no_grad():
        assert torch.max(torch.abs(ours(x) - nets[1](x)[0])).item() <= 1e-4
        assert torch.max(torch.abs(ours(x) - nets[0](x)[0])).item() > 1e-3


def test_exported_v1_keys_load_into_real_generic_unet(tmp_path):
    zpath, nets = make_v1_zip(tmp_path / "t.zip")
    ours = load_v1_as_v2(zpath)
    exported = v1_state_dict(ours)
    missing, unexpected = nets[0].load_state_dict(exported, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys


def _rewrite_zip(tmp_path, name, edit=lambda n, data: (n, data), extra=()):
    """A copy of a valid v1 zip with members renamed/replaced by ``edit`` and ``extra`` members added."""
    zpath, _ = make_v1_zip(tmp_path / "t.zip")
    out = tmp_path / name
    with zipfile.ZipFile(zpath) as src, zipfile.ZipFile(out, "w") as dst:
        for n in src.namelist():
            dst.writestr(*edit(n, src.read(n)))
        for n, data in extra:
            dst.writestr(n, data)
    return out


class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(UserError, match="unsafe"):
        restricted_loads(pickle.dumps({"plans": _Evil()}), "x.pkl")
    ok = restricted_loads(pickle.dumps({"a": np.arange(3), "b": (1, 2.0, "s")}), "y.pkl")
    assert ok["a"].tolist() == [0, 1, 2]


def test_malicious_pickle_inside_zip_is_refused(tmp_path):
    evil = pickle.dumps({"plans": _Evil(), "init": ()})
    bad = _rewrite_zip(tmp_path, "bad.zip", lambda n, d: (n, evil if n.endswith(".model.pkl") else d))
    with pytest.raises(UserError, match="unsafe"):
        read_v1_model(bad)


def test_path_traversal_member_is_refused(tmp_path):
    bad = _rewrite_zip(tmp_path, "trav.zip", extra=[("../../etc/evil.txt", b"x")])
    with pytest.raises(UserError, match="traversal"):
        read_v1_model(bad)


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a valid zip"):
        read_v1_model(bad)


def test_v2_checkpoint_passed_as_v1(tmp_path):
    buf = io.BytesIO()
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, buf)
    bad = _rewrite_zip(tmp_path, "v2.zip",
                       lambda n, d: (n, buf.getvalue() if n.endswith("model_final_checkpoint.model") else d))
    with pytest.raises(UserError, match="v2 checkpoint"):
        read_v1_model(bad)


def test_2d_only_zip(tmp_path):
    bad = _rewrite_zip(tmp_path, "2d.zip", lambda n, d: (n.replace("/3d_fullres/", "/2d/"), d))
    with pytest.raises(UserError, match="no '3d_fullres' model"):
        read_v1_model(bad)
    with pytest.raises(UserError, match="2D models are not supported"):
        read_v1_model(bad, configuration="2d")


def test_missing_fold(tmp_path):
    zpath, _ = make_v1_zip(tmp_path / "t.zip")
    with pytest.raises(UserError, match="no fold 3"):
        read_v1_model(zpath, folds=(3,))
