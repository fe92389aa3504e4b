"""torch.compile's on-disk caches are keyed by the library's source (``fnnet/_cache_key.py``):
a graph compiled against one version of fnnet is never run by another."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import torch

import cells  # noqa: F401  (imported for its tag)
import fnnet as fn
import losses  # noqa: F401
from fnnet import _cache_key

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("fnnet", "cells", "losses")

_COMPILE = """
import json, torch
import fnnet as fn, cells, losses
from torch._dynamo.utils import counters
model = fn.Linear(3, 2)
params, x, t = model.init(fn.random.key(0)), torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
step = fn.value_and_grad(lambda p: losses.cross_entropy(model.apply(p, x), t))
torch.testing.assert_close(fn.jit(step)(params), step(params))
print(json.dumps({"source": fn.__file__, "fx_hit": counters["inductor"]["fxgraph_cache_hit"],
                  "aot_hit": counters["aot_autograd"]["autograd_cache_hit"]}))
"""


def test_every_package_that_defines_ops_tags_the_cache_key_with_its_source_once():
    tag = torch.compiler.config.cache_key_tag.split("|")
    for name in PACKAGES:
        part = f"{name}-{_cache_key.source_digest(ROOT / name)}"
        assert tag.count(part) == 1, (part, tag)
    before = torch.compiler.config.cache_key_tag
    _cache_key.tag_with_source(fn.__file__)  # a second import of the package adds nothing
    assert torch.compiler.config.cache_key_tag == before


def test_a_graph_compiled_against_other_fnnet_source_is_compiled_again_not_read_from_disk(tmp_path):
    """Two copies of the packages, one with a comment added to one file, share one inductor cache.
    The same step compiled under the edited copy misses both caches (inductor's FX graph cache and
    AOT autograd's); compiled again under the first copy, it hits them: the key changed with the
    source, and only with it. Without the source in the key, the edited copy ran the first one's
    graphs: after an upgrade that changes an op's fake or autograd formula, graphs traced from the
    old code."""
    copies = {}
    for version in ("old", "new"):
        for name in PACKAGES:
            shutil.copytree(ROOT / name, tmp_path / version / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        copies[version] = tmp_path / version
    with open(copies["new"] / "cells" / "fused.py", "a") as f:
        f.write("# an edit\n")
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}

    def compile_under(version):
        out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=tmp_path, capture_output=True, text=True,
                             env=env | {"PYTHONPATH": str(copies[version])}, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert pathlib.Path(report["source"]).is_relative_to(copies[version])
        return report["fx_hit"], report["aot_hit"]

    assert compile_under("old") == (0, 0)
    assert compile_under("new") == (0, 0)
    fx_hit, aot_hit = compile_under("old")
    assert fx_hit > 0 and aot_hit > 0
