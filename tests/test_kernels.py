"""core.backends.kernels: CPU kernels by one call at setup, chosen by a probe measured once per
machine (cached), with `off` and RLHF_ONEDNN as overrides; loaders apply nothing."""
import json

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from core.backends import gelu, kernels, onednn
from core.models.loading import load_policy


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("RLHF_ONEDNN", raising=False)
    kernels._choose_cpu.cache_clear()
    yield tmp_path / "cpu_kernels.json"
    kernels._choose_cpu.cache_clear()


def layer_kinds(model):
    return {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def test_loaders_apply_no_kernel():
    model = load_policy(device=torch.device("cpu"), trainable=False)
    assert layer_kinds(model) == {torch.nn.Linear, Conv1D}
    assert not any(isinstance(m, gelu.TanhGELU) for m in model.modules())


def test_the_probe_runs_once_per_machine_and_is_cached(cache, monkeypatch):
    monkeypatch.setattr(kernels, "probe_onednn", lambda: 2.0)
    monkeypatch.setattr(kernels, "probe_gelu", lambda: 0.5)
    assert kernels.choose("auto", "cpu") == (("onednn",) if onednn.available() else ()) + ("heap",)
    stored = json.loads(cache.read_text())
    assert stored == {kernels.machine_key(): {"onednn": 2.0, "gelu": 0.5}}
    assert "threads" in kernels.machine_key() and kernels.cpu_model() in kernels.machine_key()

    def no_probe():
        raise AssertionError("probed again")
    monkeypatch.setattr(kernels, "probe_onednn", no_probe)  # a new process reads the cache
    kernels._choose_cpu.cache_clear()
    assert "heap" in kernels.choose("auto", "cpu")


def test_a_slower_kernel_is_not_used_and_off_means_off(cache, monkeypatch):
    monkeypatch.setattr(kernels, "probe_onednn", lambda: 0.7)  # as on an Intel Xeon with AMX
    monkeypatch.setattr(kernels, "probe_gelu", lambda: 1.2)
    assert kernels.choose("auto", "cpu") == ("gelu", "heap")
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    assert kernels.optimize(model, "cpu", "auto") == ("gelu", "heap")
    assert type(model[0]) is torch.nn.Linear
    assert kernels.choose("off", "cpu") == () and kernels.choose("auto", "cuda") == ()
    with pytest.raises(ValueError, match="cpu_kernels must be one of auto, off"):
        kernels.choose("fast", "cpu")


@pytest.mark.skipif(not onednn.available(), reason="oneDNN not available in this torch build")
def test_rlhf_onednn_overrides_the_probe_either_way(cache, monkeypatch):
    monkeypatch.setattr(kernels, "probe_onednn", lambda: 0.7)
    monkeypatch.setattr(kernels, "probe_gelu", lambda: 1.0)
    monkeypatch.setenv("RLHF_ONEDNN", "1")
    model = load_policy(device=torch.device("cpu"), trainable=False)
    assert kernels.optimize(model, "cpu") == ("onednn", "heap")
    assert layer_kinds(model) == {onednn.Linear, onednn.GPT2Conv1D}
    kernels._choose_cpu.cache_clear()
    monkeypatch.setattr(kernels, "probe_onednn", lambda: 3.0)
    monkeypatch.setenv("RLHF_ONEDNN", "0")
    assert kernels.choose("auto", "cpu") == ("heap",)


def test_the_probes_measure_real_speed_ups():
    # whatever this CPU says: positive, finite ratios of two timings of the same work
    for probe in (kernels.probe_onednn, kernels.probe_gelu):
        r = probe()
        assert r == 0.0 or 0.05 < r < 20, r
