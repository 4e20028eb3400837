from __future__ import annotations

import os

import pytest

os.environ.setdefault("LATENTWIRE_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_llama():
    from latentwire.tiny import tiny_llm

    return tiny_llm("llama")


@pytest.fixture(scope="session")
def tiny_qwen():
    from latentwire.tiny import tiny_llm

    return tiny_llm("qwen")


@pytest.fixture(params=["llama", "qwen"])
def tiny(request, tiny_llama, tiny_qwen):
    return tiny_llama if request.param == "llama" else tiny_qwen


@pytest.fixture(scope="session")
def dev3():
    from latentwire.data import load_split

    return load_split("dev", limit=3)
