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
import fnnet as fn, cells, losses  # noqa: F401  (their tags)
from torch._dynamo.utils import counters
model = fn.Linear(3, 2)
params, x = model.init(fn.random.key(0)), torch.randn(4, 3)
f = lambda p: model.apply(p, x).tanh()
hits = []
for _ in range(2):  # compiled, then compiled again from scratch: the second reads the disk cache
    torch._dynamo.reset()
    counters.clear()
    torch.testing.assert_close(fn.jit(f)(params), f(params))
    hits.append((counters["inductor"]["fxgraph_cache_hit"], counters["aot_autograd"]["autograd_cache_hit"]))
print(json.dumps({"source": fn.__file__, "hits": hits}))
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
    Under the first, a function compiled a second time (dynamo reset) reads its graphs from the
    disk cache (inductor's FX graph cache and AOT autograd's); under the edited copy the same
    function, with those graphs on disk, misses both: the key changed with the source. Without
    the source in the key, the edited copy ran the first one's graphs: after an upgrade that
    changes an op's fake or autograd formula, graphs traced from the old code."""
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

    def hits_under(version):
        out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=tmp_path, capture_output=True, text=True,
                             env=env | {"PYTHONPATH": str(copies[version])}, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert pathlib.Path(report["source"]).is_relative_to(copies[version])
        return [tuple(h) for h in report["hits"]]

    first, again = hits_under("old")
    assert first == (0, 0) and again[0] > 0 and again[1] > 0
    assert hits_under("new")[0] == (0, 0)


def test_a_tag_the_user_set_is_kept_in_front():
    out = subprocess.run([sys.executable, "-c", "import torch, fnnet, cells, losses; "
                          "print(torch.compiler.config.cache_key_tag)"], cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"TORCH_COMPILE_CACHE_KEY_TAG": "mine", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["mine|" + "|".join(f"{name}-{_cache_key.source_digest(ROOT / name)}"
                                                     for name in PACKAGES)]
