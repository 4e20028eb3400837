import pytest
import torch

from latentwire import device as dv


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_order(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dv, "_mps_available", lambda: mps)
    assert dv.resolve_device("auto").type == expected


def test_dtype_policy():
    assert dv.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert dv.resolve_dtype("auto", "mps") == torch.float32
    assert dv.resolve_dtype("auto", "cpu") == torch.float32
    assert dv.resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        dv.resolve_dtype("int3")


def test_explicit_unavailable_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        dv.resolve_device("cuda")


def test_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("LATENTWIRE_THREADS", "1")
    assert dv.set_threads() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(before)
