"""The programs this project needs from the operating system, in one place.

    require("espeak-ng")        # before use: MissingTool naming the tool and how to install it
    python3 liveavatar_rt/system_deps.py install [NAME ...]     # what `make test` runs first

| tool | Debian package | used by |
|---|---|---|
| espeak-ng | espeak-ng (libespeak-ng1 + data) | recipes/tiny speech: training data, eval clips, the example speech |
| chromium | chromium | tests/serve/test_browser.py (Playwright drives it; never `playwright install`) |

`install` installs what is missing with apt-get (as root, or through `sudo -n`); where that is
impossible it stops at once, exit code 2, naming the missing packages and the command that
installs them. Standard library only: the Makefile runs this file with the system Python
before the virtual environment exists, and the runtime imports it without side effects.
"""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable


class MissingTool(RuntimeError):
    """A program or library from the operating system is not installed."""


def chromium_path() -> str:
    """Chromium for the browser test: LIVEAVATAR_RT_CHROMIUM, else Debian's /usr/bin/chromium.
    Read here, not through liveavatar_rt/envvars.py (which lists it, in envvars.OUTSIDE): this file
    runs standalone, without the package importable."""
    return os.environ.get("LIVEAVATAR_RT_CHROMIUM", "/usr/bin/chromium")


def _espeak_found() -> str | None:
    """None when the dynamic linker knows libespeak-ng. Found, not loaded: recipes/tiny/speech.py
    loads it only in forked children (the library keeps global state)."""
    if ctypes.util.find_library("espeak-ng") is None:
        return "the dynamic linker finds no libespeak-ng"
    return None


def _chromium_found() -> str | None:
    path = chromium_path()
    if os.path.isfile(path) and os.access(path, os.X_OK) or shutil.which(path):
        return None
    return f"no Chromium executable at {path}"


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # Debian package that provides it
    used_by: str
    problem: Callable[[], str | None]  # None when present, else what is wrong


TOOLS = {t.name: t for t in (
    Tool("espeak-ng", "espeak-ng", "speech synthesis for the tiny model's data and eval clips", _espeak_found),
    Tool("chromium", "chromium", "the server's browser test (tests/serve/test_browser.py)", _chromium_found),
)}


def install_command(packages: list[str]) -> str:
    return ("sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {' '.join(packages)}")


def require(name: str) -> None:
    """Raise MissingTool (naming the tool, what needs it and how to install it) if `name` is absent."""
    tool = TOOLS[name]
    problem = tool.problem()
    if problem is not None:
        raise MissingTool(f"{tool.name} is not installed: {problem}. It is needed for {tool.used_by}. "
                          f"Install it with: {install_command([tool.package])}  (or run `make sysdeps`)")


def missing(names: list[str]) -> list[Tool]:
    return [TOOLS[n] for n in names if TOOLS[n].problem() is not None]


def _apt_prefix() -> list[str] | None:
    """How to run apt-get here: directly as root, through non-interactive sudo, or not at all."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install(names: list[str], out=sys.stdout) -> int:
    """Install the missing tools among `names`; 0 when all are present afterwards, 2 when they
    cannot be installed here (message on stderr), 1 when apt-get failed."""
    todo = missing(names)
    if not todo:
        print(f"system deps: {', '.join(names)} present", file=out)
        return 0
    packages = sorted({t.package for t in todo})
    prefix = _apt_prefix()
    if prefix is None:
        why = "apt-get is not available" if shutil.which("apt-get") is None else "not root and no password-less sudo"
        lines = [f"system deps: cannot install {', '.join(packages)} here ({why}). Missing:"]
        lines += [f"  - {t.name} (Debian package {t.package}): {t.problem()}; needed for {t.used_by}" for t in todo]
        lines.append(f"Install them with:\n  {install_command(packages)}\nthen run the command again.")
        print("\n".join(lines), file=sys.stderr)
        return 2
    print(f"system deps: installing {', '.join(packages)} with apt-get", file=out, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        if subprocess.run(prefix + cmd, env=env).returncode != 0:
            print(f"system deps: `{' '.join(prefix + cmd)}` failed", file=sys.stderr)
            return 1
    still = missing(names)
    if still:
        print("system deps: still missing after apt-get: "
              + "; ".join(f"{t.name}: {t.problem()}" for t in still), file=sys.stderr)
        return 1
    print(f"system deps: installed {', '.join(packages)}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("install", "check"):
        print(f"usage: python3 {__file__} install|check [{'|'.join(TOOLS)} ...]", file=sys.stderr)
        return 2
    names = argv[1:] or list(TOOLS)
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        print(f"unknown tool(s) {unknown}; known: {list(TOOLS)}", file=sys.stderr)
        return 2
    if argv[0] == "check":
        todo = missing(names)
        for t in todo:
            print(f"missing: {t.name} (Debian package {t.package}): {t.problem()}", file=sys.stderr)
        return 1 if todo else 0
    return install(names)


if __name__ == "__main__":
    sys.exit(main())
