"""config.json of a checkpoint folder, typed and validated: `CheckpointConfig` / `ModelEntry`.

Read and validated in one place, so a reader gets attributes instead of keys and a broken file fails at load,
before any model loads, with one line `<file>: <field>: <why>`, not later with a KeyError or a traceback. Adapter
kinds belong to the receivers (a role this core may not import), so a caller that has their registry passes it
(`adapters=`) and each adapter's fields are checked against its kind's config dataclass too. Keys they do not know
are kept as they are, so reading and writing a config loses nothing. The folder itself is `checkpoint.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .protocol import DEFAULT_LIMITS, PATH_NAMES

CONFIG = "config.json"
FORMAT_VERSION = 2
# deeper than any config we write: a hostile file nested 100k deep would otherwise exhaust the parser's recursion
MAX_DEPTH = 32


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, or does not match the models or config it is loaded with."""


def write_config(path: str | Path, config: dict | CheckpointConfig) -> None:
    """config.json as every checkpoint has it: this version's format, keys sorted, 2-space indent."""
    config = config.to_dict() if isinstance(config, CheckpointConfig) else config
    text = json.dumps({**config, "format": FORMAT_VERSION}, indent=2, sort_keys=True) + "\n"
    (Path(path) / CONFIG).write_text(text)


def read_json(path: str | Path) -> Any:
    """config.json parsed but not yet validated: a missing, unreadable, non-UTF-8, malformed or too deeply nested
    file is one CheckpointError naming it (never a UnicodeDecodeError or RecursionError traceback)."""
    file = Path(path) / CONFIG
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a LatentWire checkpoint: {CONFIG} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        cfg = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{file}: malformed JSON (nested over {MAX_DEPTH} deep)") from None
    except ValueError as e:  # JSONDecodeError, and ints of more digits than Python converts
        raise CheckpointError(f"{file}: malformed JSON ({e})") from None
    _check_depth(cfg, file)
    return cfg


def _check_depth(value: Any, file: Path) -> None:
    """Refuse nesting deeper than MAX_DEPTH (iteratively: the check itself must not recurse)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                raise CheckpointError(f"{file}: malformed JSON (nested over {MAX_DEPTH} deep)")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def read_config(path: str | Path, adapters: Mapping[str, type] | None = None) -> dict:
    """config.json as a dict, validated like `load_config` (for readers that index it by key: part fingerprints
    hash the entries as written, `extend` copies them)."""
    cfg = read_json(path)
    CheckpointConfig.from_dict(cfg, path, adapters=adapters)
    return cfg


def load_config(path: str | Path, adapters: Mapping[str, type] | None = None) -> CheckpointConfig:
    """config.json, typed and validated; with `adapters` (kind -> config dataclass, the receivers' registry) each
    adapter's config is checked against its kind's fields too."""
    return CheckpointConfig.from_dict(read_json(path), path, adapters=adapters)


# ---- validation: every error is one line `<file>: <field>: <why>`, raised before any model loads ----


@dataclass(frozen=True)
class _At:
    """Where a value sits in config.json: the file and the dotted field that an error about it names."""

    file: str
    field: str = ""

    def __truediv__(self, key: object) -> _At:
        return _At(self.file, f"{self.field}.{key}" if self.field else str(key))

    def error(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: {self.field}: {why}" if self.field else f"{self.file}: {why}")


def _kind_names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true/false is no int or float and an int is a float."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def _typed(value: Any, kinds: type | tuple[type, ...], at: _At) -> Any:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not _is(value, kinds):
        raise at.error(f"must be {_kind_names(kinds)}, not {type(value).__name__} ({value!r:.40})")
    return value


def _get(d: dict, key: str, kind: type | tuple[type, ...], at: _At) -> Any:
    """d[key] checked against `kind`; a missing or wrongly typed field is one CheckpointError line naming it."""
    if key not in d:
        raise (at / key).error("missing")
    return _typed(d[key], kind, at / key)


def _count(d: dict, key: str, at: _At, most: int | None = None) -> int:
    """d[key] as a positive int (a size: of a latent, a model's hidden states), at most `most`."""
    n = _get(d, key, int, at)
    if n < 1:
        raise (at / key).error(f"must be a positive int, not {n}")
    if most is not None and n > most:
        raise (at / key).error(f"{n} is over the protocol's limit of {most}")
    return n


def _finite(value: Any, at: _At) -> None:
    """Every number in `value` finite: json reads NaN and Infinity, which would poison a score or a softmax."""
    stack = [(value, at)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise where.error(f"{v} must be finite")
        if isinstance(v, dict):
            stack.extend((c, where / k) for k, c in v.items())
        elif isinstance(v, list):
            stack.extend((c, _At(where.file, f"{where.field}[{i}]")) for i, c in enumerate(v))


def _nonempty_str(d: dict, key: str, at: _At) -> str:
    value = _get(d, key, str, at)
    if not value:
        raise (at / key).error("must not be empty")
    return value


def _check_encoder(enc: dict, at: _At) -> None:
    """What every reader of the encoder needs, whatever its backbone: M and d_z (the wire's shape), sizes that a
    frame can carry; the backbone's own fields are its builder's (sender/encoder.py)."""
    if "backbone" in enc:
        _typed(enc["backbone"], str, at / "backbone")
    _count(enc, "m", at, DEFAULT_LIMITS.max_m)
    _count(enc, "d_z", at, DEFAULT_LIMITS.max_dz)
    if enc.get("tokens_per_row") is not None:
        _count(enc, "tokens_per_row", at)
    _finite(enc, at)


PLATT = ("a", "b", "n", "positives")  # a score calibration (receivers/calibration.py): slope, offset, its sample


def _check_calibration(cal: Any, at: _At) -> dict[str, dict[str, Any]]:
    """Score calibrations by path: each a Platt map {a, b} (finite numbers) fitted on `n` answers, `positives`
    of them right."""
    _typed(cal, dict, at)
    for path, platt in cal.items():
        where = at / path
        if path not in PATH_NAMES:
            raise where.error(f"unknown path (paths: {', '.join(PATH_NAMES)})")
        _typed(platt, dict, where)
        for key in platt:
            if key not in PLATT:
                raise (where / key).error(f"not a field of a calibration (fields: {', '.join(PLATT)})")
        _get(platt, "a", float, where)
        _get(platt, "b", float, where)
        n, positives = _get(platt, "n", int, where), _get(platt, "positives", int, where)
        if not 0 <= positives <= n:
            raise where.error(f"positives {positives} must be within 0..n ({n})")
        _finite(platt, where)
    return cal


def _option_kinds(annotation: Any) -> tuple[type, ...] | None:
    """The JSON types a config dataclass field may hold (int, float, str, bool, optionally None); None when the
    annotation is anything else (left to the dataclass itself)."""
    scalars = (int, float, str, bool)
    if annotation in scalars:
        return (annotation,)
    args = typing.get_args(annotation)
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    if is_union and all(a in scalars or a is type(None) for a in args):
        return tuple(args)
    return None


def _check_adapter(adapter: dict, adapters: Mapping[str, type] | None, at: _At) -> None:
    """`kind` names a registered adapter (when the registry is given: config.json does not know the kinds) and
    every field fits its kind's config dataclass; the dataclass is then built, so its own checks run too."""
    kind = _nonempty_str(adapter, "kind", at)
    _finite(adapter, at)
    if adapters is None:
        return
    if kind not in adapters:
        raise (at / "kind").error(f"unknown adapter kind {kind!r} (known: {', '.join(adapters)})")
    schema = adapters[kind]
    try:
        hints = typing.get_type_hints(schema)
    except (NameError, TypeError):  # an annotation only a type checker resolves: the dataclass alone checks
        hints = {}
    known = [f.name for f in dataclasses.fields(schema)]
    for key, value in adapter.items():
        if key not in known:
            raise (at / key).error(f"not a field of a {kind!r} adapter (fields: {', '.join(known)})")
        kinds = _option_kinds(hints.get(key))
        if kinds is not None:
            _typed(value, kinds, at / key)
    try:
        schema(**adapter)
    except (TypeError, ValueError) as e:  # a missing required field, or the config's own refusal
        raise at.error(" ".join(str(e).split())) from None


@dataclass
class ModelEntry:
    """One receiver's entry under `models`: the model it was trained against, its adapter's config, and how its
    scores read as P(correct) on each path."""

    spec: str
    fingerprint: str  # of the model's weights (`latentwire.models`); a different model is refused at load
    hidden_size: int
    adapter: dict[str, Any]  # the adapter's config; its `kind` picks the family (receivers/adapter.py)
    # path -> its Platt map {a, b, n, positives} fitted on `val` (receivers/calibration.py); a path without one
    # is compared on raw scores
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    FIELDS: ClassVar[tuple[str, ...]] = ("spec", "fingerprint", "hidden_size", "adapter", "calibration")

    @classmethod
    def from_dict(cls, d: Any, where: str | _At, adapters: Mapping[str, type] | None = None) -> ModelEntry:
        """Validate and type one entry; `where` is the entry's place (`_At`) or a name for errors to start with."""
        at = where if isinstance(where, _At) else _At(where)
        _typed(d, dict, at)
        adapter = _get(d, "adapter", dict, at)
        _check_adapter(adapter, adapters, at / "adapter")
        return cls(
            spec=_nonempty_str(d, "spec", at),
            fingerprint=_nonempty_str(d, "fingerprint", at),
            hidden_size=_count(d, "hidden_size", at),
            adapter=adapter,
            calibration=_check_calibration(_get(d, "calibration", dict, at), at / "calibration"),
            extra={k: v for k, v in d.items() if k not in cls.FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"spec": self.spec, "fingerprint": self.fingerprint, "hidden_size": self.hidden_size}
        out.update(adapter=self.adapter, calibration=self.calibration)
        return {**out, **self.extra}


@dataclass
class CheckpointConfig:
    """config.json: the sender's encoder config, one `ModelEntry` per receiver, and how the checkpoint was made."""

    encoder: dict[str, Any]  # the encoder's config: `backbone` picks the kind (sender/encoder.py; llm: SharerConfig)
    models: dict[str, ModelEntry]
    format: int = FORMAT_VERSION
    train: dict[str, Any] | None = None  # the recipe that trained it
    summary: dict[str, Any] | None = None  # what training measured (steps, wall time, validation scores)
    parent: str | None = None  # an extended checkpoint: its parent's fingerprint (trainer/extend.py)
    extensions: list[dict[str, Any]] | None = None  # one record per receiver added after training
    adapter_fingerprints: dict[str, str] | None = None  # `part_fingerprints` as written
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    OPTIONAL: ClassVar[tuple[str, ...]] = ("train", "summary", "parent", "extensions", "adapter_fingerprints")

    @classmethod
    def from_dict(
        cls, d: Any, path: str | Path | None = None, adapters: Mapping[str, type] | None = None
    ) -> CheckpointConfig:
        """Validate and type a parsed config.json; `path` (the checkpoint folder) is named in every error, with the
        field at fault. With `adapters` (kind -> config dataclass) each adapter is checked against its kind."""
        at = _At(str(Path(path) / CONFIG) if path is not None else CONFIG)
        if not isinstance(d, dict):
            raise at.error(f"not a LatentWire checkpoint config (a JSON object, not {type(d).__name__})")
        if _get(d, "format", int, at) != FORMAT_VERSION:
            how = ": rewrite it with the format-1 migration in docs/EXPERIMENTS.md (E19)" if d["format"] == 1 else ""
            raise (at / "format").error(f"{d['format']} is not a format this version reads ({FORMAT_VERSION}){how}")
        encoder = _get(d, "encoder", dict, at)
        _check_encoder(encoder, at / "encoder")
        models = _get(d, "models", dict, at)
        if not models:
            raise (at / "models").error("empty (a checkpoint serves at least one receiver)")
        kinds = {"train": dict, "summary": dict, "parent": str, "extensions": list, "adapter_fingerprints": dict}
        return cls(
            encoder=encoder,
            models={name: ModelEntry.from_dict(e, at / "models" / name, adapters) for name, e in models.items()},
            format=d["format"],
            **{k: _get(d, k, kinds[k], at) for k in cls.OPTIONAL if d.get(k) is not None},
            extra={k: v for k, v in d.items() if k not in ("encoder", "models", "format", *cls.OPTIONAL) or v is None},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written: `from_dict(d).to_dict() == d` for every valid `d`."""
        out: dict[str, Any] = {"format": self.format, "encoder": self.encoder}
        out["models"] = {name: e.to_dict() for name, e in self.models.items()}
        out.update({k: getattr(self, k) for k in self.OPTIONAL if getattr(self, k) is not None})
        return {**out, **self.extra}
