"""The one device rule: auto, cpu, cuda, cuda:N (when present) and mps (when present); every other name refused."""

import pytest
import torch

from VentricleSynthLib.devices import resolve_device
from VentricleSynthLib.errors import RequestError


@pytest.mark.parametrize("name", ["xpu", "meta", "hip", "cuda:99", "cuda:x", "gpu", "", "cpu:0"])
def test_names_the_machine_lacks_or_cannot_run_on_are_refused(name):
    with pytest.raises(RequestError, match="device"):
        resolve_device(name)


def test_cpu_and_auto_are_accepted():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    assert resolve_device("auto") == resolve_device(None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")
def test_present_cuda_devices_are_accepted():
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device(f"cuda:{torch.cuda.device_count() - 1}").type == "cuda"
