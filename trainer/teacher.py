"""Distillation targets: each frozen model's own top-k answer log-probs when it reads the text prompt.

Computed once per (model, prompt, answer) and kept on disk, so an interrupted warm-up resumes and later runs
reuse it (on gold prompts ~1 s per example for SmolLM2, ~3 s for Qwen-0.5B on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from latentwire.lm import teacher_topk, text_slots
from latentwire.models import LLM, cache_root
from latentwire.prompts import PROMPT_VERSION


class TeacherCache:
    def __init__(self, llm: LLM, k: int = 16, directory: Path | None = None):
        self.llm, self.k = llm, k
        self.dir = (directory or cache_root() / "teacher") / llm.fingerprint[:16]
        self.dir.mkdir(parents=True, exist_ok=True)

    def _file(self, text: str, answer: Sequence[int]) -> Path:
        key = json.dumps([PROMPT_VERSION, self.k, text, list(answer)])
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.dir / h[:2] / f"{h}.safetensors"

    def get(self, text: str, answer: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._file(text, answer)
        if not f.is_file():
            idx, logp = teacher_topk(self.llm, text_slots(self.llm, [text])[0], answer, self.k)
            f.parent.mkdir(exist_ok=True)
            save_file({"idx": idx.contiguous(), "logp": logp.contiguous()}, str(f))
            return idx, logp
        t = load_file(str(f))
        return t["idx"], t["logp"]

    def warm(self, texts: Sequence[str], answers: Sequence[Sequence[int]], progress: bool = True) -> None:
        todo = [(t, a) for t, a in zip(texts, answers, strict=True) if not self._file(t, a).is_file()]
        for t, a in tqdm(todo, disable=not progress or not todo, desc=f"teacher {self.llm.name}", unit="ex"):
            self.get(t, a)

    def batch(self, texts: Sequence[str], answers: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, ...]:
        """(B, width, k) ids and log-probs right-aligned like `assemble`'s labels (zeros where no target)."""
        idx = torch.zeros(len(texts), width, self.k, dtype=torch.long)
        logp = torch.zeros(len(texts), width, self.k)
        for i, (t, a) in enumerate(zip(texts, answers, strict=True)):
            ti, tl = self.get(t, a)
            idx[i, width - len(a) :], logp[i, width - len(a) :] = ti, tl
        return idx.to(self.llm.device), logp.to(self.llm.device)
