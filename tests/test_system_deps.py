"""System packages: `make sysdeps` (liveavatar_rt/system_deps.py) installs what is missing or
stops with a message naming it, and every user of a tool says what is missing before it fails."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liveavatar_rt import system_deps

SCRIPT = Path(system_deps.__file__)


def _run(args, env=None, user=None):
    cmd = [sys.executable, str(SCRIPT), *args]
    if user is not None:  # really not root: the same check a developer without sudo meets
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_present_tools_install_nothing():
    r = _run(["install", "chromium"], env={"LIVEAVATAR_RT_CHROMIUM": sys.executable})
    assert r.returncode == 0 and "present" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is not None, reason="needs root to drop to a user")
def test_without_root_stops_at_once_naming_packages_and_command():
    """A missing tool (Chromium at a path that does not exist) as an unprivileged user: exit 2,
    the package, why, what needs it, and the install command."""
    env = {"LIVEAVATAR_RT_CHROMIUM": "/nonexistent/chromium"}
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is missing: cannot run as an unprivileged user")
        r = _run(["install", "chromium"], env=env, user=65534)
    else:
        r = _run(["install", "chromium"], env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "cannot install chromium here" in r.stderr
    assert "no Chromium executable at /nonexistent/chromium" in r.stderr
    assert "apt-get install -y --no-install-recommends chromium" in r.stderr
    assert "installing" not in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt path runs as root")
def test_as_root_runs_apt_get_update_then_install(tmp_path):
    """apt-get is a recording stand-in here: update, then install of exactly the missing package;
    the tool is still missing afterwards, so the command fails and says so."""
    log = tmp_path / "apt.log"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$DEBIAN_FRONTEND $*\" >> {log}\n")
    fake.chmod(0o755)
    env = {"LIVEAVATAR_RT_CHROMIUM": "/nonexistent/chromium", "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    r = _run(["install", "chromium"], env=env)
    assert log.read_text().splitlines() == ["noninteractive update",
                                            "noninteractive install -y --no-install-recommends chromium"]
    assert r.returncode == 1 and "still missing after apt-get" in r.stderr


def test_usage_errors():
    assert _run([]).returncode == 2
    r = _run(["install", "ffmpeg"])
    assert r.returncode == 2 and "unknown tool" in r.stderr


def test_require_names_the_tool_and_the_install(monkeypatch):
    monkeypatch.setattr(system_deps.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(system_deps.MissingTool, match=r"espeak-ng is not installed.*apt-get install .*espeak-ng"):
        system_deps.require("espeak-ng")


def test_speech_engine_checks_before_forking(monkeypatch):
    """Without libespeak-ng the recipe's speech engine raises MissingTool in the caller, not an
    EOFError from a dead helper process."""
    from recipes.tiny.speech import FreshEngine

    monkeypatch.setattr(system_deps.ctypes.util, "find_library", lambda name: None)
    forks = []
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or pytest.fail("forked before checking"))
    with pytest.raises(system_deps.MissingTool, match="espeak-ng"):
        FreshEngine()
    assert not forks
