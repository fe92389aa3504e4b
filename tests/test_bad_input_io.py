"""Bad input to fnnet.io and fnnet.interop: hypothesis draws invalid arguments (wrong types,
unsupported leaves and dtypes, headers lying in one field, wrong trees for a module) and each
call must raise a clear error from fnnet's own code (tests/badinput.py), never return silently."""

from __future__ import annotations

import atexit
import json
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import torch
from badinput import expect_clear_error
from hypothesis import assume, given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import io

nn = torch.nn

WRONG_PATHS = st.one_of(st.integers(), st.floats(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                        st.binary(max_size=4).map(bytearray))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)


def tmpdir() -> Path:
    """A fresh empty directory (hypothesis examples cannot share pytest's tmp_path), removed at exit."""
    d = tempfile.mkdtemp(prefix="fnnet-bad-io-")
    atexit.register(shutil.rmtree, d, True)
    return Path(d)


# -- io.save ---------------------------------------------------------------------------------------

@given(WRONG_PATHS)
def test_save_and_load_refuse_a_path_that_is_not_a_path(path):
    expect_clear_error(lambda: io.save(path, {"w": torch.ones(2)}), match="path must be")
    expect_clear_error(lambda: io.load(path), match="path must be")


@given(st.sampled_from(["", ".", "/", "a/..", "nul\0byte"]))
def test_save_and_load_refuse_a_path_that_names_no_file(path):
    expect_clear_error(lambda: io.save(path, {"w": torch.ones(2)}), match="io.save: path")
    expect_clear_error(lambda: io.load(path))


UNSTORABLE = st.sampled_from([
    lambda: (lambda x: x), lambda: object(), lambda: {1, 2}, lambda: b"bytes", lambda: 1 + 2j, lambda: range(3),
    lambda: torch.empty(2, dtype=torch.int4), lambda: torch.empty(3, dtype=torch.uint1),
    lambda: torch.zeros(2, 2).to_sparse(), lambda: torch.zeros(2, device="meta"),
    lambda: torch.zeros(2).as_subclass(type("Sub", (torch.Tensor,), {})),
])
BAD_KEYS = st.one_of(st.tuples(st.integers()), st.floats(), st.none(), st.booleans(), st.frozensets(st.integers()))


@given(make=UNSTORABLE, name=st.text("abc", min_size=1, max_size=3))
def test_save_refuses_a_leaf_it_cannot_store_naming_its_path_and_writes_nothing(make, name):
    d = tmpdir()
    expect_clear_error(lambda: io.save(d / "c", {"ok": torch.ones(2), name: [make()]}), match=rf"{name}\.0")
    assert list(d.iterdir()) == []


@given(key=BAD_KEYS)
def test_save_refuses_a_dict_key_that_is_not_str_or_int(key):
    d = tmpdir()
    expect_clear_error(lambda: io.save(d / "c", {"a": {key: torch.ones(1)}}), match="keys must be str or int")
    assert list(d.iterdir()) == []


@given(depth=st.integers(101, 300))
def test_save_refuses_a_tree_nested_deeper_than_load_reads(depth):
    tree = torch.ones(1)
    for _ in range(depth):
        tree = [tree]
    expect_clear_error(lambda: io.save(tmpdir() / "c", tree), match="nested more than 100 levels")


# -- io.load -----------------------------------------------------------------------------------

@given(st.binary(max_size=200))
def test_load_refuses_random_bytes(blob):
    path = tmpdir() / "c"
    path.write_bytes(blob)
    expect_clear_error(lambda: io.load(path), match=str(path))


def write(path: Path, header: object, data: bytes) -> None:
    """A checkpoint with this header object and a valid CRC (a hostile writer's file)."""
    head = json.dumps(header).encode()
    path.write_bytes(io.MAGIC + struct.pack("<Q", len(head)) + struct.pack("<I", zlib.crc32(data, zlib.crc32(head)))
                     + head + data)


def good_header() -> dict:
    return {"version": 2, "byteorder": sys.byteorder, "tree": {"t": "dict", "keys": [["str", "w"]], "values": [
        {"t": "tensor", "dtype": "float32", "shape": [2, 3], "offset": 0, "nbytes": 24}]}}


DATA = torch.arange(6.0).numpy().tobytes()


def lies(field: str) -> st.SearchStrategy:
    """Values of one header field that no file fnnet writes has, for the file above."""
    anything = JSON
    return {
        "version": anything.filter(lambda v: not (type(v) is int and v == 2)),
        "byteorder": anything.filter(lambda v: v != sys.byteorder),
        "dtype": anything.filter(lambda v: v != "float32" and not (isinstance(v, str) and v in io._DTYPES
                                                                   and io._DTYPES[v].itemsize == 4)),
        "shape": st.one_of(anything.filter(lambda v: not isinstance(v, list)),
                           st.lists(st.integers(-3, 30), max_size=4).filter(lambda s: _numel(s) != 6 or min(s) < 0),
                           st.lists(st.sampled_from([2.0, float("nan"), True, "3", None, [6]]), min_size=1, max_size=3)),
        "offset": st.one_of(anything.filter(lambda v: not (type(v) is int and v == 0)), st.integers(1, 2**70)),
        "nbytes": anything.filter(lambda v: not (type(v) is int and v == 24)),
        "t": anything.filter(lambda v: v != "tensor"),
        "key": anything.filter(lambda v: v != ["str", "w"] and not (isinstance(v, list) and len(v) == 2
                                                                     and v[0] in ("str", "int") and v[1] == "w")),
    }[field]


def _numel(shape: list) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@given(st.data(), st.sampled_from(["version", "byteorder", "dtype", "shape", "offset", "nbytes", "t", "key"]))
def test_load_refuses_a_header_lying_in_any_one_field(data, field):
    value = data.draw(lies(field), label=field)
    header = good_header()
    tensor = header["tree"]["values"][0]
    if field in ("version", "byteorder"):
        header[field] = value
    elif field == "key":
        header["tree"]["keys"][0] = value
        assume(not (isinstance(value, list) and len(value) == 2 and value[0] == "str" and isinstance(value[1], str)))
        assume(not (isinstance(value, list) and len(value) == 2 and value[0] == "int" and type(value[1]) is int))
    else:
        tensor[field] = value
    path = tmpdir() / "c"
    write(path, header, DATA)
    expect_clear_error(lambda: io.load(path), match=r"corrupt|truncated|version|endian|cannot hold|overlap")


@given(st.sampled_from(["nope", "cuda:x", "cpu:-1:2", 3.5, [0], object()]))
def test_load_refuses_a_device_that_is_not_one_before_reading(device):
    expect_clear_error(lambda: io.load(tmpdir() / "missing", device=device), match="device=")


TEMPLATE_CHANGES = {
    "file_has_a_path_the_template_lacks": (lambda t: t.pop("b"), "unexpected 'b'"),
    "template_has_a_path_the_file_lacks": (lambda t: t.update(c=torch.ones(1)), "missing 'c'"),
    "shape": (lambda t: t.update(a=torch.ones(3, 2)), r"'a' is float32 \[2, 3\], expected float32 \[3, 2\]"),
    "dtype": (lambda t: t.update(a=torch.ones(2, 3, dtype=torch.float64)), r"'a' is float32 \[2, 3\], expected float64"),
    "leaf_type": (lambda t: t.update(n="three"), "'n' is a int, expected a str"),
    "tensor_for_number": (lambda t: t.update(n=torch.tensor(3)), "'n' is a int, expected int64"),
    "renamed": (lambda t: t.update(A=t.pop("a")), "missing 'A'"),
    "nested": (lambda t: t.update(b={"b": t["b"]}), "missing 'b.b'"),
}


@given(st.sampled_from(list(TEMPLATE_CHANGES)))
def test_load_like_a_template_of_another_tree_names_the_path(change):
    path = tmpdir() / "c"
    io.save(path, {"a": torch.ones(2, 3), "b": torch.zeros(4), "n": 3})
    template = {"a": torch.empty(2, 3), "b": torch.empty(4), "n": 0}
    mutate, match = TEMPLATE_CHANGES[change]
    mutate(template)
    expect_clear_error(lambda: io.load(path, like=template), match=match)


# -- interop ---------------------------------------------------------------------------------------

@given(st.sampled_from([None, 3, "net", {"weight": torch.ones(1)}, fn.Linear(2, 3)]))
def test_interop_refuses_what_is_not_a_torch_module(thing):
    expect_clear_error(lambda: fn.params_from_module(thing), match="torch.nn.Module")
    expect_clear_error(lambda: fn.state_from_module(thing), match="torch.nn.Module")
    expect_clear_error(lambda: fn.functional(thing), match="torch.nn.Module")
    if thing is not None:  # module=None is the default: no module to check against
        expect_clear_error(lambda: fn.to_state_dict({}, module=thing), match="torch.nn.Module")


def _torch_net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))


NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


@st.composite
def wrong_params(draw):
    """The net's params with one thing wrong: a path dropped, misspelled or added, a leaf of
    another shape or not a tensor. Returns (params, the path the error must name)."""
    flat = fn.interop.flat(fn.params_from_module(_torch_net()))
    kind = draw(st.sampled_from(["drop", "misspell", "extra", "shape", "not_a_tensor"]))
    name = draw(st.sampled_from(NAMES))
    if kind == "drop":
        del flat[name]
    elif kind == "misspell":
        new = name[:-1] + draw(st.sampled_from("xyzQ"))
        flat[new] = flat.pop(name)
    elif kind == "extra":
        name = draw(st.sampled_from(["0.extra", "2.weight", "9.bias", "1.running_mean"]))
        flat[name] = torch.zeros(draw(st.integers(1, 3)))
    elif kind == "shape":
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3).filter(lambda s: s != list(flat[name].shape)))
        flat[name] = torch.zeros(shape)
    else:
        flat[name] = draw(st.sampled_from([1.0, 2, "w", [1.0]]))  # [1.0]: a subtree, at name + ".0"
    return fn.interop.nest(flat), name


@given(wrong_params())
def test_functional_refuses_params_that_do_not_fit_the_module_naming_the_path(case):
    params, name = case
    net = _torch_net()
    apply_fn, _, buffers = fn.functional(net)
    expect_clear_error(lambda: apply_fn(params, buffers, torch.ones(5, 3)), match=rf"'{name}")
    state = fn.state_from_module(net)
    expect_clear_error(lambda: fn.to_state_dict(params, state, module=net), match=rf"'{name}")


@given(st.sampled_from(["running_mean", "running_var", "num_batches_tracked"]),
       st.sampled_from(["drop", "shape", "not_a_tensor"]))
def test_functional_refuses_buffers_missing_an_entry_or_of_another_shape(name, change):
    net = _torch_net()
    apply_fn, params, buffers = fn.functional(net)
    if change == "drop":
        del buffers["1"][name]
    else:
        buffers["1"][name] = torch.zeros(7) if change == "shape" else 0.5
    expect_clear_error(lambda: apply_fn(params, buffers, torch.ones(5, 3)), match=rf"'1\.{name}'")


@given(st.sampled_from([{1: torch.ones(1)}, {("a",): 1}, [("a", 1)], "a.b"]))
def test_nest_refuses_names_that_are_not_dotted_strings(bad):
    expect_clear_error(lambda: fn.interop.nest(bad), match="nest")
