"""Save and load pytrees of tensors (params, optimizer states, step counters) safely.

    fn.io.save("ckpt.fnnet", {"params": params, "opt": opt_state, "step": 100})
    ckpt = fn.io.load("ckpt.fnnet", like=template)     # checks paths, shapes and dtypes

The format is fnnet's own and executes nothing when read::

    MAGIC (8 bytes) | header length n (<Q) | CRC-32 of header and data (<I) | header (n bytes of JSON) | data

The JSON header describes the tree (dicts, lists, tuples, named tuples; tensor leaves and
plain ``int``/``float``/``bool``/``str``/``None`` leaves; other registered pytree nodes by the
paths of their leaves); the data section holds the raw bytes of the tensors, one after the
other, in the order of the tree. Files of the first version (magic ``FNNETCK1``, no CRC) are
still read. A ``torch.save`` file (zip) is also read, through
``torch.load(weights_only=True)``, so PyTorch state dicts load too.

A file is untrusted input: :func:`load` reads only regular files (a FIFO, a device or a
directory is refused before anything is read), never reads past the file's size, checks the
header field by field and the tensors' byte ranges (they must tile the data section: no
overlap, no gap, nothing out of range) before allocating anything, and checks the CRC, so a
truncated, bit-flipped, lying or hostile file raises :class:`CheckpointError` rather than
hanging, allocating terabytes or giving silently wrong numbers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import stat
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import torch

from . import tree as T
from .interop import nest

__all__ = ["MAGIC", "ZIP_INFLATE_CAP", "CheckpointError", "load", "save"]

MAGIC = b"FNNETCK2"
_MAGIC_V1 = b"FNNETCK1"  # the first version: no CRC in the preamble
_VERSION = 2
_PREAMBLE = {_MAGIC_V1: (1, 16), MAGIC: (2, 20)}  # magic -> (header version, preamble bytes)
_MAX_DEPTH = 100  # tree levels a checkpoint may nest; deeper is refused by save and load alike

#: Bytes that the compressed entries of a ``torch.save`` zip may inflate to, in all. ``torch.save``
#: stores its entries uncompressed, so only a re-packed (or hostile, zip-bomb) file meets it.
ZIP_INFLATE_CAP = 1 << 30

# Every dtype whose elements are whole bytes: raw bytes round-trip them exactly. (The newer
# ones are taken where the installed torch has them.)
_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
    "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2") if isinstance(getattr(torch, name, None), torch.dtype)}
_SCALARS = (bool, int, float, str, type(None))

# The fields of each kind of header node, exactly (a missing or unknown field is corruption).
_FIELDS = {"tensor": {"t", "dtype", "shape", "offset", "nbytes"}, "value": {"t", "v"},
           "dict": {"t", "keys", "values"}, "namedtuple": {"t", "name", "fields", "values"},
           "list": {"t", "values"}, "tuple": {"t", "values"}, "node": {"t", "type", "paths", "values"}}


class CheckpointError(ValueError):
    """A file is not a checkpoint fnnet can read, or does not fit the ``like=`` template."""

    def __init__(self, path: Any, what: str):
        super().__init__(f"{path}: {what}")
        self.path, self.what = path, what


# -- save ------------------------------------------------------------------------------------

def _check_tensor(node: torch.Tensor, where: str) -> None:
    """Refuse, before anything is written, a tensor whose bytes the format cannot hold."""
    if type(node) not in (torch.Tensor, torch.nn.Parameter):
        raise TypeError(f"io.save: {where} is a {type(node).__name__} (a tensor subclass); save its "
                        f"plain data, e.g. x.as_subclass(torch.Tensor), if that is what it holds")
    if node.layout != torch.strided or node.is_nested:
        raise TypeError(f"io.save: {where} has layout {node.layout}; fnnet checkpoints store dense "
                        f"tensors (call .to_dense() first)")
    if node.dtype not in _DTYPES.values():
        raise TypeError(f"io.save: {where} has dtype {node.dtype}, which fnnet checkpoints do not store "
                        f"(they store {', '.join(_DTYPES)})")
    if node.is_meta:
        raise TypeError(f"io.save: {where} is a meta tensor: it has no data to save")


def _tensor_bytes(t: torch.Tensor) -> Any:
    """The tensor's elements in row-major order, as a flat CPU uint8 array (numpy, for the
    buffer protocol). Conjugate and negative views are resolved first (their stored bits are
    not their values), and any view is copied into a dense row-major layout."""
    t = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8).numpy()
    # contiguous() keeps the strides of size-1 dims (a one-element view of stride 5 is
    # contiguous), which view(uint8) refuses: restride the same elements as a flat vector.
    flat = t.as_strided((t.numel(),), (1,), t.storage_offset())
    return flat.view(torch.uint8).numpy()


def _encode(node: Any, path: str, tensors: list, offset: list, depth: int = 0) -> dict:
    where = path or "<root>"
    if depth > _MAX_DEPTH:
        raise ValueError(f"io.save: {where} is nested more than {_MAX_DEPTH} levels deep")

    def child(v: Any, name: Any) -> dict:
        return _encode(v, f"{path}.{name}".lstrip("."), tensors, offset, depth + 1)

    if isinstance(node, torch.Tensor):
        _check_tensor(node, where)
        nbytes = node.numel() * node.dtype.itemsize
        tensors.append((where, node, nbytes))
        entry = {"t": "tensor", "dtype": str(node.dtype).removeprefix("torch."), "shape": list(node.shape),
                 "offset": offset[0], "nbytes": nbytes}
        offset[0] += nbytes
        return entry
    if isinstance(node, _SCALARS):
        return {"t": "value", "v": node}
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"io.save: {where} has a key {k!r}; keys must be str or int")
        return {"t": "dict", "keys": [["int" if isinstance(k, int) else "str", k] for k in node],
                "values": [child(v, k) for k, v in node.items()]}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"t": "namedtuple", "name": type(node).__name__, "fields": list(node._fields),
                "values": [child(v, f) for f, v in zip(node._fields, node)]}
    if isinstance(node, (list, tuple)):  # subclasses (torch.Size) come back as the plain type
        return {"t": "list" if isinstance(node, list) else "tuple",
                "values": [child(v, i) for i, v in enumerate(node)]}
    # Any other registered pytree node (a dataclass optimizer state, say): its leaves by path.
    # It loads back as nested dicts, or as the node type itself through ``like=``.
    pairs = T.flatten_with_paths(node)
    if not (len(pairs) == 1 and pairs[0][1] is node):
        return {"t": "node", "type": type(node).__qualname__, "paths": [p for p, _ in pairs],
                "values": [child(v, p) for p, v in pairs]}
    raise TypeError(f"io.save: {where} is a {type(node).__name__}; checkpoints hold tensors, "
                    f"numbers, strings and None in dicts, lists and tuples")


def save(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` to ``path``, atomically: the file is written under a temporary name in
    the same directory and renamed over ``path`` only when complete, so a failed save (an
    unsupported leaf, a full disk) leaves the old file as it was and no temporary file behind.
    Tensors are stored from the CPU, with their dtype, shape and values (conjugate and negative
    views resolved, any strides); autograd history is dropped."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"io.save: path must be a str or os.PathLike, got {type(path).__name__}")
    tensors: list[tuple[str, torch.Tensor, int]] = []
    header = {"version": _VERSION, "byteorder": sys.byteorder, "tree": _encode(tree, "", tensors, [0])}
    try:
        head = json.dumps(header, separators=(",", ":")).encode()
    except ValueError as e:  # an int too long for JSON, say
        raise ValueError(f"io.save: the tree cannot be written: {e}") from None
    path = Path(path)
    if path.name in ("", ".", "..") or "\0" in str(path) or path.is_dir():
        raise ValueError(f"io.save: path {str(path)!r} names no file (a directory, or a NUL in it)")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + b"\0\0\0\0")  # CRC filled in below
            f.write(head)
            crc = zlib.crc32(head)
            for where, t, nbytes in tensors:
                raw = _tensor_bytes(t)
                if raw.nbytes != nbytes:
                    raise RuntimeError(f"io.save: {where} changed size while being saved")
                f.write(raw.data)
                crc = zlib.crc32(raw, crc)
            f.seek(len(MAGIC) + 8)
            f.write(struct.pack("<I", crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- load: the file ----------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: Any) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading if it is a regular file (after symlinks); its size.
    Special files are refused from ``stat`` alone, before ``open`` (opening a FIFO blocks until a
    writer comes; reading ``/dev/zero`` never ends); the opened file is checked again with
    ``fstat``, non-blocking, in case the path was swapped in between."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise CheckpointError(path, f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, f"is {_kind(st.st_mode)}; checkpoints are read from regular files only")
    return os.fdopen(fd, "rb"), st.st_size


def _read_exact(f: BinaryIO, n: int, path: Any) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(path, "truncated: the file shrank while it was read")
    return data


def _read_into(f: BinaryIO, buf: memoryview, path: Any) -> None:
    while len(buf):
        got = f.readinto(buf)
        if not got:
            raise CheckpointError(path, "truncated: the file shrank while it was read")
        buf = buf[got:]


# -- load: fnnet's format ----------------------------------------------------------------------

class _Slot:
    """A tensor leaf of the header, before its bytes are read (a placeholder in the tree)."""

    __slots__ = ("dtype", "index", "nbytes", "offset", "shape", "where")

    def __init__(self, index: int, where: str, dtype: torch.dtype, shape: list, offset: int, nbytes: int):
        self.index, self.where, self.dtype, self.shape, self.offset, self.nbytes = (
            index, where, dtype, shape, offset, nbytes)


def _is_int(x: Any) -> bool:
    return type(x) is int  # not bool, not float


class _Decoder:
    """Checks a parsed header node by node and builds the tree, with a :class:`_Slot` per tensor."""

    def __init__(self, file: Any, data_size: int):
        self.file, self.data_size, self.slots = file, data_size, []

    def bad(self, where: str, what: str) -> CheckpointError:
        return CheckpointError(self.file, f"corrupt header at {where}: {what}")

    def decode(self, node: Any, path: str = "", depth: int = 0) -> Any:
        where = path or "<root>"
        if depth > _MAX_DEPTH:
            raise self.bad(where, f"nested more than {_MAX_DEPTH} levels deep")
        if not isinstance(node, dict):
            raise self.bad(where, "not a node")
        if not isinstance(node.get("t"), str) or node["t"] not in _FIELDS:
            raise self.bad(where, f"unknown node type {node.get('t')!r}")
        kind = node["t"]
        if set(node) != _FIELDS[kind]:
            raise self.bad(where, f"a {kind} entry has fields {sorted(node)}, expected {sorted(_FIELDS[kind])}")
        if kind == "tensor":
            return self.tensor(node, where)
        if kind == "value":
            if not isinstance(node["v"], _SCALARS):
                raise self.bad(where, f"a value of type {type(node['v']).__name__}")
            return node["v"]
        values = node["values"]
        if not isinstance(values, list):
            raise self.bad(where, "a container without a list of values")

        def items(names: list) -> list:
            return [self.decode(v, f"{path}.{k}".lstrip("."), depth + 1) for k, v in zip(names, values)]

        if kind in ("list", "tuple"):
            out = items(list(range(len(values))))
            return out if kind == "list" else tuple(out)
        if kind == "dict":
            keys = self.names(node["keys"], values, where, "keys", self.key)
            return dict(zip(keys, items(keys)))
        if kind == "namedtuple":
            fields = self.names(node["fields"], values, where, "fields", self.str_name)
            try:
                cls = collections.namedtuple(node["name"], fields)
            except (TypeError, ValueError) as e:
                raise self.bad(where, f"a named tuple {node['name']!r} with fields {fields}: {e}") from None
            return cls(*items(fields))
        paths = self.names(node["paths"], values, where, "paths", self.str_name)  # kind == "node"
        try:
            return nest(dict(zip(paths, items(paths))))
        except ValueError as e:
            raise self.bad(where, str(e)) from None

    def names(self, names: Any, values: list, where: str, what: str, check: Any) -> list:
        """The keys/fields/paths of a container: a list as long as its values, each valid, no two equal."""
        if not isinstance(names, list) or len(names) != len(values):
            raise self.bad(where, f"{what} are not a list as long as the values ({len(values)})")
        out = [check(n, where) for n in names]
        if len(set(out)) != len(out):
            dup = next(n for n in out if out.count(n) > 1)
            raise self.bad(where, f"the {what} repeat {dup!r}")
        return out

    def key(self, kv: Any, where: str) -> Any:
        if isinstance(kv, list) and len(kv) == 2 and ((kv[0] == "str" and isinstance(kv[1], str))
                                                      or (kv[0] == "int" and _is_int(kv[1]))):
            return kv[1]
        raise self.bad(where, f"malformed key {kv!r} (expected ['str', text] or ['int', integer])")

    def str_name(self, name: Any, where: str) -> str:
        if not isinstance(name, str):
            raise self.bad(where, f"a name {name!r} that is not a string")
        return name

    def tensor(self, node: dict, where: str) -> _Slot:
        dtype = _DTYPES.get(node["dtype"]) if isinstance(node["dtype"], str) else None
        shape, off, nbytes = node["shape"], node["offset"], node["nbytes"]
        if dtype is None:
            raise self.bad(where, f"unknown dtype {node['dtype']!r}")
        if not (isinstance(shape, list) and all(_is_int(s) and 0 <= s < 2**63 for s in shape)):
            raise self.bad(where, f"shape {shape!r} is not a list of sizes in [0, 2**63)")
        if not (_is_int(off) and _is_int(nbytes) and off >= 0 and nbytes >= 0):
            raise self.bad(where, f"offset {off!r} and nbytes {nbytes!r} are not non-negative integers")
        numel = 1
        for s in shape:
            numel *= s
        if nbytes != numel * dtype.itemsize:
            raise self.bad(where, f"{nbytes} bytes cannot hold a {dtype} tensor of shape {shape}")
        if off + nbytes > self.data_size:  # checked before anything is allocated
            raise CheckpointError(self.file, f"truncated: {where} needs bytes {off}..{off + nbytes} of the data "
                                             f"section, which has {self.data_size}")
        slot = _Slot(len(self.slots), where, dtype, shape, off, nbytes)
        self.slots.append(slot)
        return slot


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r} in a JSON object")
    return dict(pairs)


def _check_layout(slots: list[_Slot], data_size: int, file: Any) -> list[_Slot]:
    """The tensors' byte ranges must tile the data section: sorted by offset, each starts where
    the previous ends, the last ends at the end of the file. So no two tensors share bytes
    (their total can never exceed the file's size) and no byte is unaccounted for."""
    ranged = sorted((s for s in slots if s.nbytes), key=lambda s: s.offset)
    end = 0
    for s in ranged:
        if s.offset < end:
            raise CheckpointError(file, f"corrupt header: {s.where} (bytes {s.offset}..{s.offset + s.nbytes}) "
                                        f"overlaps the tensor before it, which ends at byte {end}")
        if s.offset > end:
            raise CheckpointError(file, f"corrupt header: bytes {end}..{s.offset} of the data section belong "
                                        f"to no tensor")
        end += s.nbytes
    if end != data_size:
        raise CheckpointError(file, f"corrupt header: the tensors cover {end} bytes of a {data_size}-byte "
                                    f"data section")
    return ranged


def _fill(node: Any, tensors: list) -> Any:
    """The decoded tree with each :class:`_Slot` replaced by its tensor."""
    if isinstance(node, _Slot):
        return tensors[node.index]
    if isinstance(node, dict):
        return {k: _fill(v, tensors) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_fill(v, tensors) for v in node))
    if isinstance(node, (list, tuple)):
        return type(node)(_fill(v, tensors) for v in node)
    return node


def _read_fnnet(f: BinaryIO, size: int, path: Any, magic: bytes) -> Any:
    version, preamble = _PREAMBLE[magic]
    if size < preamble:
        raise CheckpointError(path, "truncated: shorter than the checkpoint preamble")
    pre = _read_exact(f, preamble - len(magic), path)
    (n,) = struct.unpack("<Q", pre[:8])
    if n > size - preamble:
        raise CheckpointError(path, f"truncated: the header claims {n} bytes but the file has "
                                    f"{size - preamble} after the preamble")
    head = _read_exact(f, n, path)
    try:
        header = json.loads(head.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, duplicate keys, nested too deep
        raise CheckpointError(path, f"corrupt header (not JSON fnnet wrote: {type(e).__name__}: "
                                    f"{str(e)[:200]})") from None
    if not isinstance(header, dict) or set(header) != {"version", "byteorder", "tree"}:
        raise CheckpointError(path, "corrupt header: expected the fields version, byteorder and tree")
    if not _is_int(header["version"]) or header["version"] != version:
        raise CheckpointError(path, f"unsupported checkpoint version {header['version']!r} "
                                    f"(a {magic.decode()} file is version {version})")
    if header["byteorder"] != sys.byteorder:
        raise CheckpointError(path, f"written on a {header['byteorder']!r}-endian machine; this one is "
                                    f"{sys.byteorder}-endian")
    data_size = size - preamble - n
    decoder = _Decoder(path, data_size)
    skeleton = decoder.decode(header["tree"])
    tensors: list = [None] * len(decoder.slots)
    crc = zlib.crc32(head)
    for s in _check_layout(decoder.slots, data_size, path):  # file order: one sequential read
        raw = torch.empty(s.nbytes, dtype=torch.uint8)
        _read_into(f, memoryview(raw.numpy()), path)
        crc = zlib.crc32(raw.numpy(), crc)
        if s.dtype == torch.bool and bool((raw > 1).any()):
            raise CheckpointError(path, f"corrupt data: {s.where} is bool but holds bytes other than 0 and 1")
        try:
            tensors[s.index] = raw.view(s.dtype).reshape(s.shape)
        except RuntimeError as e:
            raise CheckpointError(path, f"corrupt header at {s.where}: shape {s.shape}: {e}") from None
    if version >= 2 and crc != struct.unpack("<I", pre[8:12])[0]:
        raise CheckpointError(path, "corrupt: the CRC-32 of the header and data does not match the one "
                                    "saved (the file was damaged after it was written)")
    for s in decoder.slots:
        if s.nbytes == 0:
            try:
                tensors[s.index] = torch.empty(s.shape, dtype=s.dtype)
            except RuntimeError as e:
                raise CheckpointError(path, f"corrupt header at {s.where}: shape {s.shape}: {e}") from None
    return _fill(skeleton, tensors)


# -- load: torch.save zips -----------------------------------------------------------------------

def _check_zip(f: BinaryIO, size: int, path: Any) -> None:
    """Before torch reads a zip, check it: every entry inside the file, no name twice, stored
    entries as large as they say, compressed ones inflating to at most :data:`ZIP_INFLATE_CAP`
    bytes in all (torch allocates what an entry declares), and each entry's CRC-32 (torch does
    not check them: a damaged tensor would load as other numbers). An entry whose CRC is 0 is
    taken as unchecked (``torch.save`` writes 0 when its ``compute_crc32`` is off)."""
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise CheckpointError(path, f"a zip with two entries named "
                                        f"{next(n for n in names if names.count(n) > 1)!r}")
        inflated = 0
        for i in infos:
            if i.header_offset + i.compress_size > size:
                raise CheckpointError(path, f"truncated: zip entry {i.filename!r} ends past the end of the file")
            if i.compress_type == zipfile.ZIP_STORED and i.file_size != i.compress_size:
                raise CheckpointError(path, f"corrupt zip: stored entry {i.filename!r} claims {i.file_size} "
                                            f"bytes but holds {i.compress_size}")
            if i.compress_type != zipfile.ZIP_STORED:
                inflated += i.file_size
        if inflated > ZIP_INFLATE_CAP:
            raise CheckpointError(path, f"a zip whose compressed entries inflate to {inflated} bytes, over the "
                                        f"cap of {ZIP_INFLATE_CAP} (fnnet.io.ZIP_INFLATE_CAP; torch.save "
                                        f"itself never compresses)")
        for i in infos:
            if i.CRC:
                with zf.open(i) as member:  # raises BadZipFile at the end on a CRC mismatch
                    while member.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError,
            RuntimeError, struct.error, zlib.error) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(path, f"a corrupt zip (torch.save) file: {type(e).__name__}: {e}") from None


def _read_torch(f: BinaryIO, size: int, path: Any) -> Any:
    _check_zip(f, size, path)
    f.seek(0)
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever torch's reader refuses in an untrusted file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"a torch.save file that torch.load(weights_only=True) refuses "
                                    f"(only tensors and plain containers are loaded, no code runs): "
                                    f"{first[:300]}") from None


# -- load ----------------------------------------------------------------------------------------

def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}"
    return f"a {type(x).__name__}"


def _paths(tree: Any, path: Any, what: str) -> dict:
    pairs = T.flatten_with_paths(tree)
    out = dict(pairs)
    if len(out) != len(pairs):  # {"1": a, 1: b}: two leaves, one dotted path
        dup = next(p for p, _ in pairs if [q for q, _ in pairs].count(p) > 1)
        raise CheckpointError(path, f"{what} has two leaves at the path {dup!r}, so it cannot be matched by path")
    return out


def _check_like(path: Any, tree: Any, like: Any) -> Any:
    """Pair the loaded leaves with the template's BY PATH; every difference (missing, unexpected,
    another shape, dtype or type) is listed, the first in the template's order first."""
    got, want = _paths(tree, path, "the file"), _paths(like, path, "the like= template")
    problems = []
    for p, w in want.items():
        if p not in got:
            problems.append(f"missing {p!r}")
            continue
        g = got[p]
        if isinstance(w, torch.Tensor) != isinstance(g, torch.Tensor) or (
                not isinstance(w, torch.Tensor) and type(g) is not type(w)):
            problems.append(f"{p!r} is {_describe(g)}, expected {_describe(w)}")
        elif isinstance(w, torch.Tensor) and (g.shape != w.shape or g.dtype != w.dtype):
            problems.append(f"{p!r} is {_describe(g)}, expected {_describe(w)}")
    problems += [f"unexpected {p!r}" for p in got if p not in want]
    if problems:
        raise CheckpointError(path, "does not fit the like= template:\n  " + "\n  ".join(problems))
    # Rebuild in the template's own containers (its named tuples, its key order), each tensor on
    # its template leaf's device; a meta template (shapes only) leaves the data where it is.
    def place(p: str, w: Any) -> Any:
        if isinstance(w, torch.Tensor) and not w.is_meta:
            return got[p].to(w.device)
        return got[p]

    return T.map_with_path(place, like)


def load(path: str | os.PathLike, *, device: Any = None, like: Any = None) -> Any:
    """Read a tree written by :func:`save` (or a ``torch.save`` file of tensors).

    ``like=`` is a template tree (e.g. ``model.init(key)``): the loaded tree is matched to it
    by path and must have its paths, shapes, dtypes and leaf types, or :class:`CheckpointError`
    names each path that differs; the result uses the template's containers and puts each
    tensor on its template leaf's device (a template on the meta device, shapes only, leaves
    the tensors on the CPU). ``device=`` moves every tensor there (it wins over
    the template's devices). Never executes code from the file, never reads anything but a
    regular file, never allocates more than the file holds (plus
    :data:`ZIP_INFLATE_CAP` for a compressed zip).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"io.load: path must be a str or os.PathLike, got {type(path).__name__}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise ValueError(f"io.load: device={device!r} is not a device: {e}") from None
    f, size = _open_regular(path)
    with f:
        start = f.read(len(MAGIC))
        if start in _PREAMBLE:
            tree = _read_fnnet(f, size, path, start)
        elif start.startswith(b"PK\x03\x04"):
            tree = _read_torch(f, size, path)
        else:
            hint = " (it looks like a raw pickle, which fnnet never unpickles)" if start[:1] == b"\x80" else ""
            raise CheckpointError(path, f"not a checkpoint: it starts with {start!r}, not fnnet's "
                                        f"{MAGIC!r} or a torch.save zip{hint}")
    if like is not None:
        tree = _check_like(path, tree, like)
    if device is not None:
        tree = T.map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, tree)
    return tree
