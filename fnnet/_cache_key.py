"""The library's source in the key of ``torch.compile``'s on-disk caches.

Inductor's FX graph cache and AOT autograd's cache key a compiled graph by the graph's code,
its constants, the compiler's config and torch's own source, on disk, across processes. They
do not see the Python behind the custom ops in the graph: a fake (meta) function whose output
sizes the compiled code was planned around, an autograd formula the backward graph was traced
from. After an upgrade of fnnet, or an edit to it, a warm cache would run a graph traced from
the old code around the new ops. Each package that defines ops (``fnnet``, ``cells``,
``losses``) adds a digest of its source files to ``torch.compiler.config.cache_key_tag``,
which both caches hash, at import: a graph compiled against other source never matches, one
compiled against the same source still does. A tag the user set (``TORCH_COMPILE_CACHE_KEY_TAG``)
is kept in front of them.
"""

from __future__ import annotations

import hashlib
import pathlib

import torch

__all__ = ["tag_with_source"]


def source_digest(package_dir: pathlib.Path) -> str:
    """A digest of every ``.py`` file under ``package_dir``: their paths and their bytes."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tag_with_source(package_init: str) -> None:
    """Add ``"<package>-<digest of its source>"`` to ``torch.compiler.config.cache_key_tag``
    (``package_init``: the package's ``__file__``), once per package per process."""
    package_dir = pathlib.Path(package_init).resolve().parent
    part = f"{package_dir.name}-{source_digest(package_dir)}"
    tag = torch.compiler.config.cache_key_tag
    if part not in tag.split("|"):
        torch.compiler.config.cache_key_tag = f"{tag}|{part}" if tag else part
