"""Configs made of sections (frozen dataclasses of settings), read from JSON and changed
with ``{"section.name": value}``: the curation config and the training config share this.
Pure Python: imported by filters/ and trainer/, neither of which may import Beam."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict


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
            return cls.from_dict(json.load(fh))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        parts = {}
        for f in dataclasses.fields(cls):
            sub = data.get(f.name, {})
            unknown = set(sub) - {g.name for g in dataclasses.fields(f.default_factory)}
            if unknown:
                raise ValueError(f"unknown {f.name} settings: {sorted(unknown)}")
            parts[f.name] = f.default_factory(**sub)
        extra = set(data) - {f.name for f in dataclasses.fields(cls)}
        if extra:
            raise ValueError(f"unknown config sections: {sorted(extra)}")
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Cross-setting checks; raise ValueError."""

    def override(self, dotted: Dict[str, Any]):
        """A copy with ``{"section.name": value, ...}`` applied."""
        data = self.to_dict()
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ValueError(f"unknown setting {key!r}")
            data[section][name] = value
        return type(self).from_dict(data)
