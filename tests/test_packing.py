"""The packed 1-bit layout: bit order, tie rule, padding, round trips."""

from __future__ import annotations

import pytest
import torch

from optimum_binarymos.packing import pack_signs, packed_columns, sign_with_ties, unpack_signs


def test_bit_order_is_lsb_first_and_one_means_plus_one():
    weight = torch.tensor([[1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -2.0, 3.0]])
    packed = pack_signs(weight)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0b00000001, 0b00000010]]  # column 9 is bit 1 of byte 1; padding bits are 0


def test_tie_rule_zero_is_plus_one_in_training_and_packing():
    weight = torch.tensor([[0.0, -0.0, -1e-30, 1e-30]])
    assert sign_with_ties(weight).tolist() == [[1.0, 1.0, -1.0, 1.0]]
    assert unpack_signs(pack_signs(weight), 4).tolist() == [[1.0, 1.0, -1.0, 1.0]]


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (4, 9), (17, 63), (2, 64), (13, 1001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_odd_shapes(shape, dtype):
    torch.manual_seed(sum(shape))
    weight = torch.randn(shape).to(dtype)
    packed = pack_signs(weight)
    assert packed.shape == (shape[0], packed_columns(shape[1]))
    signs = unpack_signs(packed, shape[1], dtype)
    assert signs.dtype == dtype
    torch.testing.assert_close(signs, sign_with_ties(weight), rtol=0, atol=0)


def test_unpack_rejects_wrong_inputs():
    packed = pack_signs(torch.randn(3, 9))
    with pytest.raises(ValueError, match="in_features=17 needs 3"):
        unpack_signs(packed, 17)
    with pytest.raises(ValueError, match="uint8"):
        unpack_signs(packed.to(torch.int32), 9)
    with pytest.raises(ValueError, match="2-D"):
        pack_signs(torch.randn(2, 3, 4))
