"""Every `LIVEAVATAR_RT_*` environment variable, read in this one module.

Each variable has a name constant and one reader function, called at use time (never cached
here: tests monkeypatch the environment). Standard library only, no package imports.

| variable | meaning | default (unset) |
|---|---|---|
| LIVEAVATAR_RT_PROVIDER | force op providers: `ref` everywhere, or `op=provider,...` per op (ops/registry.py) | no forcing |
| LIVEAVATAR_RT_DISABLE_EXT | any value but "" / "0": never load the compiled extension `liveavatar_rt._C` (_ext.py) | load it |
| LIVEAVATAR_RT_TINY_RANDOM | any value but "" / "0": the `tiny` preset runs on seeded random weights even where trained ones ship (engine/pipeline.py) | trained weights when present |
| LIVEAVATAR_RT_TOKEN | bearer token `liveavatar-rt serve` requires when --token is not given (serve/cli.py) | no auth |
| LIVEAVATAR_RT_REQUIRE_BROWSER | "1": the browser test fails instead of skipping when Chromium / Playwright is missing (tests/serve/test_browser.py, `make test`) | skip |
| LIVEAVATAR_RT_CHROMIUM | the Chromium binary of the browser test | /usr/bin/chromium |
| LIVEAVATAR_RT_FACE_PYTHON | the Python of the face landmark environment, with mediapipe==0.10.21 (eval/landmarks.py) | `<repo>/.venv-face/bin/python` (`make face-env`) |
| LIVEAVATAR_RT_NO_EXT | build time, any value but "" / "0": `pip install` builds no extension | build it |

Two are read outside this module, by files that must run without the package importable:
LIVEAVATAR_RT_CHROMIUM by liveavatar_rt/system_deps.py (the Makefile runs it with the system
Python before the virtual environment exists; `chromium_path()` there) and LIVEAVATAR_RT_NO_EXT
by setup.py (the build, before the package is installed). Their defaults are listed in
`OUTSIDE` and tests/test_envvars.py checks system_deps against it.
"""
from __future__ import annotations

import os
from typing import Optional

PROVIDER = "LIVEAVATAR_RT_PROVIDER"
DISABLE_EXT = "LIVEAVATAR_RT_DISABLE_EXT"
TINY_RANDOM = "LIVEAVATAR_RT_TINY_RANDOM"
TOKEN = "LIVEAVATAR_RT_TOKEN"
REQUIRE_BROWSER = "LIVEAVATAR_RT_REQUIRE_BROWSER"
CHROMIUM = "LIVEAVATAR_RT_CHROMIUM"
NO_EXT = "LIVEAVATAR_RT_NO_EXT"
FACE_PYTHON = "LIVEAVATAR_RT_FACE_PYTHON"

# Variables read outside this module (see the module docstring): name -> (reader, default).
OUTSIDE = {
    CHROMIUM: ("liveavatar_rt/system_deps.py", "/usr/bin/chromium"),
    NO_EXT: ("setup.py", ""),
}


def _flag(name: str) -> bool:
    """Boolean switch: set to anything but "" or "0" means on."""
    return os.environ.get(name, "") not in ("", "0")


def provider() -> Optional[str]:
    """LIVEAVATAR_RT_PROVIDER: the provider forcing spec ('ref', 'rms_norm=cpu,attention=ref'),
    None when unset or empty (no forcing). Parsed by ops.registry."""
    return os.environ.get(PROVIDER) or None


def disable_ext() -> Optional[str]:
    """LIVEAVATAR_RT_DISABLE_EXT: the value when it disables the compiled extension (set to
    anything but "" or "0"), else None (the extension loads when built)."""
    return os.environ[DISABLE_EXT] if _flag(DISABLE_EXT) else None


def tiny_random() -> bool:
    """LIVEAVATAR_RT_TINY_RANDOM: True when set to anything but "" or "0": the `tiny` preset
    uses seeded random weights even where the trained checkpoint exists. Default False."""
    return _flag(TINY_RANDOM)


def token() -> Optional[str]:
    """LIVEAVATAR_RT_TOKEN: the serve bearer token when --token is not given; None when unset
    or empty (no auth)."""
    return os.environ.get(TOKEN) or None


def require_browser() -> bool:
    """LIVEAVATAR_RT_REQUIRE_BROWSER: True only when exactly "1" (`make test` sets it): the
    browser test fails rather than skips when Chromium or Playwright is missing."""
    return os.environ.get(REQUIRE_BROWSER) == "1"


def face_python() -> Optional[str]:
    """LIVEAVATAR_RT_FACE_PYTHON: the face environment's Python executable; None when unset or
    empty (eval/landmarks.py then uses <repo>/.venv-face/bin/python, made by `make face-env`)."""
    return os.environ.get(FACE_PYTHON) or None
