"""The paths: what fills a receiver's prompt slot. The one list every layer reads.

A path names what the sender puts in a receiver's slot and how the receiver reads it:

| path | the slot holds | who computes it | trained parts |
|---|---|---|---|
| `text` | `Question: …\\nContext: …` | the client | none |
| `token-budget` | the text's first M tokens | the client | none |
| `evidence` | the question + the selected evidence | the sender's selector | none |
| `relay` | the sharer's answer as text | the sender's sharer | none |
| `relay-tuned` | the sharer's answer as text | the sender's sharer | the receiver's text prompt |
| `latent` | the M soft tokens | the sender's sharer + head | all of them (the default) |
| `latent-closed` | the M soft tokens of the closed-form code | the sender's sharer | none |

`relay-tuned` and `latent-closed` are the baselines the trained latent is measured against: the same receiver
prompt trained on relay's text, and the code the training starts from. They are measured in-process (eval,
bench); an `Ask` may name the `WIRE_PATHS` only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PathSpec:
    """What a path means: every role reads these facts here instead of comparing the path's name."""

    name: str
    sender: bool  # the sender computes the slot (needs a checkpoint); else the client's text fills it
    latent: bool  # the slot is soft tokens (a latent frame); else text (a text frame)
    tuned: bool  # the receiver applies its checkpoint's trained parts
    wire: bool  # an Ask may name it
    reads: bool = False  # the sharer reads the question (every sender path but `evidence`, the selection itself)
    budget: bool = False  # the slot is the text cut to a token budget (the checkpoint's M unless the Ask sets one)
    trained: bool = False  # the gradient loop trains through it, and keeps its best step by its val F1
    calibrated: bool = False  # the recipe fits each receiver's score map on it (`latentwire calibrate`: any other)

    @property
    def whole_context(self) -> bool:
        """The slot is the client's whole context text (~1,500 tokens): the longest prompt, evaluated a few rows
        to a pass."""
        return not self.sender and not self.budget

    @property
    def passages(self) -> bool:
        """The slot is the context's paragraphs as text, all of them or the selected ones: a long prompt that no
        model wrote and no budget cut."""
        return not self.latent and not self.reads and not self.budget

    @property
    def engine_bound(self) -> bool:
        """A served path whose answers the sender's engine changes (the bench compares engines on these)."""
        return self.sender and self.wire


PATHS: dict[str, PathSpec] = {
    p.name: p
    for p in (
        PathSpec("text", sender=False, latent=False, tuned=False, wire=True),
        PathSpec("token-budget", sender=False, latent=False, tuned=False, wire=True, budget=True),
        PathSpec("evidence", sender=True, latent=False, tuned=False, wire=True),
        PathSpec("relay", sender=True, latent=False, tuned=False, wire=True, reads=True, calibrated=True),
        PathSpec("relay-tuned", sender=True, latent=False, tuned=True, wire=False, reads=True, trained=True),
        PathSpec("latent", sender=True, latent=True, tuned=True, wire=True, reads=True, trained=True, calibrated=True),
        PathSpec("latent-closed", sender=True, latent=True, tuned=False, wire=False, reads=True),
    )
}


def _latent_first(names: list[str]) -> tuple[str, ...]:
    """The latent leads the lists the trainer walks: its val F1 is the score a run keeps its best step by."""
    return tuple(sorted(names, key=lambda p: not PATHS[p].latent))


PATH_NAMES: tuple[str, ...] = tuple(PATHS)
WIRE_PATHS: tuple[str, ...] = tuple(p for p, s in PATHS.items() if s.wire)
SENDER_PATHS: tuple[str, ...] = tuple(p for p, s in PATHS.items() if s.sender)
TRAINED_PATHS: tuple[str, ...] = _latent_first([p for p, s in PATHS.items() if s.trained])
CALIBRATED_PATHS: tuple[str, ...] = _latent_first([p for p, s in PATHS.items() if s.calibrated])
# the more of the sender a path runs, the earlier: latent, relay, evidence
ENGINE_PATHS: tuple[str, ...] = tuple(
    sorted((p for p, s in PATHS.items() if s.engine_bound), key=lambda p: (not PATHS[p].latent, not PATHS[p].reads))
)


def path_spec(name: str) -> PathSpec:
    """The entry of `PATHS`, or a ValueError listing the paths there are."""
    try:
        return PATHS[name]
    except KeyError:
        raise ValueError(f"unknown path {name!r}; choose one of {', '.join(PATHS)}") from None
