"""The model zoo: parameter counts from the seed's tables and a forward pass for every model."""
import pytest
import torch

import factorch as fc


@pytest.mark.parametrize("name,params", [
    ("vgg19", 20_035_018),     # seed 000 Table 1: 20 x 10^6
    ("resnet56", 853_018),     # seed 000 Table 3: 853 x 10^3
    ("resnet20", 269_722),     # He et al. 2016: 0.27M
    ("resnet110", 1_727_962),  # He et al. 2016: 1.7M
])
def test_param_counts(name, params):
    assert sum(p.numel() for p in fc.models.create(name).parameters()) == params


@pytest.mark.parametrize("name", fc.models.list_models())
def test_every_model_runs(name):
    model = fc.models.create(name, num_classes=7, in_channels=1).eval()
    shape = fc.models.input_shape(name, in_channels=1)
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, 7)
    assert model.factorch_arch == {"name": name, "num_classes": 7, "in_channels": 1}


def test_unknown_model_and_bad_args():
    with pytest.raises(ValueError, match="unknown model 'nope'.*vgg19"):
        fc.models.create("nope")
    with pytest.raises(ValueError, match="num_classes"):
        fc.models.create("resnet20", num_classes=0)
