"""v1 -> v2 weight import, on the 2020 download layout and serialisation (benchmarks/common.py:
write_task008_zip), checked against the real v1 Generic_UNet (nnunet==1.7.1)."""
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from benchmarks.common import legacy_checkpoint_bytes, real_generic_unet, write_task008_zip
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.pretrained import load_v1_as_v2
from nnunet_vasculature.pretrained.v1_checkpoint import _load_state_dict, read_v1_model, restricted_loads

FOLDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """Every configuration, five folds, a different real v1 network in each."""
    return write_task008_zip(tmp_path_factory.mktemp("zenodo") / "Task008_HepaticVessel.zip", folds=FOLDS)


def _max_diff(a, b):
    return torch.max(torch.abs(a - b)).item()


def test_2020_checkpoint_is_read_with_weights_only():
    """torch 1.4 legacy format, pickle protocol 2, numpy 1.x names for the plot_stuff scalars: the
    weights-only loader must accept numpy.core.multiarray.scalar (it refused it before)."""
    net = real_generic_unet([[1, 2, 2]], [[1, 3, 3], [3, 3, 3]], base=4, seed=0)
    data = legacy_checkpoint_bytes(net.state_dict(), {"state": {}, "param_groups": []},
                                   ([np.float64(0.5)], [np.float64(0.4)], [], [np.float64(0.6)]))
    # the facts of the real files, so that the fixture cannot drift from them
    assert not data.startswith(b"PK") and data[:2] == b"\x80\x02"
    assert b"numpy.core.multiarray\nscalar" in data and b"numpy._core" not in data
    sd = _load_state_dict(data, "model_final_checkpoint.model")
    assert set(sd) == set(net.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())


def test_code_in_a_checkpoint_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "plot_stuff": Evil()}, buf, pickle_protocol=2, _use_new_zipfile_serialization=False)
    refused = r"^evil\.model: refused: the checkpoint holds print, not only weights and plain values"
    with pytest.raises(UserError, match=refused) as e:
        _load_state_dict(buf.getvalue(), "evil.model")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


CONFIGS = [
    # (pool, conv, patch): anisotropic first stage, isotropic, and deeper anisotropic
    ([[1, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], (8, 16, 16)),
    ([[2, 2, 2], [2, 2, 2]], [[3, 3, 3], [3, 3, 3], [3, 3, 3]], (16, 16, 16)),
    ([[1, 2, 2], [1, 2, 2], [2, 2, 2]], [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], (8, 32, 24)),
]


@pytest.mark.parametrize("pool,conv,patch", CONFIGS)
def test_logits_match_real_v1(tmp_path, pool, conv, patch):
    zpath, nets = write_task008_zip(tmp_path / "Task008_HepaticVessel.zip", folds=(0,), pool=pool, conv=conv,
                                    patch_fullres=patch, configurations=("3d_fullres",))
    ours = load_v1_as_v2(zpath)
    x = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = nets[("3d_fullres", 0)](x)[0]      # v1 returns the deep-supervision tuple, full resolution first
        out = ours(x)
    assert out.shape == (2, 3, *patch)
    assert _max_diff(out, ref) <= 1e-4


@pytest.mark.parametrize("configuration,fold", [("3d_fullres", 0), ("3d_fullres", 3), ("3d_lowres", 1)])
def test_the_requested_configuration_and_fold_are_imported(download, configuration, fold):
    zpath, nets = download
    ours = load_v1_as_v2(zpath, configuration, fold)
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ours(x)
        assert _max_diff(out, nets[(configuration, fold)](x)[0]) <= 1e-4
        for (c, f), other in nets.items():
            if c in ("3d_lowres", "3d_fullres") and (c, f) != (configuration, fold):
                assert _max_diff(out, other(x)[0]) > 1e-3, (c, f)
    model = read_v1_model(zpath, configuration, (fold,))
    assert model.stage == (1 if configuration == "3d_fullres" else 0)
    assert list(model.stage_plans["patch_size"]) == ([8, 24, 24] if configuration == "3d_fullres" else [8, 16, 16])


def test_deep_supervision_outputs_match(download):
    zpath, nets = download
    ours = load_v1_as_v2(zpath)
    ours.decoder.deep_supervision = True
    x = torch.randn(1, 1, 8, 24, 24)
    with torch.no_grad():
        ref = nets[("3d_fullres", 0)](x)
        out = ours(x)
    assert len(out) == len(ref) == 2
    # v1 upscale_logits=False: lower resolutions are returned as is, same order as v2
    for a, b in zip(out, ref):
        assert a.shape == b.shape and _max_diff(a, b) <= 1e-4


def test_unpacked_folder(tmp_path, download):
    zpath, nets = download
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "unpacked")
    x = torch.randn(1, 1, 8, 16, 16)
    ours = load_v1_as_v2(tmp_path / "unpacked", fold=2)
    with torch.no_grad():
        assert _max_diff(ours(x), nets[("3d_fullres", 2)](x)[0]) <= 1e-4


def test_cascade_and_2d_are_refused_by_name(download):
    zpath, _ = download
    with pytest.raises(UserError, match="cascade takes the 3d_lowres segmentation"):
        read_v1_model(zpath, configuration="3d_cascade_fullres")
    with pytest.raises(UserError, match="2D models are not supported"):
        read_v1_model(zpath, configuration="2d")


def test_exported_v1_keys_load_into_real_generic_unet(download):
    from nnunet_vasculature.demo.v1_export import v1_state_dict
    zpath, nets = download
    exported = v1_state_dict(load_v1_as_v2(zpath))
    result = nets[("3d_fullres", 0)].load_state_dict(exported, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def _rewrite_zip(tmp_path, download, name, edit=lambda n, data: (n, data), extra=()):
    """A copy of the download with members renamed/replaced by ``edit`` and ``extra`` members added."""
    out = tmp_path / name
    with zipfile.ZipFile(download[0]) as src, zipfile.ZipFile(out, "w") as dst:
        for n in src.namelist():
            if "/fold_0/" in n or "/fold_" not in n:
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


def test_malicious_pickle_inside_zip_is_refused(tmp_path, download):
    evil = pickle.dumps({"plans": _Evil(), "init": ()})
    bad = _rewrite_zip(tmp_path, download, "bad.zip", lambda n, d: (n, evil if n.endswith(".model.pkl") else d))
    with pytest.raises(UserError, match="unsafe"):
        read_v1_model(bad)


def test_path_traversal_member_is_refused(tmp_path, download):
    bad = _rewrite_zip(tmp_path, download, "trav.zip", extra=[("../../etc/evil.txt", b"x")])
    with pytest.raises(UserError, match="traversal"):
        read_v1_model(bad)


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a valid zip"):
        read_v1_model(bad)


def test_v2_checkpoint_passed_as_v1(tmp_path, download):
    buf = io.BytesIO()
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, buf)
    bad = _rewrite_zip(tmp_path, download, "v2.zip",
                       lambda n, d: (n, buf.getvalue() if n.endswith("model_final_checkpoint.model") else d))
    with pytest.raises(UserError, match="v2 checkpoint"):
        read_v1_model(bad)


def test_2d_only_zip(tmp_path, download):
    bad = _rewrite_zip(tmp_path, download, "2d.zip",
                       lambda n, d: (n.replace("3d_", "2d_x_", 1) if n.startswith("3d_") else n, d))
    with pytest.raises(UserError, match="no '3d_fullres' model"):
        read_v1_model(bad)


def test_missing_fold(tmp_path, download):
    bad = _rewrite_zip(tmp_path, download, "fold0.zip")
    with pytest.raises(UserError, match=r"no fold 3 \(has: 0\)"):
        read_v1_model(bad, folds=(3,))


def test_v1_stem_adapted_to_two_channels(tmp_path):
    """A v1 source for a 2-channel target: for an input equal in both channels the adapted network gives the
    real v1 network's logits on that channel."""
    from nnunet_vasculature.pretrained.archive import ModelFiles
    from nnunet_vasculature.pretrained.transfer import adapt_input_channels, build_network, load_source
    zpath, nets = write_task008_zip(tmp_path / "Task008_HepaticVessel.zip", folds=(0,), configurations=("3d_fullres",))
    src = load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)
    weights, adapted = adapt_input_channels(src, 2)
    assert adapted == ["encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.all_modules.0.weight"]
    net = build_network(src.architecture, 2, 3, deep_supervision=False)
    net.load_state_dict(weights, strict=True)
    x = torch.randn(1, 1, 8, 24, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _max_diff(net.eval()(x.expand(1, 2, 8, 24, 24).contiguous()), nets[("3d_fullres", 0)](x)[0]) <= 1e-4


def test_v1_trainer_and_plans_are_chosen_by_name(download):
    zpath, _ = download
    assert read_v1_model(zpath, trainer="nnUNetTrainerV2", plans="nnUNetPlansv2.1").trainer == "nnUNetTrainerV2"
    with pytest.raises(UserError, match=r"no v1 model for -p nnUNetPlans_Task008 \(has: nnUNetPlansv2.1\)"):
        read_v1_model(zpath, plans="nnUNetPlans_Task008")
