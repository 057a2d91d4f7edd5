"""Flat dataclass configs read from YAML and validated with clear messages (the trainers' one config each).

A subclass is a ``@dataclass`` with typed fields and a ``validate()`` that raises :class:`ConfigError`;
:meth:`YamlConfig.from_yaml` / :meth:`YamlConfig.from_dict` reject unknown keys, check each value against its
field's type (ints are accepted for floats, YAML 1.1's ``"3e-4"`` strings too), then call ``validate()``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A malformed config (names the key and what is wrong)."""


def need(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok`` (the checks of each ``validate()``)."""
    if not ok:
        raise ConfigError(msg)


class YamlConfig:
    def validate(self) -> None:  # overridden by each config
        pass

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path):
        path, data = _read_yaml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    @classmethod
    def from_cli(cls, path: str | Path | None, overrides: list[str]):
        """The config of a command line: the YAML file ``path`` (or the defaults when ``None``) with
        ``--set KEY=VALUE`` overrides (values parsed as YAML), validated once with all of them applied.
        The file is also checked alone first, so its own errors name it. The overrides apply to the file's
        values as written, not to the validated ones, so a default that ``validate()`` derives from another key
        (Ctrl-U's ``grad_scale`` from ``uncertainty``) follows an override of that key."""
        import yaml

        data = {}
        if path:
            cls.from_yaml(path)
            data = dict(_read_yaml(path)[1])
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            k, v = item.split("=", 1)
            data[k.strip()] = yaml.safe_load(v)
        return cls.from_dict(data)


def _read_yaml(path: str | Path) -> tuple[Path, dict]:
    """The config file's path (a shipped config's name resolved) and its mapping, as written."""
    import yaml

    from .assets import resolve_config, shipped_configs

    path = Path(resolve_config(path))
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (shipped configs, usable by name: "
                          f"{', '.join(shipped_configs())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return path, data or {}


def _coerce(key: str, value, hint):
    """Check a YAML value against the field's type (ints are accepted for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if args[0] is float and isinstance(value, list):  # ints are accepted for floats, as for scalars
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not isinstance(value, list) or not all(isinstance(v, args[0]) for v in value):
            raise ConfigError(f"{key} must be a list of {args[0].__name__}, got {value!r}")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
