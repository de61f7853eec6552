"""Configs made of sections (frozen dataclasses of settings), read from JSON and changed
with ``{"section.name": value}``: the curation config and the training config share this.
Pure Python: imported by filters/ and trainer/, neither of which may import Beam.

Every value is checked against its field's annotation before a section is built, so a
wrong type stops the run naming the setting instead of reaching a filter (the string
"False" is truthy; "abc" as a pixel count fails on every image). Values from JSON must
already have the type (an int is taken for a float); text from ``--set`` is converted
by the type: booleans true/false/yes/no/1/0 (any case), integers, finite floats,
``null`` (or ``none``) for an optional setting, JSON for lists and mappings."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Dict, Tuple

_BOOL_TEXT = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NONE_TEXT = ("null", "none")


class SettingError(ValueError):
    """A setting's value that does not fit its type; the message names both."""


def _describe(tp: Any, text: bool = False) -> str:
    """The expected type in words, for error messages (``text``: as --set takes it)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "a boolean (true/false, yes/no, 1/0)" if text else "a boolean (true or false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(_describe(a, text) for a in rest)
        return f"{inner} or null" if len(rest) < len(args) else inner
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        item = args[0] if args else None
        return "a JSON list" + (f" of {_describe(item).removeprefix('a ').removeprefix('an ')}s"
                                if item not in (None, Ellipsis, Any) else "")
    if origin is dict or tp is dict:
        return "a JSON object"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _item_type(tp: Any, default: Any) -> Any:
    """What the items of a list or tuple setting must be: the annotation's, or for a
    bare ``tuple``/``list`` the one type every default item has."""
    args = typing.get_args(tp)
    if args and args[0] is not Ellipsis:
        return args[0]
    kinds = {type(x) for x in (default or ())}
    return kinds.pop() if len(kinds) == 1 else Any


def _check(value: Any, tp: Any, default: Any = None) -> Any:
    """``value`` as a value of ``tp`` (an int becomes a float where a float is asked,
    a list a tuple where a tuple is); raises _Mismatch when it is none."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for alt in args:
            if alt is type(None):
                continue
            try:
                return _check(value, alt, default)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():     # JSON's 1e8 or 1000.0: the same number
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = _item_type(tp, default)
        items = [_check(v, item) for v in value]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch
    return value


def _parse_text(text: str, tp: Any, default: Any = None) -> Any:
    """A setting given as text (``--set section.name=TEXT``) as a value of ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if type(None) in args and text.strip().lower() in _NONE_TEXT:
            return None
        for alt in args:
            if alt is type(None):
                continue
            try:
                return _parse_text(text, alt, default)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] == '"':   # a JSON string, as the old --set took it
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                pass
        return text
    if tp is bool:
        if text.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[text.strip().lower()]
        raise _Mismatch
    if tp is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise _Mismatch from None
    if tp is float:
        try:
            number = float(text.strip())
        except ValueError:
            raise _Mismatch from None
        if not math.isfinite(number):
            raise _Mismatch
        return number
    if origin is typing.Literal and all(isinstance(a, str) for a in args):
        return _check(text, tp)
    try:  # lists, mappings, literals of other types: JSON
        value = json.loads(text)
    except json.JSONDecodeError:
        raise _Mismatch from None
    return _check(value, tp, default)


def _section_fields(section_cls) -> Dict[str, Tuple[Any, Any]]:
    """name -> (type, default) of a section's fields (string annotations resolved)."""
    hints = typing.get_type_hints(section_cls)
    out = {}
    for f in dataclasses.fields(section_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out[f.name] = (hints.get(f.name, Any), default)
    return out


def check_setting(key: str, value: Any, tp: Any, default: Any = None, text: bool = False) -> Any:
    """``value`` of setting ``key`` converted to ``tp``, or SettingError naming the
    setting, the value and the type expected. ``text``: the value was typed as text
    (``--set``), converted by the type; otherwise (JSON) it must have the type."""
    try:
        return _parse_text(value, tp, default) if text else _check(value, tp, default)
    except _Mismatch:
        raise SettingError(f"setting {key}: {value!r} is not {_describe(tp, text)}") from None


class SectionedConfig:
    """Mixin for a frozen dataclass whose fields are section dataclasses with defaults."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def load(cls, path: str):
        """The config in a local JSON file."""
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise SettingError(f"{path}: {e}") from e

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        if not isinstance(data, dict):
            raise SettingError(f"a config is a JSON object of sections, not {type(data).__name__}")
        parts = {}
        for f in dataclasses.fields(cls):
            sub = data.get(f.name, {})
            if not isinstance(sub, dict):
                raise SettingError(f"config section {f.name}: {sub!r} is not a JSON object of settings")
            fields = _section_fields(f.default_factory)
            unknown = set(sub) - set(fields)
            if unknown:
                raise ValueError(f"unknown {f.name} settings: {sorted(unknown)}")
            values = {name: check_setting(f"{f.name}.{name}", value, *fields[name]) for name, value in sub.items()}
            parts[f.name] = f.default_factory(**values)
        extra = set(data) - {f.name for f in dataclasses.fields(cls)}
        if extra:
            raise ValueError(f"unknown config sections: {sorted(extra)}")
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Cross-setting checks; raise ValueError."""

    def override(self, dotted: Dict[str, Any]):
        """A copy with ``{"section.name": value, ...}`` applied. A string for a setting
        that is not a string is text to convert (``--set``: "false", "64", '["a"]');
        any other value must have the setting's type."""
        data = self.to_dict()
        sections = {f.name: f.default_factory for f in dataclasses.fields(self)}
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ValueError(f"unknown setting {key!r}")
            tp, default = _section_fields(sections[section])[name]
            data[section][name] = check_setting(key, value, tp, default, text=isinstance(value, str))
        return type(self).from_dict(data)
