"""Every decomposition computes in float64 on its input's device (CUDA cases skip without a GPU)."""
import pytest
import torch

from factorch import decompositions as dec

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]

# name -> call on an (8, 6, 3, 3) float32 kernel; every tensor returned is checked
DECOMPOSITIONS = {
    "balanced_svd": lambda w: dec.balanced_svd(w.reshape(8, -1), 4),
    "singular_values": lambda w: dec.singular_values(w.reshape(48, 9)),
    "truncated_svd gram": lambda w: dec.truncated_svd(w.reshape(48, 9), 3, "gram"),
    "truncated_svd randomized": lambda w: dec.truncated_svd(w.reshape(48, 9), 3, "randomized"),
    "cp_als compressed": lambda w: dec.cp_als(  # an exact rank-2 kernel: ALS on its 2x2x3x3 core
        dec.cp_to_tensor([w[:, 0, 0, :2], w[0, :, 0, :2], w[0, 0, :, :2], w[1, 0, :, :2]]), 2),
    "hosvd2": lambda w: dec.hosvd2(w, (4, 3)),
    "tucker2": lambda w: dec.tucker2(w, (4, 3)),
    "cp_als": lambda w: dec.cp_als(w, 4),
    "tt_svd": lambda w: dec.tt_svd(w, 3),
    "tt_matrix_svd": lambda w: dec.tt_matrix_svd(w.reshape(8, 54), (2, 4), (6, 9), 3),
}


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _tensors(item)]


@pytest.mark.parametrize("name", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("device", DEVICES)
def test_decomposition_stays_on_the_input_device_in_float64(name, device):
    torch.manual_seed(0)
    w = torch.randn(8, 6, 3, 3, device=device)
    tensors = _tensors(DECOMPOSITIONS[name](w))
    assert tensors and all(t.device.type == device and t.dtype == torch.float64 for t in tensors)


@pytest.mark.parametrize("device", DEVICES)
def test_evbmf_takes_a_matrix_on_any_device(device):
    torch.manual_seed(0)
    signal = torch.randn(40, 3) @ torch.randn(3, 60)
    assert dec.evbmf((signal + 0.01 * torch.randn(40, 60)).to(device)) == 3
