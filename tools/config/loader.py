"""YAML configs with ``_base_`` inheritance and ``--set key.sub=value`` overrides.

A config file may name one or more base files (``_base_: ../base.yaml`` or a list, relative to
the file); bases are merged first, in order, then the file itself, dict by dict (lists and
scalars replace). ``--set`` overrides come last. The merged dict is validated against
:class:`backbones_tools.config.schema.TrainConfig`; an error names the key, the file that set it and the
valid keys at that level.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from backbones_tools.config.schema import SchemaChoiceError, TrainConfig, config_class
from backbones_tools.config.shipped import find_config
from pydantic import BaseModel, ValidationError

BASE_KEY = "_base_"
SET_SOURCE = "--set"
PathLike = str | os.PathLike[str]


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message names the key and the file."""


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        via = f" (named as _base_ in {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{via}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: dict[str, Any], src: Mapping[str, Any], origin: dict[str, str], source: str,
           prefix: str = "") -> None:
    """Deep-merge ``src`` into ``dst``, recording which source set each dotted key."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = _plain(value)
            for k in [k for k in origin if k.startswith(dotted + ".")]:
                del origin[k]
            origin[dotted] = source
            if isinstance(value, Mapping):
                _record(value, origin, source, dotted + ".")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _record(src: Mapping[str, Any], origin: dict[str, str], source: str, prefix: str) -> None:
    for key, value in src.items():
        origin[f"{prefix}{key}"] = source
        if isinstance(value, Mapping):
            _record(value, origin, source, f"{prefix}{key}.")


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Merged dict of ``path`` and its bases, and the file that set each dotted key."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}")
    data = _read_yaml(path, chain)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for base in bases:
        base_path = Path(base) if os.path.isabs(base) else path.parent / base
        base_data, base_origin = _load_tree(base_path, (*chain, path))
        _merge(merged, base_data, origin, str(base_path))
        origin.update(base_origin)
    _merge(merged, data, origin, str(path))
    return merged, origin


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> ``(["a", "b"], parsed value)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key component in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str],
                    origin: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict in place (and return it)."""
    origin = {} if origin is None else origin
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section"
                )
            node = child
        _merge(node, {parts[-1]: value}, origin, SET_SOURCE, ".".join(parts[:-1]) + "." if len(parts) > 1 else "")
    return data


def _section_at(loc: Sequence[Any], root: type[BaseModel] = TrainConfig) -> type[BaseModel] | None:
    """The schema class that holds the field at ``loc`` (None if it is not a section)."""
    model: Any = root
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _source_of(dotted: str, origin: Mapping[str, str], default: str) -> str:
    below = [src for key, src in origin.items() if key.startswith(dotted + ".")]
    if dotted not in origin and below:  # a whole section that is unknown: where its keys came from
        return below[-1]
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origin:
            return origin[key]
    return default


def format_validation_error(exc: ValidationError, origin: Mapping[str, str], default_source: str,
                            root: type[BaseModel] = TrainConfig, title: str = "invalid config") -> str:
    """One line per problem: the dotted key (list positions included), the file that set it, the
    reason, the valid keys (of the section in ``root``, the schema that was validated against)."""
    lines = []
    for err in exc.errors():
        fields = [str(p) for p in err["loc"] if not isinstance(p, int)] or ["<top level>"]
        dotted = ".".join(str(p) for p in err["loc"]) or "<top level>"
        source = _source_of(".".join(fields), origin, default_source)
        section = _section_at(fields, root)
        valid = f"; valid keys{' in ' + '.'.join(fields[:-1]) if len(fields) > 1 else ''}: " \
                f"{', '.join(section.model_fields)}" if section is not None else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {dotted!r} (set in {source}){valid}")
        elif err["type"] == "missing":
            lines.append(f"missing key {dotted!r} (config {default_source}){valid}")
        else:
            got = err.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"{dotted}: {err['msg'].removeprefix('Value error, ')}{got_text} (set in {source})")
    return f"{title}:\n  " + "\n  ".join(lines)


def validate_config(data: Mapping[str, Any], origin: Mapping[str, str] | None = None,
                    source: str = "<dict>") -> TrainConfig:
    """Validate a merged config dict; errors become a :class:`ConfigError` naming key and file."""
    try:
        schema = config_class(data)
    except SchemaChoiceError as exc:
        raise ConfigError(f"invalid config:\n  {exc} (set in {_source_of(exc.key, origin or {}, source)})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin or {}, source, schema)) from None


def load_config_dict(path: PathLike, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged (not yet validated) dict of ``path`` plus overrides, and each key's source.
    A relative ``path`` that does not exist names a shipped config (:func:`find_config`)."""
    data, origin = _load_tree(find_config(path))
    apply_overrides(data, overrides, origin)
    return data, origin


def load_config(path: PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """Load, merge (``_base_``), override (``key.sub=value``) and validate a config file."""
    data, origin = load_config_dict(path, overrides)
    return validate_config(data, origin, str(find_config(path)))


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (what is saved next to every checkpoint)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
