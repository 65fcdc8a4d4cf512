"""Load a structured config from defaults, a chain of YAML files and dotted command-line overrides.

Order of precedence (later wins): the schema's defaults → the ``base:`` chain of the YAML file (a YAML file may
name one or more base files, resolved relative to itself, then relative to the repository's ``configs/``) → the
file itself → ``key.sub=value`` overrides. Every key is checked against the schema before merging, so a typo is
an error that lists the valid keys with a did-you-mean, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from survival3d.errors import ConfigError
from survival3d.io import atomic_write
from survival3d.registry import did_you_mean

__all__ = ["load_config", "save_config", "parse_overrides", "config_to_yaml", "CONFIG_ROOT"]

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
BASE_KEY = "base"


def _resolve_path(name: str | os.PathLike, relative_to: Path | None) -> Path:
    candidates = []
    p = Path(name)
    if p.is_absolute():
        candidates.append(p)
    else:
        if relative_to is not None:
            candidates.append(relative_to / p)
        candidates += [Path.cwd() / p, CONFIG_ROOT / p]
    for c in candidates:
        for cand in (c, c.with_suffix(".yaml")) if c.suffix == "" else (c,):
            if cand.is_file():
                return cand.resolve()
    raise ConfigError(f"config file '{name}' not found (looked in: {', '.join(str(c) for c in candidates)}).")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at top level, got {type(data).__name__}.")
    return data


def _read_chain(path: str | os.PathLike, relative_to: Path | None = None, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """Return ``[(source, mapping), ...]`` from the furthest base to ``path`` itself."""
    resolved = _resolve_path(path, relative_to)
    if resolved in seen:
        chain = " -> ".join(str(s) for s in (*seen, resolved))
        raise ConfigError(f"config inheritance cycle: {chain}.")
    data = _read_yaml(resolved)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{resolved}: '{BASE_KEY}' must be a file name or a list of file names, got {bases!r}.")
    layers: list[tuple[str, dict]] = []
    for b in bases:
        layers += _read_chain(b, resolved.parent, (*seen, resolved))
    layers.append((str(resolved), data))
    return layers


def _check_keys(data: Mapping[str, Any], node: DictConfig, source: str, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for any key in ``data`` that ``node`` (a structured config) does not define."""
    node_type = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(node_type):
        return  # a free-form mapping (e.g. Dict[str, Any]) accepts any key
    valid = [f.name for f in dataclasses.fields(node_type)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in valid:
            where = f"under '{prefix[:-1]}'" if prefix else "at top level"
            raise ConfigError(
                f"{source}: unknown config key '{full}'.{did_you_mean(str(key), valid, prefix=prefix)} "
                f"Valid keys {where}: {', '.join(valid)}."
            )
        child = node._get_node(key)
        if isinstance(value, Mapping) and isinstance(child, DictConfig) and not child._is_none():
            _check_keys(value, child, source, f"{full}.")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["model.depth=4", "loss.alpha_cens=1.0"]`` into a nested mapping, values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value (e.g. model.depth=4).")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key.")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        d = nested
        parts = key.split(".")
        for part in parts[:-1]:
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'.")
        d[parts[-1]] = value
    return nested


def _merge(cfg: DictConfig, layer: Mapping[str, Any], source: str) -> DictConfig:
    _check_keys(layer, cfg, source)
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid value for '{key}': {msg}") from None


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    schema: type,
    defaults: Mapping[str, Any] | None = None,
) -> DictConfig:
    """Build a validated config.

    Args:
        path: a YAML file (absolute, relative to the working directory, or a name under ``configs/``); ``None``
            uses the schema's defaults (plus ``defaults``).
        overrides: dotted ``key=value`` strings, applied last.
        schema: the dataclass that defines every valid key, its type and default.
        defaults: an optional mapping applied on top of the schema before the file (an embedded default job).

    Returns:
        An OmegaConf ``DictConfig`` in struct mode (attribute access; setting an unknown key raises).

    Raises:
        ConfigError: unknown keys (with did-you-mean), values of the wrong type, missing files, bad YAML.
    """
    cfg = OmegaConf.structured(schema)
    if defaults:
        cfg = _merge(cfg, defaults, "built-in defaults")
    if path is not None:
        for source, layer in _read_chain(path):
            cfg = _merge(cfg, layer, source)
    cfg = _merge(cfg, parse_overrides(overrides), "command-line override")
    OmegaConf.set_struct(cfg, True)
    return cfg


def config_to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temporary file + rename)."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write(config_to_yaml(cfg))
    return path
