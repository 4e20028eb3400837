"""The model-family registry (tiny.FAMILIES) and the one-way imports llm <- tiny <- models."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from latentwire import tiny
from latentwire.codebook import string_code
from latentwire.lm import generate
from latentwire.models import TINY, load_llm
from latentwire.receivers.adapter import CodebookAdapter, CodebookAdapterConfig


@pytest.mark.parametrize("first", ["latentwire.tiny", "latentwire.models", "latentwire.llm"])
def test_each_module_imports_first_in_a_fresh_interpreter(first: str) -> None:
    code = f"import {first}, latentwire.models, latentwire.tiny; print(latentwire.models.TINY)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tiny-llama" in out.stdout


def test_tiny_specs_come_from_the_registry() -> None:
    assert tuple(f"tiny-{f}" for f in tiny.FAMILIES) == TINY
    with pytest.raises(ValueError, match="unknown model family 'nope'; choose one of llama, qwen"):
        tiny.tiny_llm("nope")


def test_a_new_family_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = dataclasses.replace(tiny.FAMILIES["llama"], embedded="llama")
    monkeypatch.setitem(tiny.FAMILIES, "llama-b", extra)
    llm = load_llm("tiny-llama-b")
    assert llm.spec == "tiny-llama-b" and type(llm.model).__name__ == "LlamaForCausalLM"
    # it serves as a receiver at once: the codebook adapter reads its vocabulary, the slot decodes
    ad = CodebookAdapter(CodebookAdapterConfig(d_z=32, hidden_size=llm.hidden_size, prompt_len=2), llm)
    z = torch.from_numpy(string_code("A", 32))[None]
    with torch.no_grad():
        slot = ad(z)
    assert slot.shape == (3, llm.hidden_size)  # the prompt and the one step
    assert generate(llm, [slot], max_new_tokens=2)[0].score < 0
