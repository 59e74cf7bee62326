"""The training loop's pieces: schedule, optimizer hand-off, the events, evaluate/train_epoch."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import factorch as fc
from factorch.training import (Decompose, Reconstruct, Schedule, TrainConfig, evaluate, make_optimizer,
                                rebuild_optimizer, train, train_epoch)
from factorch.distributed import Distributed
from factorch.selection import layer_filter
from factorch.training.events import decompose_event, reconstruct_event


def _stepped_lenet():
    """LeNet-5 (1 channel) after one SGD step, so every parameter has a momentum buffer."""
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)
    opt = make_optimizer(model, lr=0.1)
    model(torch.randn(8, 1, 16, 16)).square().mean().backward()
    opt.step()
    return model, opt


def test_schedule_is_the_papers():
    s = Schedule(lr=0.1, epochs=200)
    assert [s.lr_at(e) for e in (0, 99, 100, 149, 150, 199, 230)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001])


def test_rebuild_optimizer_holds_exactly_the_models_parameters():
    model, opt = _stepped_lenet()
    before = {id(p) for p in model.parameters()}
    fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], filter_fn=lambda m, n: n != "conv1")
    new = rebuild_optimizer(opt, model)
    params = [p for g in new.param_groups for p in g["params"]]
    assert [id(p) for p in params] == [id(p) for p in model.parameters()]  # exactly, in model order
    kept = [p for p in params if id(p) in before]
    fresh = [p for p in params if id(p) not in before]
    assert {id(p) for p in kept} == {id(model.conv1.weight), id(model.conv1.bias)}
    assert len(fresh) > 0 and all(p not in new.state for p in fresh)          # new factors: empty state
    assert all(new.state[p]["momentum_buffer"] is opt.state[p]["momentum_buffer"] for p in kept)
    assert new.param_groups[0]["momentum"] == 0.9 and new.param_groups[0]["weight_decay"] == 5e-4
    before_step = [p.detach().clone() for p in fresh]
    model(torch.randn(4, 1, 16, 16)).square().mean().backward()
    new.step()  # gradients reach the factors and the new optimizer updates them
    assert all(not torch.equal(a, p) for a, p in zip(before_step, fresh))


def test_run_hands_off_at_the_schedules_lr(tmp_path, monkeypatch):
    """Inside a real run: at every epoch the optimizer holds exactly the model's parameters, the new
    factors start without state, and the LR is the schedule's value for that epoch."""
    import factorch.training.run as run_module

    seen = []

    def spy(net, loader, optimizer, device, scaler, **kw):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        model_params = list(net.parameters())
        seen.append({"lr": optimizer.param_groups[0]["lr"],
                     "exact": [id(p) for p in params] == [id(p) for p in model_params],
                     "empty": sum(p not in optimizer.state for p in params),
                     "tucker": any(isinstance(m, fc.layers.TuckerConv2d) for m in net.modules())})
        return original(net, loader, optimizer, device, scaler, **kw)

    original = run_module.train_epoch
    monkeypatch.setattr(run_module, "train_epoch", spy)
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=4, subset=64, batch_size=32, lr=0.1, milestones=(0.5, 0.75),
                      events=(Decompose(2, methods=(fc.Tucker2(0.5), fc.SVD(0.5))), Reconstruct(3)))
    history = train(cfg, tmp_path / "run", log=lambda s: None)
    assert [s["lr"] for s in seen] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert all(s["exact"] for s in seen)
    assert [s["tucker"] for s in seen] == [False, False, True, False]
    # before the first step all 10 parameters lack state; after the decomposition exactly the new
    # ones do: Tucker conv2 (first, core, last + bias) and 3 SVD linears (2 factors + bias) = 13;
    # conv1's weight and bias keep theirs (through both events)
    assert [s["empty"] for s in seen] == [10, 0, 13, 8]  # reconstruction: all but conv1's 2 are new
    assert [r["event"]["kind"] if r["event"] else None for r in history] == [None, None, "decompose", "reconstruct"]
    assert history[2]["params"] < history[1]["params"] == history[3]["params"]
    # reconstruction is lossless: the accuracy right after it is the accuracy before it
    assert history[3]["event_test_acc"] == pytest.approx(history[2]["test_acc"], abs=1 / 64)


def test_reconstructed_model_has_the_original_architecture_and_outputs():
    model, opt = _stepped_lenet()
    reference = fc.models.create("lenet5", num_classes=10, in_channels=1)
    decompose_event(model, [fc.Tucker2(0.5), fc.SVD(0.5)], torch.zeros(1, 1, 16, 16), Distributed())
    opt = rebuild_optimizer(opt, model)
    model(torch.randn(8, 1, 16, 16)).square().mean().backward()
    opt.step()  # trained factors: no longer the orthonormal HOOI ones
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        y = model(x)
        event = reconstruct_event(model, Distributed())
        assert torch.allclose(model(x), y, atol=1e-5, rtol=1e-4)
    assert event.kind == "reconstruct" and len(event.changed) == 4  # conv2 + fc1..fc3
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_decompose_event_names_every_layer_left_dense():
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)  # random init: EVBMF gives rank 0
    event = decompose_event(model, [fc.Tucker2()], torch.zeros(1, 1, 16, 16), Distributed())
    assert event.changed == []
    assert event.skipped["conv1"] == "excluded by filter_fn"
    assert "rank 0" in event.skipped["conv2"] and "does not handle Linear" in event.skipped["fc1"]
    assert event.record()["skipped"] == event.skipped


def test_layer_filter_first_conv_and_regex():
    model = fc.models.create("resnet20")
    keep = layer_filter(False, [r"layer3\..*"], model)
    assert not keep(model.conv1, "conv1") and not keep(None, "layer3.0.conv1") and keep(None, "layer1.0.conv1")
    assert layer_filter(True, [], model)(model.conv1, "conv1")


def test_train_epoch_and_evaluate_contract():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)
    opt = make_optimizer(model, lr=0.05)
    first = train_epoch(model, loader, opt)
    assert set(first) >= {"loss", "acc", "seconds"} and first["samples"] == 64
    for _ in range(15):
        last = train_epoch(model, loader, opt)
    assert last["loss"] < first["loss"]
    acc = evaluate(model, loader)
    with torch.no_grad():
        model.eval()
        expected = float((model(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(expected) and 0.0 <= acc <= 1.0
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"),
    (dict(epochs=5, events=(Decompose(5),)), "decompose_at"),
    (dict(epochs=5, events=(Reconstruct(3),)), "needs decompose_at"),
    (dict(epochs=5, events=(Decompose(3), Reconstruct(2))), "reconstruct_at"),
    (dict(lr=-1.0), "learning rate"),
    (dict(events=(dict(at=1),)), "events must be a tuple of training events"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(exclude=("(",)), "regex"),
    (dict(methods=()), "methods"),
    (dict(methods=[fc.SVD(2)]), "methods"),
    (dict(calibration_batches=-1), "calibration_batches"),
    (dict(keep_if_faster="yes"), "keep_if_faster"),
])
def test_decompose_settings_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decompose(1, **kwargs)


def test_event_that_changes_nothing_leaves_the_run_identical(tmp_path):
    """Evaluating after an event must not move the RNG that orders and augments the data: a
    decomposition that leaves every layer dense gives exactly the original's run."""
    base = dict(model="lenet5", dataset="digits", epochs=3, subset=96, batch_size=32)
    plain = train(TrainConfig(**base), tmp_path / "a", log=lambda s: None)
    noop = train(TrainConfig(**base, events=(Decompose(1, exclude=(".*",)),)), tmp_path / "b", log=lambda s: None)
    assert noop[1]["event"]["changed"] == 0
    assert [(r["train_loss"], r["test_acc"]) for r in noop] == [(r["train_loss"], r["test_acc"]) for r in plain]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_amp_channels_last_and_events(tmp_path):
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=3, subset=128, batch_size=32,
                      amp=True, channels_last=True, device="cuda",
                      events=(Decompose(1, methods=(fc.Tucker2(0.5), fc.SVD(0.5))), Reconstruct(2)))
    history = train(cfg, tmp_path / "run", log=lambda s: None)
    assert [r["event"]["kind"] if r["event"] else None for r in history] == [None, "decompose", "reconstruct"]
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["train_loss"] == r["train_loss"] for r in history)  # no NaN
    # reconstruction is lossless up to the float16 of AMP
    assert abs(history[2]["event_test_acc"] - history[1]["test_acc"]) <= 2 / 128
