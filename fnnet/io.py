"""Save and load pytrees of tensors (params, optimizer states, step counters) safely.

    fn.io.save("ckpt.fnnet", {"params": params, "opt": opt_state, "step": 100})
    ckpt = fn.io.load("ckpt.fnnet", like=template)     # checks paths, shapes and dtypes

The format is fnnet's own and executes nothing when read: an 8-byte magic, a
little-endian 8-byte header length, a JSON header describing the tree (dicts, lists,
tuples, named tuples; tensor leaves and plain ``int``/``float``/``bool``/``str``/``None``
leaves; other registered pytree nodes by the paths of their leaves), then the raw bytes of
the tensors. A ``torch.save`` file (zip) is also read, through
``torch.load(weights_only=True)``, so PyTorch state dicts load too; anything else (a
pickle, random bytes, a truncated file) raises :class:`CheckpointError`.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import tree as T
from .interop import nest

__all__ = ["MAGIC", "CheckpointError", "load", "save"]

MAGIC = b"FNNETCK1"
_VERSION = 1
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(ValueError):
    """A file is not a checkpoint fnnet can read, or does not fit the ``like=`` template."""

    def __init__(self, path: Any, what: str):
        super().__init__(f"{path}: {what}")
        self.path, self.what = path, what


# -- save ------------------------------------------------------------------------------------

def _encode(node: Any, path: str, blobs: list, offset: list) -> dict:
    where = path or "<root>"
    if isinstance(node, torch.Tensor):
        if node.dtype not in _DTYPES.values():
            raise TypeError(f"io.save: {where} has dtype {node.dtype}, which fnnet checkpoints do not store")
        t = node.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        blobs.append(raw)
        entry = {"t": "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                 "offset": offset[0], "nbytes": len(raw)}
        offset[0] += len(raw)
        return entry
    if isinstance(node, _SCALARS):
        return {"t": "value", "v": node}
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"io.save: {where} has a key {k!r}; keys must be str or int")
        return {"t": "dict", "keys": [[type(k).__name__, k] for k in node],
                "values": [_encode(v, f"{path}.{k}".lstrip("."), blobs, offset) for k, v in node.items()]}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"t": "namedtuple", "name": type(node).__name__, "fields": list(node._fields),
                "values": [_encode(v, f"{path}.{f}".lstrip("."), blobs, offset)
                           for f, v in zip(node._fields, node)]}
    if isinstance(node, (list, tuple)):
        return {"t": type(node).__name__,
                "values": [_encode(v, f"{path}.{i}".lstrip("."), blobs, offset) for i, v in enumerate(node)]}
    # Any other registered pytree node (a dataclass optimizer state, say): its leaves by path.
    # It loads back as nested dicts, or as the node type itself through ``like=``.
    pairs = T.flatten_with_paths(node)
    if not (len(pairs) == 1 and pairs[0][1] is node):
        return {"t": "node", "type": type(node).__qualname__, "paths": [p for p, _ in pairs],
                "values": [_encode(v, f"{path}.{p}".lstrip("."), blobs, offset) for p, v in pairs]}
    raise TypeError(f"io.save: {where} is a {type(node).__name__}; checkpoints hold tensors, "
                    f"numbers, strings and None in dicts, lists and tuples")


def save(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` to ``path`` (atomically: a half-written file never replaces a good one).
    Tensors are stored from the CPU, with their dtype and shape; autograd history is dropped."""
    blobs: list[bytes] = []
    header = {"version": _VERSION, "byteorder": sys.byteorder, "tree": _encode(tree, "", blobs, [0])}
    head = json.dumps(header, separators=(",", ":")).encode()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.writelines(blobs)
    os.replace(tmp, path)


# -- load ------------------------------------------------------------------------------------

def _decode(node: Any, data: memoryview, path: str, file: Any) -> Any:
    where = path or "<root>"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(file, f"corrupt header at {where}: {what}")

    if not isinstance(node, dict) or "t" not in node:
        raise bad("not a node")
    kind = node["t"]
    if kind == "tensor":
        dtype = _DTYPES.get(node.get("dtype"))
        shape, off, nbytes = node.get("shape"), node.get("offset"), node.get("nbytes")
        if dtype is None:
            raise bad(f"unknown dtype {node.get('dtype')!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(off, int) and isinstance(nbytes, int) and off >= 0):
            raise bad("malformed tensor entry")
        numel = 1
        for s in shape:
            numel *= s
        if nbytes != numel * dtype.itemsize:
            raise bad(f"{nbytes} bytes cannot hold a {dtype} tensor of shape {shape}")
        if off + nbytes > len(data):
            raise CheckpointError(file, f"truncated: {where} needs bytes {off}..{off + nbytes} of the data "
                                        f"section, which has {len(data)}")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(bytearray(data[off:off + nbytes]), dtype=torch.uint8)
        return raw.view(dtype).reshape(shape)
    if kind == "value":
        v = node.get("v")
        if not isinstance(v, _SCALARS):
            raise bad("malformed value")
        return v
    values = node.get("values")
    if not isinstance(values, list):
        raise bad("malformed container")
    if kind == "dict":
        keys = node.get("keys")
        if not isinstance(keys, list) or len(keys) != len(values):
            raise bad("malformed dict")
        out = {}
        for kv, v in zip(keys, values):
            if not (isinstance(kv, list) and len(kv) == 2 and kv[0] in ("str", "int")):
                raise bad(f"malformed key {kv!r}")
            k = kv[1] if kv[0] == "str" else int(kv[1])
            out[k] = _decode(v, data, f"{path}.{k}".lstrip("."), file)
        return out
    if kind == "namedtuple":
        fields = node.get("fields")
        if not isinstance(fields, list) or len(fields) != len(values) or not isinstance(node.get("name"), str):
            raise bad("malformed namedtuple")
        cls = collections.namedtuple(node["name"], fields)
        return cls(*(_decode(v, data, f"{path}.{f}".lstrip("."), file) for f, v in zip(fields, values)))
    if kind == "node":
        paths = node.get("paths")
        if not (isinstance(paths, list) and len(paths) == len(values) and all(isinstance(p, str) for p in paths)):
            raise bad("malformed node")
        try:
            return nest({p: _decode(v, data, f"{path}.{p}".lstrip("."), file) for p, v in zip(paths, values)})
        except ValueError as e:
            raise bad(str(e)) from None
    if kind in ("list", "tuple"):
        items = [_decode(v, data, f"{path}.{i}".lstrip("."), file) for i, v in enumerate(values)]
        return items if kind == "list" else tuple(items)
    raise bad(f"unknown node type {kind!r}")


def _read_fnnet(path: Any, blob: bytes) -> Any:
    if len(blob) < len(MAGIC) + 8:
        raise CheckpointError(path, "truncated: shorter than the checkpoint preamble")
    (n,) = struct.unpack("<Q", blob[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if start + n > len(blob):
        raise CheckpointError(path, f"truncated: the header claims {n} bytes but the file has "
                                    f"{len(blob) - start} after the preamble")
    try:
        header = json.loads(blob[start:start + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"corrupt header (not JSON: {e})") from None
    if not isinstance(header, dict) or header.get("version") != _VERSION:
        version = header.get("version") if isinstance(header, dict) else header
        raise CheckpointError(path, f"unsupported checkpoint version {version!r}")
    if header.get("byteorder") != sys.byteorder:
        raise CheckpointError(path, f"written on a {header.get('byteorder')}-endian machine; this one is "
                                    f"{sys.byteorder}-endian")
    return _decode(header.get("tree"), memoryview(blob)[start + n:], "", path)


def _read_torch(path: Any) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"a torch.save file that torch.load(weights_only=True) refuses "
                                    f"(only tensors and plain containers are loaded, no code runs): "
                                    f"{first}") from None


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check_like(path: Any, tree: Any, like: Any) -> Any:
    got, want = dict(T.flatten_with_paths(tree)), dict(T.flatten_with_paths(like))
    problems = [f"missing {p!r}" for p in want if p not in got]
    problems += [f"unexpected {p!r}" for p in got if p not in want]
    for p, w in want.items():
        if p not in got:
            continue
        g = got[p]
        if isinstance(w, torch.Tensor) != isinstance(g, torch.Tensor):
            problems.append(f"{p!r} is a {type(g).__name__}, expected a {type(w).__name__}")
        elif isinstance(w, torch.Tensor) and (g.shape != w.shape or g.dtype != w.dtype):
            problems.append(f"{p!r} is {_dt(g)} {list(g.shape)}, expected {_dt(w)} {list(w.shape)}")
    if problems:
        raise CheckpointError(path, "does not fit the like= template:\n  " + "\n  ".join(problems))
    # Rebuild in the template's own containers (its named tuples, its key order).
    return T.map_with_path(lambda p, w: got[p].to(w.device) if isinstance(w, torch.Tensor) else got[p], like)


def load(path: str | os.PathLike, *, device: Any = None, like: Any = None) -> Any:
    """Read a tree written by :func:`save` (or a ``torch.save`` file of tensors).

    ``like=`` is a template tree (e.g. ``model.init(key)``): the loaded tree must have its
    paths, shapes and dtypes, or :class:`CheckpointError` names what differs; the result
    uses the template's containers and puts each tensor on its template leaf's device.
    ``device=`` moves every tensor there (it wins over the template's devices).
    Never executes code from the file.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if blob.startswith(MAGIC):
        tree = _read_fnnet(path, blob)
    elif blob.startswith(b"PK\x03\x04"):
        tree = _read_torch(path)
    else:
        hint = " (it looks like a raw pickle, which fnnet never unpickles)" if blob[:1] == b"\x80" else ""
        raise CheckpointError(path, f"not a checkpoint: it starts with {blob[:8]!r}, not fnnet's "
                                    f"{MAGIC!r} or a torch.save zip{hint}")
    if like is not None:
        tree = _check_like(path, tree, like)
    if device is not None:
        tree = T.map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, tree)
    return tree
