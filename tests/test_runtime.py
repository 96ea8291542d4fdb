from pathlib import Path

import pytest
import torch

import aigc_lib
from aigc_lib import runtime


def test_budget_follows_env(monkeypatch):
    for name, expected in [("smoke", 1), ("standard", 2), ("full", 3)]:
        monkeypatch.setenv("AIGC_BUDGET", name)
        assert runtime.budget(smoke=1, standard=2, full=3) == expected


def test_budget_default_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("AIGC_BUDGET", raising=False)
    assert runtime.current_budget() == ("full" if torch.cuda.is_available() else "standard")


def test_bad_budget_names_the_variable(monkeypatch):
    monkeypatch.setenv("AIGC_BUDGET", "huge")
    with pytest.raises(ValueError, match=r"AIGC_BUDGET.*smoke, standard, full.*'huge'"):
        runtime.current_budget()


def test_device_override_and_errors(monkeypatch):
    monkeypatch.setenv("AIGC_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")
    monkeypatch.setenv("AIGC_DEVICE", "banana")
    with pytest.raises(ValueError, match="banana"):
        runtime.get_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            runtime.get_device("cuda")


def test_seed_everything_is_reproducible():
    runtime.seed_everything(7)
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    runtime.seed_everything(7)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)


def test_setup_prints_device_budget_seed_versions(monkeypatch, capsys):
    monkeypatch.setenv("AIGC_BUDGET", "smoke")
    monkeypatch.setenv("AIGC_DEVICE", "cpu")
    rt = aigc_lib.setup(seed=3)
    out = capsys.readouterr().out
    assert (rt.device.type, rt.budget, rt.seed) == ("cpu", "smoke", 3)
    for word in ["device: cpu", "budget: smoke", "seed: 3", "torch", "python"]:
        assert word in out


def test_checkpoints_under_nbgrader_go_to_a_temporary_folder(monkeypatch, tmp_path):
    from aigc_lib.runtime import checkpoint_path, current_budget

    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert checkpoint_path("checkpoints/x.pt") == Path("checkpoints/x.pt")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    moved = checkpoint_path("checkpoints/x.pt")
    assert moved.is_absolute() and "aigc-nbgrader-checkpoints" in str(moved) and moved.name == "x.pt"
    assert checkpoint_path(tmp_path / "y.pt") == tmp_path / "y.pt"  # an absolute path is the caller's choice
    monkeypatch.delenv("AIGC_BUDGET", raising=False)
    assert current_budget() == "smoke"  # nbgrader needs the code paths, not the quality


def test_channels_last_swaps_the_conv_weights_only_and_puts_the_originals_back():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    model.register_buffer("volume", torch.zeros(1, 2, 3, 4, 5))  # 5-D: Module.to(channels_last) would fail on it
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    before = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    alias = model[0].weight.detach()
    with runtime.channels_last(model):
        w = model[0].weight
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        assert model[1].weight.stride() == (4, 1, 4, 4)  # a 1x1 kernel gets NHWC strides too (the fast path)
        torch.testing.assert_close(model(x), want)
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == before  # the same tensors again
    assert alias.data_ptr() == model[0].weight.data_ptr()
    with pytest.raises(KeyboardInterrupt), runtime.channels_last(model):
        raise KeyboardInterrupt  # an interrupt inside the block restores the layout too
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == before
