"""`latentwire smoke`: random latent -> adapter -> inputs_embeds -> a few greedy tokens, for every family.

Validates the soft-prefix decoding path with no trained checkpoint (tiny random models by default, the embedded
pretrained ones with `--real`). Any failing step raises, so the command exits non-zero. A whole-system check,
it sits with the command-line entry points (pyproject's import contract), the only core-side modules that may
import a role (here the receivers' adapter).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .device import resolve_device, resolve_dtype
from .lm import assemble, generate, template_of
from .models import LLM, load_llm
from .receivers.adapter import Adapter, AdapterConfig
from .tiny import FAMILIES

Echo = Callable[[str], None]


def smoke(
    real: bool = False,
    m: int = 8,
    d_z: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 6,
    echo: Echo = print,
) -> dict[str, str]:
    """Run the path for every family of `tiny.FAMILIES`; returns each family's generated text."""
    dev, dt = resolve_device(device), resolve_dtype(dtype, resolve_device(device))
    echo(f"device={dev} dtype={dt} M={m} d_z={d_z} real={real}")
    torch.manual_seed(0)
    latent = torch.randn(m, d_z)
    echo(f"latent            {tuple(latent.shape)}")
    out = {}
    for family, fam in FAMILIES.items():
        t0 = time.perf_counter()
        spec = fam.embedded if real else f"tiny-{family}"
        llm: LLM = load_llm(spec, device=str(dev), dtype=str(dt).removeprefix("torch."))
        echo(
            f"[{family}] {type(llm.model).__name__} hidden={llm.hidden_size} embed_rms={llm.embed_rms:.4f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        adapter = Adapter(AdapterConfig(d_z=d_z, hidden_size=llm.hidden_size, target_rms=llm.embed_rms)).to(dev)
        with torch.no_grad():
            soft = adapter(latent.to(dev)).to(dt)
        rms = float(soft.float().pow(2).mean().sqrt())
        echo(f"[{family}] adapter -> soft tokens {tuple(soft.shape)} rms={rms:.4f}")
        tpl = template_of(llm)
        batch = assemble(llm, [soft])
        echo(
            f"[{family}] inputs_embeds {tuple(batch.inputs_embeds.shape)} = prefix {len(tpl.prefix_ids)} + "
            f"slot {m} + suffix {len(tpl.suffix_ids)}"
        )
        gen = generate(llm, [soft], max_new_tokens=max_new_tokens)[0]
        if not gen.token_ids and not gen.text and gen.score == 0.0:
            raise RuntimeError(f"[{family}] decoding produced nothing")
        echo(
            f"[{family}] generated {len(gen.token_ids)} tokens {gen.token_ids}: {gen.text!r} "
            f"(mean logprob {gen.score:.3f})"
        )
        out[family] = gen.text
    echo("smoke OK")
    return out
