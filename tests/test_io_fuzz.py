"""fnnet.io.load against broken and hostile files: every truncation, every single-bit flip,
random bytes, a header that lies in each field, zip bombs and special files. Each case must
raise CheckpointError (naming the file) within a few seconds, allocate no more than the file
holds, and never give back other numbers than were saved."""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import threading
import zipfile
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch

from fnnet import io
from fnnet.io import CheckpointError

LIMIT_S = 5.0


def run_limited(call, seconds: float = LIMIT_S):
    """``call()`` in a daemon thread: its result or exception, or a test failure if it is still
    running after ``seconds`` (a hang fails the test instead of blocking the run)."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as e:  # handed back to the test
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"still running after {seconds} s: a hang"
    return box


def assert_refused(path, match: str | None = None) -> CheckpointError:
    box = run_limited(lambda: io.load(path))
    err = box.get("error")
    assert isinstance(err, CheckpointError), f"{path}: expected a CheckpointError, got {box!r}"
    assert str(path) in str(err)
    if match is not None:
        assert match in str(err), f"{err} does not say {match!r}"
    return err


@pytest.fixture
def allocations(monkeypatch):
    """The bytes of every ``torch.empty`` io.load asks for (the only way it allocates tensors)."""
    sizes: list[int] = []
    real = torch.empty

    def spy(*shape, dtype=None, **kw):
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size)) else shape
        n = 1
        for d in dims:
            n *= int(d)
        sizes.append(n * (dtype or torch.get_default_dtype()).itemsize)
        return real(*shape, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "empty", spy)
    return sizes


def small_tree():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([True, False]),
            "opt": ({"step": 3, "lr": 0.1}, [torch.zeros(0, 2), torch.tensor(-1.5, dtype=torch.float64)]),
            1: "name"}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.fnnet"
    io.save(path, small_tree())
    return path.read_bytes()


# -- damage to a file fnnet wrote --------------------------------------------------------------

def test_a_truncation_at_every_offset_is_a_checkpoint_error(tmp_path, good, allocations):
    path = tmp_path / "cut.fnnet"
    for n in range(len(good)):
        path.write_bytes(good[:n])
        assert_refused(path)
    assert max(allocations, default=0) <= len(good)


def test_every_single_bit_flip_is_a_checkpoint_error(tmp_path, good, allocations):
    path = tmp_path / "flip.fnnet"
    for i in range(len(good) * 8):
        blob = bytearray(good)
        blob[i // 8] ^= 1 << (i % 8)
        path.write_bytes(bytes(blob))
        assert_refused(path)
    assert max(allocations, default=0) <= len(good)


def test_random_damage_and_random_bytes_are_checkpoint_errors(tmp_path, good, allocations):
    rng = random.Random(0)
    path = tmp_path / "bad.fnnet"
    for case in range(300):
        blob = bytearray(good)
        if case % 3 == 0:  # several flipped bytes
            for _ in range(rng.randint(2, 8)):
                blob[rng.randrange(len(blob))] ^= rng.randint(1, 255)
        elif case % 3 == 1:  # the magic and a plausible header length, then noise
            blob = bytearray(io.MAGIC + struct.pack("<Q", rng.randint(0, 64)) + rng.randbytes(rng.randint(0, 200)))
        else:  # noise
            blob = bytearray(rng.randbytes(rng.randint(0, 300)))
        path.write_bytes(bytes(blob))
        assert_refused(path)
    assert max(allocations, default=0) <= 300


# -- a header that lies, with a valid CRC: the checks behind the CRC -----------------------------

def write(path, tree: dict, data: bytes = b"", *, version=2, byteorder=sys.byteorder, raw_header=None) -> None:
    """A checkpoint with this header and data and a correct CRC, as a hostile writer would make it."""
    head = raw_header if raw_header is not None else json.dumps(
        {"version": version, "byteorder": byteorder, "tree": tree}).encode()
    crc = zlib.crc32(data, zlib.crc32(head))
    path.write_bytes(io.MAGIC + struct.pack("<Q", len(head)) + struct.pack("<I", crc) + head + data)


def tensor(dtype="float32", shape=(2,), offset=0, nbytes=8, **extra):
    return {"t": "tensor", "dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes, **extra}


def one(node):
    return {"t": "dict", "keys": [["str", "w"]], "values": [node]}


class Header:
    """A lie in the header object itself: ``Header(obj)`` is the whole header, ``Header(**fields)``
    the right header with these fields changed or added."""

    def __init__(self, whole=None, **fields):
        self.obj = whole if whole is not None else {
            "version": 2, "byteorder": sys.byteorder, "tree": one(tensor()), **fields}


def nested(depth: int) -> dict:
    node = {"t": "value", "v": 1}
    for _ in range(depth):
        node = {"t": "list", "values": [node]}
    return node


EIGHT = torch.tensor([1.0, 2.0]).numpy().tobytes()
TB = 1 << 40

LIES = {
    # the header's own fields
    "version_missing": (Header({"byteorder": sys.byteorder, "tree": one(tensor())}), "fields version"),
    "version_other": (Header(version=3), "unsupported checkpoint version 3"),
    "version_bool": (Header(version=True), "version True"),
    "version_text": (Header(version="2"), "version '2'"),
    "byteorder_big": (Header(byteorder="big" if sys.byteorder == "little" else "little"), "endian"),
    "extra_field": (Header(exec="import os"), "fields"),
    "not_an_object": (Header([1, 2, 3]), "fields"),
    # a node
    "node_not_an_object": (one(["tensor"]), "not a node"),
    "node_unknown_type": (one({"t": "pickle", "values": []}), "unknown node type 'pickle'"),
    "node_missing_field": (one({"t": "tensor", "dtype": "float32", "shape": [2], "offset": 0}), "fields"),
    "node_extra_field": (one(tensor(code="import os")), "fields"),
    "value_a_list": (one({"t": "value", "v": [1]}), "a value of type list"),
    "values_not_a_list": (one({"t": "list", "values": {"0": 1}}), "list of values"),
    # a tensor's fields
    "dtype_unknown": (one(tensor(dtype="float33")), "unknown dtype 'float33'"),
    "dtype_not_text": (one(tensor(dtype=5)), "unknown dtype 5"),
    "dtype_object": (one(tensor(dtype="object")), "unknown dtype"),
    "dtype_sub_byte": (one(tensor(dtype="int4")), "unknown dtype 'int4'"),
    "shape_negative": (one(tensor(shape=(-2,))), "shape [-2]"),
    "shape_float": (one(tensor(shape=(2.0,))), "shape [2.0]"),
    "shape_bool": (one(tensor(shape=(True, 2))), "shape [True, 2]"),
    "shape_text": (one({**tensor(), "shape": "2"}), "shape '2'"),
    "shape_nested": (one({**tensor(), "shape": [[2]]}), "shape [[2]]"),
    "shape_2_pow_70": (one(tensor(shape=(0, 2**70), nbytes=0)), "[0, 2**63)"),
    "shape_does_not_match_nbytes": (one(tensor(shape=(3,))), "8 bytes cannot hold"),
    "nbytes_too_many": (one(tensor(nbytes=16)), "16 bytes cannot hold"),
    "nbytes_negative": (one(tensor(nbytes=-8)), "non-negative"),
    "offset_negative": (one(tensor(offset=-4)), "non-negative"),
    "offset_float": (one(tensor(offset=0.0)), "non-negative integers"),
    "offset_past_the_end": (one(tensor(offset=4)), "truncated"),
    "offset_huge": (one(tensor(offset=2**80)), "truncated"),
    "a_1_TB_tensor": (one(tensor(shape=(TB // 4,), nbytes=TB)), "truncated"),
    "a_1_TB_zero_size_tensor": (one(tensor(shape=(0, TB), nbytes=0)), None),  # valid: 0 bytes, 0 allocated
    # byte ranges
    "two_tensors_one_range": ({"t": "list", "values": [tensor(), tensor()]}, "overlaps"),
    "ranges_overlap": ({"t": "list", "values": [tensor(shape=(2,)), tensor(shape=(1,), offset=4, nbytes=4)]},
                       "overlaps"),
    "a_gap": ({"t": "list", "values": [tensor(shape=(1,), offset=4, nbytes=4)]}, "belong to no tensor"),
    "trailing_bytes": (one(tensor(shape=(1,), nbytes=4)), "cover 4 bytes of a 8-byte"),
    "bool_not_0_or_1": (one(tensor(dtype="bool", shape=(8,))), "bytes other than 0 and 1"),
    # dict keys, named tuples, nodes
    "key_int_not_int": ({"t": "dict", "keys": [["int", "abc"]], "values": [tensor()]}, "malformed key"),
    "key_int_float": ({"t": "dict", "keys": [["int", 1.5]], "values": [tensor()]}, "malformed key"),
    "key_int_bool": ({"t": "dict", "keys": [["int", True]], "values": [tensor()]}, "malformed key"),
    "key_unknown_kind": ({"t": "dict", "keys": [["tuple", [1, 2]]], "values": [tensor()]}, "malformed key"),
    "key_bare": ({"t": "dict", "keys": ["w"], "values": [tensor()]}, "malformed key"),
    "keys_fewer_than_values": ({"t": "dict", "keys": [], "values": [tensor()]}, "as long as"),
    "keys_repeat": ({"t": "dict", "keys": [["str", "w"], ["str", "w"]],
                     "values": [tensor(shape=(1,), nbytes=4), tensor(shape=(1,), offset=4, nbytes=4)]}, "repeat 'w'"),
    "namedtuple_bad_name": ({"t": "namedtuple", "name": "1 x", "fields": ["a"], "values": [tensor()]},
                            "named tuple"),
    "namedtuple_keyword_field": ({"t": "namedtuple", "name": "S", "fields": ["class"], "values": [tensor()]},
                                 "named tuple"),
    "namedtuple_fields_repeat": ({"t": "namedtuple", "name": "S", "fields": ["a", "a"],
                                  "values": [tensor(shape=(1,), nbytes=4), tensor(shape=(1,), offset=4, nbytes=4)]},
                                 "repeat 'a'"),
    "namedtuple_name_not_text": ({"t": "namedtuple", "name": 3, "fields": ["a"], "values": [tensor()]},
                                 "named tuple"),
    "node_paths_repeat": ({"t": "node", "type": "X", "paths": ["a", "a"],
                           "values": [tensor(shape=(1,), nbytes=4), tensor(shape=(1,), offset=4, nbytes=4)]},
                          "repeat 'a'"),
    "node_path_a_leaf_and_a_prefix": ({"t": "node", "type": "X", "paths": ["a", "a.b"],
                                       "values": [tensor(shape=(1,), nbytes=4),
                                                  tensor(shape=(1,), offset=4, nbytes=4)]}, "both a leaf"),
    "node_path_not_text": ({"t": "node", "type": "X", "paths": [0], "values": [tensor()]}, "not a string"),
    # the JSON itself
    "duplicate_json_keys": (b'{"version":2,"version":2,"byteorder":"%s","tree":{"t":"value","v":1}}', "duplicate key"),
    "not_utf8": (b'{"version":2,"byteorder":"\xff\xfe","tree":{"t":"value","v":1}}', "not JSON"),
    "json_nested_100000_deep": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    "tree_nested_too_deep": (nested(150), "levels deep"),
    "integer_of_5000_digits": (b'{"version":2,"byteorder":"little","tree":{"t":"value","v":' + b"9" * 5000 + b"}}",
                               "not JSON"),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_header_that_lies_in_any_field_is_a_checkpoint_error_before_any_allocation(tmp_path, allocations, case):
    lie, match = LIES[case]
    path = tmp_path / f"{case}.fnnet"
    data = {"bool_not_0_or_1": b"\x02" * 8, "a_1_TB_zero_size_tensor": b""}.get(case, EIGHT)
    if isinstance(lie, bytes):  # raw header bytes
        write(path, {}, data, raw_header=lie.replace(b"%s", sys.byteorder.encode()))
    elif isinstance(lie, Header):
        write(path, {}, data, raw_header=json.dumps(lie.obj).encode())
    else:  # a tree node
        write(path, lie, data)
    if match is None:  # a lie that is harmless: it loads, and allocates nothing
        box = run_limited(lambda: io.load(path))
        assert "value" in box, box
        assert box["value"]["w"].shape == (0, TB) and max(allocations) == 0
        return
    assert_refused(path, match)
    assert max(allocations, default=0) <= path.stat().st_size


def test_a_version_1_file_with_a_lying_header_is_refused_too(tmp_path):
    head = json.dumps({"version": 1, "byteorder": sys.byteorder, "tree": one(tensor(shape=(9,)))}).encode()
    (tmp_path / "v1").write_bytes(b"FNNETCK1" + struct.pack("<Q", len(head)) + head + EIGHT)
    assert_refused(tmp_path / "v1", "cannot hold")
    head = json.dumps({"version": 2, "byteorder": sys.byteorder, "tree": one(tensor())}).encode()
    (tmp_path / "v1v2").write_bytes(b"FNNETCK1" + struct.pack("<Q", len(head)) + head + EIGHT)
    assert_refused(tmp_path / "v1v2", "unsupported checkpoint version 2")


# -- torch.save zips ---------------------------------------------------------------------------

@pytest.fixture
def torch_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, -2])}, path)
    return path


def rezip(src, dst, mutate=lambda name, data: data, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, mutate(info.filename, zin.read(info.filename)))


def test_a_torch_zip_truncated_at_every_offset_is_a_checkpoint_error(tmp_path, torch_file):
    blob = torch_file.read_bytes()
    path = tmp_path / "cut.pt"
    for n in range(len(blob)):
        path.write_bytes(blob[:n])
        assert_refused(path)


def test_a_damaged_torch_zip_is_an_error_or_the_same_numbers_never_others(tmp_path, torch_file):
    blob, rng = torch_file.read_bytes(), random.Random(1)
    expected = torch.load(torch_file, weights_only=True)
    path, refused = tmp_path / "flip.pt", 0
    for _ in range(300):
        damaged = bytearray(blob)
        damaged[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        box = run_limited(lambda: io.load(path))
        if "error" in box:
            assert isinstance(box["error"], CheckpointError), box
            refused += 1
        else:  # the flip hit a byte no reader looks at (a timestamp, padding)
            assert same(box["value"], expected), "a damaged torch.save file loaded as other numbers"
    assert refused > 100


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path, torch_file, monkeypatch):
    bomb = tmp_path / "bomb.pt"
    rezip(torch_file, bomb, lambda n, d: d + b"\0" * (4 << 20) if n.endswith("byteorder") else d,
          compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 64 << 10  # 4 MiB of zeros deflate to a few KiB
    monkeypatch.setattr(io, "ZIP_INFLATE_CAP", 1 << 20)
    assert_refused(bomb, "over the cap")


def test_a_deflated_torch_zip_under_the_cap_loads(tmp_path, torch_file):
    rezip(torch_file, tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    assert same(io.load(tmp_path / "deflated.pt"), torch.load(torch_file, weights_only=True))


def test_a_torch_zip_whose_pickle_claims_a_400_GB_storage_is_refused(tmp_path, torch_file):
    lie = (400 << 30).to_bytes(6, "little")

    def grow(name, data):  # the storage's numel (BININT1 6) becomes a LONG1 of 400 GiB
        return data.replace(b"K\x06t", b"\x8a\x06" + lie + b"t", 1) if name.endswith("data.pkl") else data

    rezip(torch_file, tmp_path / "huge.pt", grow)
    assert_refused(tmp_path / "huge.pt", "weights_only")


def test_a_zip_with_two_entries_of_one_name_is_refused(tmp_path, torch_file):
    with zipfile.ZipFile(torch_file) as zin, zipfile.ZipFile(tmp_path / "dup.pt", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr(zin.infolist()[0].filename, b"\x80\x02}q\x00.")
    assert_refused(tmp_path / "dup.pt", "two entries named")


# -- files that are not regular files -------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")
@pytest.mark.parametrize("kind", ["dev_zero", "dev_null", "fifo", "directory", "symlink_to_dev_zero",
                                  "symlink_to_fifo", "dangling_symlink", "dev_stdin"])
def test_special_files_are_refused_at_once_never_read(tmp_path, kind):
    path = {"dev_zero": "/dev/zero", "dev_null": "/dev/null", "dev_stdin": "/dev/stdin"}.get(kind, tmp_path / kind)
    if kind == "fifo" or kind == "symlink_to_fifo":
        os.mkfifo(tmp_path / "fifo")  # no writer: opening it for reading would block
    if kind == "directory":
        path.mkdir()
    if kind.startswith("symlink") or kind == "dangling_symlink":
        target = {"symlink_to_dev_zero": "/dev/zero", "symlink_to_fifo": tmp_path / "fifo"}.get(kind, tmp_path / "nope")
        os.symlink(target, path)
    if kind == "dev_stdin" and os.path.isfile("/dev/stdin"):
        pytest.skip("stdin is a regular file here")
    box = run_limited(lambda: io.load(path), seconds=2.0)
    assert isinstance(box.get("error"), CheckpointError), box
    expected = {"directory": "a directory", "dangling_symlink": "cannot be read"}.get(
        kind, "regular files only")
    assert expected in str(box["error"])


# -- arbitrary headers: a clear error or a tree, nothing else -------------------------------------

SCALAR = st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False) | st.text("ab.1", max_size=3)
FIELD_VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3), max_leaves=5)


def node_like(children):
    """Dicts shaped like header nodes: a known or unknown kind, known and random fields."""
    kinds = st.sampled_from(["tensor", "value", "dict", "namedtuple", "list", "tuple", "node", "?"])
    fields = st.fixed_dictionaries({"t": kinds}, optional={
        "values": st.lists(children, max_size=3), "keys": st.lists(st.lists(SCALAR, max_size=2), max_size=3),
        "fields": st.lists(st.text("ab_", max_size=2), max_size=3), "paths": st.lists(st.text("a.b", max_size=3), max_size=3),
        "name": st.text("Ab_1", max_size=3), "type": st.text(max_size=2), "v": FIELD_VALUE,
        "dtype": st.sampled_from(["float32", "bool", "int64", "int4", 3]), "shape": FIELD_VALUE,
        "offset": FIELD_VALUE, "nbytes": FIELD_VALUE, "extra": SCALAR})
    return fields


HEADERS = st.recursive(node_like(SCALAR), node_like, max_leaves=12)


@given(tree=HEADERS, data=st.binary(max_size=24))
def test_an_arbitrary_header_gives_a_checkpoint_error_or_a_tree_never_another_error(tmp_path_factory, tree, data):
    path = tmp_path_factory.mktemp("h") / "c.fnnet"
    write(path, tree, data)
    box = run_limited(lambda: io.load(path))
    assert "value" in box or isinstance(box["error"], CheckpointError), box
