"""The model zoo: parameter counts from Elhoushi et al. 2019's tables and a forward pass for every model."""
import pytest
import torch

import factorch as fc


@pytest.mark.parametrize("name,params", [
    ("vgg19", 20_035_018),     # Elhoushi et al. 2019, Table 1: 20 x 10^6
    ("resnet56", 853_018),     # Elhoushi et al. 2019, Table 3: 853 x 10^3
    ("resnet20", 269_722),     # He et al. 2016: 0.27M
    ("resnet110", 1_727_962),  # He et al. 2016: 1.7M
    ("densenet40", 1_059_298), # Elhoushi et al. 2019, Table 2: 1.06 x 10^6
])
def test_param_counts(name, params):
    assert sum(p.numel() for p in fc.models.create(name).parameters()) == params


@pytest.mark.parametrize("name,params", [
    # conv 1*6*25+6, conv 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    ("lenet5", 156 + 2_416 + 48_120 + 10_164 + 850),
    # 784*300+300, 300*100+100, 100*10+10 (LeNet-300-100)
    ("mlp", 235_500 + 30_100 + 1_010),
    # 3x3 convs without bias (1->32, 32->64, 64->64, 64->128, 128->128, 128->256, 256->256), two
    # batch-norm params per channel, linear 256*10+10
    ("vgg7", 9 * (32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256)
     + 2 * (32 + 64 + 64 + 128 + 128 + 256 + 256) + 2_570),
])
def test_gray_model_param_counts(name, params):
    assert sum(p.numel() for p in fc.models.create(name, in_channels=1).parameters()) == params


def test_densenet40_structure():
    model = fc.models.create("densenet40")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # first conv + 3 x 12 dense 3x3 convs + 2 transition 1x1 convs; 456 = 24 + 36 * 12 channels at the end
    assert len(convs) == 39 and sum(c.kernel_size == (3, 3) for c in convs) == 37
    assert model.fc.in_features == 456


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
