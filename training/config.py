"""Profile configs (training/configs/{paper,cpu,tiny}.yaml, or a path to a YAML file) and how a section is read.

`load_config` reads a profile config into a `Config`; each stage then reads its own section into a frozen
dataclass (training/stage_configs.py) through `Section`, which fills in defaults and checks every value the same
way. Every invalid value is a `ConfigError` of one form: `<config file>: <section>.<key> must be <what>, got
<value>` (an unknown key: `<config file>: <section>.<key> is not a setting (known: ...)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from VentricleSynthLib.errors import ConfigError
from VentricleSynthLib.imaging.profile import Profile

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROFILES = ("paper", "cpu", "tiny")
MISSING = object()  # a required value's default


@dataclass(frozen=True)
class Config:
    """A profile config: its file, the profile grid and the sections as read."""

    path: str
    profile: Profile
    sections: dict

    def section(self, name: str):
        return self.sections.get(name)


def load_config(name_or_path: str) -> Config:
    """Read a profile config by name or path; checks the profile section every stage relies on."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown config {name_or_path!r}: expected one of {', '.join(PROFILES)} or a YAML file")
    try:
        sections = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(sections, dict) or "profile" not in sections:
        raise ConfigError(f"{path}: a config needs a 'profile' section")
    try:
        profile = Profile.from_dict(sections["profile"].get("name", path.stem), sections["profile"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid profile section ({exc})") from None
    return Config(str(path), profile, sections)


# --- the one way of checking a value -------------------------------------------------------------------

def is_integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite number; YAML 1.1 reads `1e-3` (no dot) as a string, so numeric strings count too."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def as_number(v):
    return float(v) if isinstance(v, str) else v


class Section:
    """One mapping of a config (a section or a mapping inside one): read key by key, each value checked.

    `optional`: None is accepted too; a string says what null means ("the bundle's")."""

    def __init__(self, where: str, name: str, mapping, known):
        self.where, self.name = where, name
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise self.error("", "a mapping", mapping)
        unknown = [k for k in mapping if k not in known]
        if unknown:
            raise ConfigError(f"{where}: {name}.{unknown[0]} is not a setting (known: {', '.join(known)})")
        self.mapping = mapping

    def error(self, key: str, what: str, value) -> ConfigError:
        got = "nothing" if value is MISSING else repr(value)
        return ConfigError(f"{self.where}: {self.name}{'.' + key if key else ''} must be {what}, got {got}")

    def value(self, key: str, default, ok, what: str, optional: bool | str = False):
        """The key's value (or `default`; `MISSING`: required) if `ok(value)`, else the one ConfigError."""
        value = self.mapping.get(key, default)
        if optional:
            what += f" (or null: {optional})" if isinstance(optional, str) else " (or null)"
        if value is MISSING or not ((optional and value is None) or ok(value)):
            raise self.error(key, what, value)
        return value

    def integer(self, key: str, default=MISSING, minimum: int | None = None, optional: bool | str = False):
        what = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        return self.value(key, default, lambda v: is_integer(v) and (minimum is None or v >= minimum), what, optional)

    def number(self, key: str, default=MISSING, low: float | None = None, high: float | None = None,
               optional: bool | str = False):
        what = "a number" + (f" in {low:g}..{high:g}" if low is not None and high is not None
                             else f" >= {low:g}" if low is not None else "")
        value = self.value(key, default, lambda v: is_number(v) and (low is None or float(v) >= low)
                           and (high is None or float(v) <= high), what, optional)
        return as_number(value)

    def choice(self, key: str, default, choices) -> str:
        return self.value(key, default, lambda v: v in choices, f"one of {', '.join(map(str, choices))}")

    def boolean(self, key: str, default=MISSING) -> bool:
        return self.value(key, default, lambda v: isinstance(v, bool), "true or false")

    def text(self, key: str, default=MISSING, what: str = "a name", optional: bool | str = False) -> str:
        return self.value(key, default, lambda v: isinstance(v, str) and v.strip() != "", what, optional)

    def names(self, key: str, default=MISSING, choices=None) -> list:
        what = "a list of " + (", ".join(choices) if choices else "names")
        return list(self.value(key, default, lambda v: isinstance(v, (list, tuple)) and all(
            isinstance(n, str) and (choices is None or n in choices) for n in v), what))

    def mapping_of(self, key: str, default=MISSING) -> dict:
        return self.value(key, default, lambda v: isinstance(v, dict), "a mapping")

    def sub(self, key: str, known) -> "Section":
        return Section(self.where, f"{self.name}.{key}", self.mapping.get(key), known)
