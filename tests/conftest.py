from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("LATENTWIRE_THREADS", "2")


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_per_module():
    """Each test module starts at the default thread count, whatever the one before it set (some fixtures pin
    torch to one thread): float results, and so the overfit checks, then do not depend on which tests ran first."""
    if "torch" in sys.modules:
        from latentwire.device import set_threads

        set_threads()
    yield


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


@pytest.fixture(scope="session")
def tiny_trained(tiny_llama, tiny_qwen, tmp_path_factory):
    """(checkpoint, llms): the shipped recipe at toy size, trained a few steps on the tiny models; copy it before
    changing it."""
    from latentwire.trainer.tiny import tiny_checkpoint

    llms = {"tiny-llama": tiny_llama, "tiny-qwen": tiny_qwen}
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "run", llms=llms, train_limit=60), llms
