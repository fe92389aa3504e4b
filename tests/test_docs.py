"""The documentation site: every Python block of every page runs as written (page by page, in
order, one namespace per page), and the site builds strictly (a broken reference fails)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(ROOT / "docs")) for p in PAGES if str(p.relative_to(ROOT / "docs")) not in nav]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_page_python_blocks_run_as_written(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    # a real module, so that torch.compile can resolve the blocks' globals by module name
    name = f"fnnet_docs_{re.sub(r'[^a-z0-9]', '_', str(page.relative_to(ROOT / 'docs')))}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), module.__dict__)
    finally:
        del sys.modules[name]


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra (pip install -e '.[docs]') builds the site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "api" / "layers" / "index.html").exists()
