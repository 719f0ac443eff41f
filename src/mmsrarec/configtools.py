"""Typed configuration: dataclasses with defaults in code, YAML files that say what differs.

`load_config(path, overrides)` merges, in order: the dataclass defaults < the files named by
`base:` (recursively) < the file itself < `--set a.b=value` overrides, then converts the result into
the typed dataclass tree. Every key remembers where it came from (file and line, or the `--set`
argument), so an unknown key, a wrong type or an impossible value fails before any work starts
with a message that names the key and that place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str = "", default_factory: Any = dataclasses.MISSING,
          neutral: bool = False):
    """A dataclass field that carries help text (shown by `mmsrarec config --help-keys`).

    neutral=True: an option added after results were computed, whose default does exactly what the code did
    before it existed. Stage keys and run fingerprints (key_dict) leave it out while it is at its default,
    so adding it leaves every finished stage and the ledger's rows valid; set, it is in them like any other.
    Changing a neutral field's default later is a change of results: give it a new name instead."""
    metadata = {"help": help, **({"neutral": True} if neutral else {})}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- YAML with lines

class _Where(dict):
    """dotted key -> 'file, line N' or '--set key=value'."""


def _compose(text: str, source: str, where: _Where, prefix: str = "") -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if node is None:
        return {}
    return _node_to_python(node, source, where, prefix)


def _node_to_python(node: yaml.Node, source: str, where: _Where, prefix: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.SafeLoader(key_node.value).get_single_data()) if False else str(key_node.value)
            dotted = f"{prefix}{key}"
            if key in out:
                raise ConfigError(f"{source}, line {key_node.start_mark.line + 1}: key '{dotted}' appears twice")
            where[dotted] = f"{source}, line {key_node.start_mark.line + 1}"
            out[key] = _node_to_python(value_node, source, where, dotted + ".")
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, source, where, prefix) for v in node.value]
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_layers(path: str | Path, where: _Where, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file and the `base:` files it names (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: 'base' files form a cycle: {chain}")
    data = _compose(path.read_text(encoding="utf-8"), str(path), where)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        layer = read_yaml_layers(path.parent / base, where, (*_seen, resolved))
        merged = _merge(merged, layer)
    return _merge(merged, data)


def parse_override(text: str, where: _Where) -> dict:
    """'a.b=value' -> {'a': {'b': value}} with value parsed as YAML ('3' -> 3, '[1,2]' -> list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set cf.train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key {key!r} is empty or has an empty part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {exc}") from None
    parts = key.split(".")
    for i in range(len(parts)):
        where[".".join(parts[: i + 1])] = f"--set {text}"
    out: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


# ----------------------------------------------------------------------------- dict -> dataclass

def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: _Where) -> Any:
    loc = where.get(key, "defaults")
    origin = get_origin(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{loc}: key '{key}' must be {expected}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError:
                continue
        raise fail(" or ".join(_describe(a) for a in args))
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{loc}: key '{key}' must be one of {_describe(tp)}, got {value!r}{hint}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping of {tp.__name__} keys")
        return from_dict(tp, value, where, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list of {_describe(get_args(tp)[0])}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}", where) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        _, value_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, value_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML reads .nan / .inf: no setting means either
                raise fail("a finite number")
            return float(value)
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("a string")
    if isinstance(value, tp):
        return value
    raise fail(_describe(tp))


def from_dict(cls: type[T], data: dict, where: _Where | None = None, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    where = where if where is not None else _Where()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys here: {', '.join(names)}."
            raise ConfigError(f"{where.get(dotted, 'config')}: unknown key '{dotted}'.{hint}")
    kwargs = {name: _convert(data[name], hints[name], f"{prefix}{name}", where) for name in names if name in data}
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except InvalidValue as exc:
            full = f"{prefix}{exc.key}"
            raise ConfigError(f"{where.get(full, 'defaults')}: key '{full}' {exc.why}") from None
    return obj


class InvalidValue(ConfigError):
    """Raised by a config dataclass's validate(): `raise InvalidValue("lr", "must be > 0, got -1")`.
    from_dict adds the section prefix and the file and line the key came from."""

    def __init__(self, key: str, why: str):
        super().__init__(f"'{key}' {why}")
        self.key, self.why = key, why


def to_dict(obj: Any, keyed: bool = False) -> Any:
    """Plain dicts and lists of a config tree. keyed=True (key_dict): less the neutral fields at their default."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name), keyed) for f in dataclasses.fields(obj)
                if not (keyed and f.metadata.get("neutral") and _at_default(obj, f))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, keyed) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, keyed) for k, v in obj.items()}
    return obj


def key_dict(obj: Any) -> Any:
    """What a stage key or a run fingerprint holds of a config section: to_dict less the neutral fields
    (field(neutral=True)) that are at their default."""
    return to_dict(obj, keyed=True)


def _at_default(obj: Any, f: dataclasses.Field) -> bool:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return to_dict(getattr(obj, f.name)) == to_dict(default)


def help_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, recursively: the documentation of all keys."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(help_rows(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows


def load(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    where = _Where()
    data = read_yaml_layers(path, where) if path is not None else {}
    for text in overrides:
        data = _merge(data, parse_override(text, where))
    return from_dict(cls, data, where)
