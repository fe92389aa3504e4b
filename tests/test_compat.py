"""The torch version floor: the import-time guard, its message, and pyproject.toml agreeing with it."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from fnnet._compat import TORCH_FLOOR, check_torch_version, parse_torch_version

FLOOR = ".".join(map(str, TORCH_FLOOR))
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("version, expected", [
    ("2.11.0", (2, 11)), ("2.11.0+cu130", (2, 11)), ("2.13.0+cpu", (2, 13)), ("2.12.0a0+git1234abc", (2, 12)),
    ("2.14.0.dev20260101+cpu", (2, 14)), ("2.6", (2, 6)), ("10.0.1", (10, 0)),
])
def test_parse(version, expected):
    assert parse_torch_version(version) == expected


def older(n: int) -> list[str]:
    major, minor = TORCH_FLOOR
    return [f"{major}.{minor - k}.{p}" for k in range(1, n + 1) if minor - k >= 0 for p in (0, 1)]


@pytest.mark.parametrize("version", [*older(5), "1.13.1", "2.6.0+cpu", "2.9.1+cu128", "2.10.0a0+git0"])
def test_older_torch_is_refused_naming_both_versions(version):
    if parse_torch_version(version) >= TORCH_FLOOR:
        pytest.skip("not older than the floor")
    with pytest.raises(ImportError) as err:
        check_torch_version(version)
    msg = str(err.value)
    assert f"found torch {version}" in msg
    assert f"torch >= {FLOOR}" in msg


@pytest.mark.parametrize("version", [
    f"{FLOOR}.0", f"{FLOOR}.0+cu130", f"{FLOOR}.1+cpu", f"{FLOOR}.0a0+gitabc", f"{FLOOR}.0.dev20260101",
    f"{TORCH_FLOOR[0]}.{TORCH_FLOOR[1] + 1}.0", f"{TORCH_FLOOR[0] + 1}.0.0", "2.13.0+cpu",
])
def test_floor_and_newer_are_accepted(version):
    check_torch_version(version)


def test_unreadable_version_is_let_through():
    check_torch_version("unknown")  # a source build with a custom label: no guess, no error


def test_installed_torch_passes():
    import torch
    check_torch_version(torch.__version__)


def _import_with_torch_version(version: str, env: dict | None = None) -> list[str]:
    code = (f"import torch; torch.__version__ = {version!r}\n"
            "for name in ('fnnet', 'cells', 'losses'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ImportError as e:\n"
            "        print(name, 'REFUSED', e)\n"
            "    else:\n"
            "        print(name, 'IMPORTED')\n")
    env = {k: v for k, v in os.environ.items() if k != "FNNET_IGNORE_TORCH_FLOOR"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout
    return lines


def test_importing_fnnet_on_an_old_torch_raises():
    """A fresh interpreter whose torch says it is 2.5.1: ``import fnnet`` (and the packages
    built on it) stop at once with the version found and the floor."""
    for line in _import_with_torch_version("2.5.1"):
        assert "REFUSED" in line, line
        assert "found torch 2.5.1" in line and f"torch >= {FLOOR}" in line, line


def test_the_floor_check_can_be_skipped_for_measuring():
    """``FNNET_IGNORE_TORCH_FLOOR=1`` (what ``make test-compat`` sets) lets an older torch import
    fnnet, so that what it still runs can be measured."""
    for line in _import_with_torch_version("2.5.1", {"FNNET_IGNORE_TORCH_FLOOR": "1"}):
        assert "IMPORTED" in line, line


def test_pyproject_declares_the_same_floor():
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=([0-9.]+)"', text)
    assert m is not None, "pyproject.toml's dependencies name no torch floor"
    assert parse_torch_version(m.group(1)) == TORCH_FLOOR


def test_constant_folded_calls_take_modules_on_every_supported_torch(monkeypatch):
    """fnnet's assume_constant_result as torch <= 2.11 gets it (a module crosses by id): one
    real call per compile, eager-equal results, a recompile (not a stale constant) for another
    module of other fields."""
    import torch

    import fnnet as fn
    from fnnet import _compat

    monkeypatch.setattr(_compat, "DYNAMO_PASSES_OBJECTS", False)
    calls = []

    @_compat.assume_constant_result
    def width(module, what):
        calls.append(what)
        return module.out_features

    assert width(fn.Linear(2, 3), "eager") == 3 and calls == ["eager"]
    torch._dynamo.reset()
    step = torch.compile(lambda x, m: x * width(m, what="traced"), fullgraph=True)
    small, big = fn.Linear(2, 3), fn.Linear(2, 5)
    x = torch.ones(2)
    assert step(x, small).tolist() == [3.0, 3.0]
    assert step(x, small).tolist() == [3.0, 3.0]
    assert step(x, big).tolist() == [5.0, 5.0]
    assert calls == ["eager", "traced", "traced"]


def test_one_compiled_step_meets_layers_of_other_widths(monkeypatch):
    """One fn.jit step applied to Linear(3, 2), then Linear(4, 2), Linear(5, 2): dynamo makes
    the second width a symbolic int and fails formatting the layer's input message (torch 2.11
    and 2.13 alike); fn.jit specializes ints (SPECIALIZE_INTS), and the values are eager's."""
    import torch

    import fnnet as fn
    from fnnet import _compat, random

    assert _compat.SPECIALIZE_INTS
    step = fn.jit(lambda m, p, x: m.apply(p, x).square().sum(), backend="eager")
    for width in (3, 4, 5):
        m = fn.Linear(width, 2)
        p, x = m.init(random.key(width)), torch.ones(2, width)
        torch.testing.assert_close(step(m, p, x), m.apply(p, x).square().sum())
