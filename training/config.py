"""Profile configs (training/configs/{paper,cpu,tiny}.yaml, or a path to a YAML file)."""

from __future__ import annotations

from pathlib import Path

import yaml

from VentricleSynthLib.errors import ConfigError
from VentricleSynthLib.imaging.profile import Profile

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROFILES = ("paper", "cpu", "tiny")


def load_config(name_or_path: str) -> dict:
    """Read a profile config by name or path; checks the keys every stage relies on."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown config {name_or_path!r}: expected one of {', '.join(PROFILES)} or a YAML file")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(config, dict) or "profile" not in config:
        raise ConfigError(f"{path}: a config needs a 'profile' section")
    try:
        config["profile_obj"] = Profile.from_dict(config["profile"].get("name", path.stem), config["profile"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid profile section ({exc})") from None
    config["path"] = str(path)
    return config
