"""The one-line ConfigErrors every validator raises: `key=value: what is allowed`."""
from __future__ import annotations

import os
from typing import Any, Optional

from llmx.errors import ConfigError


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r}: {allowed}")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        fail(key, value, allowed)


def one_of(key: str, value: Any, allowed: tuple) -> None:
    require(value in allowed, key, value, f"allowed: {', '.join(map(str, allowed))}")


def positive(key: str, value: Any, minimum: float = 1) -> None:
    require(value >= minimum, key, value, f"must be >= {minimum}")


def existing(key: str, value: Optional[str], what: str) -> None:
    if value is not None and not os.path.exists(value):
        fail(key, value, f"no such {what} (local paths only: llmx never downloads)")
