"""liveavatar_rt/envvars.py: every LIVEAVATAR_RT_* variable is parsed there, and nowhere else."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from liveavatar_rt import envvars, system_deps

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "liveavatar_rt"

# Package files allowed to read a LIVEAVATAR_RT_ variable from os.environ themselves, with why.
ALLOWED_READERS = {
    "envvars.py": "the one reader",
    "system_deps.py": "runs standalone with the system Python (no package import); listed in envvars.OUTSIDE",
}

_READ = re.compile(r"(environ|getenv)\b.*LIVEAVATAR_RT_|LIVEAVATAR_RT_.*\bin\s+os\.environ")


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("ref", "ref"),
                                         ("rms_norm=cpu,attention=ref", "rms_norm=cpu,attention=ref")])
def test_provider(monkeypatch, value, want):
    _set(monkeypatch, envvars.PROVIDER, value)
    assert envvars.provider() == want


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("0", None), ("1", "1"), ("yes", "yes")])
def test_disable_ext(monkeypatch, value, want):
    _set(monkeypatch, envvars.DISABLE_EXT, value)
    assert envvars.disable_ext() == want


@pytest.mark.parametrize("value, want", [(None, False), ("", False), ("0", False), ("1", True), ("true", True)])
def test_tiny_random(monkeypatch, value, want):
    _set(monkeypatch, envvars.TINY_RANDOM, value)
    assert envvars.tiny_random() is want


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("s3cret", "s3cret")])
def test_token(monkeypatch, value, want):
    _set(monkeypatch, envvars.TOKEN, value)
    assert envvars.token() == want


@pytest.mark.parametrize("value, want", [(None, False), ("", False), ("0", False), ("1", True), ("yes", False)])
def test_require_browser(monkeypatch, value, want):
    _set(monkeypatch, envvars.REQUIRE_BROWSER, value)
    assert envvars.require_browser() is want


def test_chromium_default_matches_system_deps(monkeypatch):
    reader, default = envvars.OUTSIDE[envvars.CHROMIUM]
    assert reader == "liveavatar_rt/system_deps.py"
    monkeypatch.delenv(envvars.CHROMIUM, raising=False)
    assert system_deps.chromium_path() == default
    monkeypatch.setenv(envvars.CHROMIUM, "/opt/chromium")
    assert system_deps.chromium_path() == "/opt/chromium"


def test_no_environ_reads_outside_envvars():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED_READERS:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _READ.search(line):
                offenders.append(f"liveavatar_rt/{rel}:{i}: {line.strip()}")
    assert not offenders, "read LIVEAVATAR_RT_ variables through liveavatar_rt/envvars.py:\n" + "\n".join(offenders)


def test_every_variable_is_listed():
    """Each LIVEAVATAR_RT_ name the project's Python sources or the Makefile mention is an envvars name."""
    known = {v for k, v in vars(envvars).items() if k.isupper() and isinstance(v, str)}
    found = set()
    files = [ROOT / "Makefile", ROOT / "setup.py"]
    for d in ("liveavatar_rt", "tests", "recipes", "bench"):
        files += sorted((ROOT / d).rglob("*.py"))
    for path in files:
        if path.is_file():
            found |= set(re.findall(r"LIVEAVATAR_RT_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert found - known == set()
    assert set(envvars.OUTSIDE) <= known


def _set(monkeypatch, name, value):
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
