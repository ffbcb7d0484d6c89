"""Where llmx's own files are: the package, its bundled assets and the Hydra conf tree beside it."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CONF_DIR = PACKAGE_DIR.parent / "conf"


def asset_path(relative: str) -> str:
    return str(ASSETS_DIR / relative)
