"""Label slices as classes (io.slices.label_classes): the converter reads each chunk's labels into a reused buffer
and converts them there, so the in-place path must give what the plain formula gives and still name the bad values."""
import numpy as np
import pytest

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.slices import IGNORE_VALUE, label_classes


def _expected(lab: np.ndarray, allow_ignore: bool) -> np.ndarray:
    out = (lab > 0).astype(np.uint8)
    if allow_ignore:
        out[lab == IGNORE_VALUE] = 2
    return out


@pytest.mark.parametrize("values,allow_ignore", [((0, 255), False), ((0, 1), False), ((0, 1, 255), False),
                                                  ((0, 255, IGNORE_VALUE), True), ((0, 1), True)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("in_place", [False, True])
def test_classes_equal_the_formula(values, allow_ignore, dtype, in_place):
    lab = np.random.default_rng(0).choice(np.array(values, dtype), size=(37, 41))
    expected = _expected(lab, allow_ignore)
    out = lab if in_place and dtype == np.uint8 else (np.empty(lab.shape, np.uint8) if in_place else None)
    got = label_classes(lab, "s/0001.tif", allow_ignore, out=out)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert out is None or got is out


@pytest.mark.parametrize("bad,allow_ignore", [(7, False), (IGNORE_VALUE, False), (2, True), (254, True)])
def test_a_bad_value_is_named_even_when_converted_in_place(bad, allow_ignore):
    lab = np.zeros((20, 30), np.uint8)
    lab[3, 4], lab[5, 6] = 255, bad
    with pytest.raises(UserError, match=rf"^s/0005.tif: label values \[{bad}\] found"):
        label_classes(lab, "s/0005.tif", allow_ignore, out=lab)
