"""Reading yes/no settings that arrive as text (MONAI bundle overrides, YAML)."""

from __future__ import annotations

from typing import Any

from volmae.errors import ConfigError

__all__ = ["parse_flag"]


def parse_flag(name: str, value: Any, optional: bool = False) -> bool | None:
    """A yes/no setting as a bool. ``python -m monai.bundle run ... --pretrain#resume true`` hands over the string
    "true" (the bundle CLI parses Python literals only), and a bare string is truthy even as "false": take the words
    true / false (any case), refuse anything else but a bool (or None when ``optional``)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise ConfigError(f"{name}={value!r}: expected true or false")
