"""fnnet.io: checkpoints of params and optimizer states round-trip exactly, and reading a file
never runs code from it: anything that is not a checkpoint is a clear CheckpointError."""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle

import pytest
import torch

import fnnet as fn
from fnnet import io, tree
from fnnet.io import CheckpointError

AdamState = collections.namedtuple("AdamState", ["step", "mu", "nu"])


def checkpoint_tree():
    model = fn.Sequential(fn.Conv2d(1, 2, 3), fn.BatchNorm2d(2), fn.relu, fn.Flatten(), fn.Linear(8, 3))
    params = model.init(fn.random.key(0))
    return {"params": params, "state": model.init_state(),
            "opt": AdamState(step=torch.tensor(7), mu=tree.zeros_like(params), nu=[tree.ones_like(params)]),
            "epoch": 3, "lr": 1e-3, "name": "cnn", "done": False, "extra": None,
            "dtypes": (torch.zeros(2, dtype=torch.float64), torch.ones(3, dtype=torch.bfloat16),
                       torch.tensor([True, False]), torch.arange(4, dtype=torch.int32), torch.zeros(0, 5),
                       torch.tensor(2.5, dtype=torch.float16)),
            7: torch.arange(6.0).reshape(2, 3).t()}  # int key, non-contiguous tensor


def assert_same(a, b):
    assert type(a) is type(b) or (isinstance(a, tuple) and isinstance(b, tuple)), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and getattr(a, "_fields", None) == getattr(b, "_fields", None)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_save_then_load_gives_back_the_same_tree_bit_for_bit(tmp_path):
    t = checkpoint_tree()
    io.save(tmp_path / "ckpt.fnnet", t)
    back = io.load(tmp_path / "ckpt.fnnet")
    assert_same(back, t)
    assert back["opt"].step == 7 and back["opt"]._fields == ("step", "mu", "nu")


def test_load_like_a_template_checks_it_and_returns_its_containers(tmp_path):
    t = checkpoint_tree()
    io.save(tmp_path / "c", t)
    back = io.load(tmp_path / "c", like=t)
    assert type(back["opt"]) is AdamState
    assert_same(back, t)


def test_load_like_names_the_path_that_does_not_fit(tmp_path):
    params = fn.Linear(3, 2).init(fn.random.key(0))
    io.save(tmp_path / "c", params)
    with pytest.raises(CheckpointError, match=r"'weight' is float32 \[2, 3\], expected float32 \[4, 3\]"):
        io.load(tmp_path / "c", like=fn.Linear(3, 4).init(fn.random.key(0)))
    with pytest.raises(CheckpointError, match=r"unexpected 'bias'"):
        io.load(tmp_path / "c", like=fn.Linear(3, 2, bias=False).init(fn.random.key(0)))
    with pytest.raises(CheckpointError, match=r"missing '0.weight'"):
        io.load(tmp_path / "c", like={"0": params})
    with pytest.raises(CheckpointError, match=r"'weight' is float32 \[2, 3\], expected float64"):
        io.load(tmp_path / "c", like=tree.astype(params, torch.float64))


def test_load_moves_tensors_to_the_requested_device(tmp_path):
    io.save(tmp_path / "c", {"w": torch.ones(2)})
    back = io.load(tmp_path / "c", device="meta")
    assert back["w"].device.type == "meta"


def test_torch_save_files_of_tensors_load_too(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()
    torch.save(sd, tmp_path / "model.pt")
    back = io.load(tmp_path / "model.pt")
    assert all(torch.equal(back[k], v) for k, v in sd.items())


class Exploit:
    """Unpickling this runs ``os.system``: a malicious checkpoint."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save_pickle", "random_bytes", "text", "empty",
                                  "truncated", "bad_header", "lying_sizes"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error_and_runs_no_code(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{kind}.bin"
    if kind == "raw_pickle":
        path.write_bytes(pickle.dumps({"w": Exploit()}))
    elif kind == "torch_save_pickle":
        torch.save({"w": Exploit()}, path)
    elif kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        io.save(path, {"w": torch.ones(100)})
        path.write_bytes(path.read_bytes()[:-10])
    elif kind == "bad_header":
        io.save(path, {"w": torch.ones(3)})
        blob = bytearray(path.read_bytes())
        blob[20:24] = b"\xff\xfe{{"
        path.write_bytes(bytes(blob))
    elif kind == "lying_sizes":
        io.save(path, {"w": torch.ones(3)})
        path.write_bytes(path.read_bytes().replace(b'"shape":[3]', b'"shape":[9]'))
    expected = {"raw_pickle": "raw pickle", "torch_save_pickle": "weights_only", "random_bytes": "not a checkpoint",
                "text": "not a checkpoint", "empty": "not a checkpoint", "truncated": "truncated",
                "bad_header": "corrupt header", "lying_sizes": "cannot hold"}[kind]
    with pytest.raises(CheckpointError, match=expected) as err:
        io.load(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "PWNED").exists(), "loading ran code from the file"


def test_a_missing_file_is_a_checkpoint_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.fnnet: cannot be read"):
        io.load(tmp_path / "nope.fnnet")


def test_save_refuses_what_it_cannot_store_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "c"
    io.save(path, {"w": torch.ones(1)})
    with pytest.raises(TypeError, match=r"opt.fn is a function"):
        io.save(path, {"opt": {"fn": lambda x: x}})
    assert torch.equal(io.load(path)["w"], torch.ones(1))


@dataclasses.dataclass
class DataclassState:
    count: torch.Tensor
    trace: dict


torch.utils._pytree.register_dataclass(DataclassState)


def test_other_pytree_nodes_save_by_path_and_come_back_as_themselves_through_like(tmp_path):
    state = DataclassState(count=torch.tensor(4), trace={"w": torch.ones(2, 3)})
    io.save(tmp_path / "c", {"opt": state})
    plain = io.load(tmp_path / "c")
    assert plain["opt"]["count"].item() == 4 and torch.equal(plain["opt"]["trace"]["w"], torch.ones(2, 3))
    back = io.load(tmp_path / "c", like={"opt": DataclassState(torch.tensor(0), {"w": torch.zeros(2, 3)})})
    assert isinstance(back["opt"], DataclassState) and back["opt"].count.item() == 4


# -- what save stores: every tensor torch.save stores --------------------------------------------

def views():
    base = torch.arange(24.0, dtype=torch.float64).reshape(4, 6)
    z = torch.randn(3, 2, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    return {
        "conj": z.conj(),                                          # conjugate bit, data not conjugated
        "neg": z.conj().imag,                                      # negative bit
        "conj_transposed": z.conj().t(),
        "transposed": base.t(),
        "sliced": base[1:3, ::2],
        "offset": base.reshape(-1)[5:9],
        "one_element_strided": base.reshape(-1).as_strided((1,), (5,), 3),
        "one_element_2d": base[2:3, 4:5],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "zero_size": base[:, :0],
        "zero_dim": base[1, 2],
        "parameter": torch.nn.Parameter(base[:2].clone()),
        "requires_grad_view": (base.clone().requires_grad_(True) * 2)[::2],
    }


def test_save_stores_views_with_their_values_as_torch_save_does(tmp_path):
    t = views()
    io.save(tmp_path / "c", t)  # all together (torch.save refuses "neg" with "conj": one storage, two dtypes)
    back = io.load(tmp_path / "c")
    for k, v in t.items():
        torch.save(v, tmp_path / "ref.pt")
        ref = torch.load(tmp_path / "ref.pt", weights_only=True)
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v.detach().resolve_conj().resolve_neg()), k
        assert torch.equal(back[k], ref.resolve_conj().resolve_neg()), k
        assert not back[k].is_conj() and not back[k].is_neg(), k


@pytest.mark.parametrize("dtype", sorted(io._DTYPES.values(), key=str), ids=str)
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_every_dtype_of_the_format_round_trips_bit_for_bit(tmp_path, dtype):
    raw = torch.randint(0, 2 if dtype == torch.bool else 256, (2, 3, 16), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(1))
    t = raw.view(dtype).transpose(0, 1)  # and not contiguous
    io.save(tmp_path / "c", {"x": t})
    back = io.load(tmp_path / "c")["x"]
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8), t.contiguous().view(torch.uint8))


@pytest.mark.parametrize("make, match", [
    (lambda: torch.empty(2, dtype=torch.int4), "dtype torch.int4"),  # sub-byte: raw bytes cannot hold it
    (lambda: torch.zeros(2).to_sparse(), "layout"),
    (lambda: torch.zeros(2, device="meta"), "meta"),
    (lambda: torch.zeros(2).as_subclass(type("MyTensor", (torch.Tensor,), {})), "tensor subclass"),
], ids=["int4", "sparse", "meta", "subclass"])
def test_save_refuses_a_tensor_it_cannot_store_naming_it_and_writes_nothing(tmp_path, make, match):
    with pytest.raises(TypeError, match=rf"w\.1 .*{match}"):
        io.save(tmp_path / "c", {"w": [torch.ones(3), make()]})
    assert list(tmp_path.iterdir()) == []


def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "c"
    io.save(path, {"w": torch.ones(1)})
    written = []

    def failing(t):
        if len(written) == 2:  # the header and two tensors are in the temporary file by now
            raise OSError(28, "No space left on device")
        written.append(t)
        return real(t)

    real = io._tensor_bytes
    monkeypatch.setattr(io, "_tensor_bytes", failing)
    with pytest.raises(OSError, match="No space left"):
        io.save(path, {"a": torch.zeros(100), "b": torch.zeros(100), "c": torch.zeros(100)})
    assert len(written) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert torch.equal(io.load(path)["w"], torch.ones(1))


def test_save_over_a_directory_fails_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="names no file"):
        io.save(tmp_path / "d", {"w": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_the_saved_file_gets_the_usual_permissions_not_a_private_temporary_files(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    io.save(tmp_path / "c", {"w": torch.ones(2)})
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o666 & ~umask


def test_files_of_the_first_format_version_still_load(tmp_path):
    import json
    import struct
    head = json.dumps({"version": 1, "byteorder": "little", "tree": {"t": "dict", "keys": [["str", "w"]], "values": [
        {"t": "tensor", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}]}}).encode()
    (tmp_path / "v1").write_bytes(b"FNNETCK1" + struct.pack("<Q", len(head)) + head
                                  + torch.tensor([1.5, -2.0]).numpy().tobytes())
    assert torch.equal(io.load(tmp_path / "v1")["w"], torch.tensor([1.5, -2.0]))


# -- like= matches by path -------------------------------------------------------------------------

def test_like_matches_by_path_not_by_position(tmp_path):
    io.save(tmp_path / "c", {"b": torch.ones(2), "a": torch.zeros(3)})
    back = io.load(tmp_path / "c", like={"a": torch.empty(3), "b": torch.empty(2)})
    assert list(back) == ["a", "b"]  # the template's order
    assert torch.equal(back["a"], torch.zeros(3)) and torch.equal(back["b"], torch.ones(2))


def test_like_names_the_first_differing_path_in_the_templates_order(tmp_path):
    io.save(tmp_path / "c", {"a": torch.ones(2), "b": torch.ones(3, dtype=torch.int64), "n": 3})
    with pytest.raises(CheckpointError, match=r"template:\n  'a' is float32 \[2\], expected float32 \[5\]\n"
                                              r"  'b' is int64 \[3\], expected float32 \[3\]"):
        io.load(tmp_path / "c", like={"a": torch.empty(5), "b": torch.empty(3), "n": 0})
    with pytest.raises(CheckpointError, match=r"'n' is a int, expected a str"):
        io.load(tmp_path / "c", like={"a": torch.empty(2), "b": torch.empty(3, dtype=torch.int64), "n": "x"})
    with pytest.raises(CheckpointError, match=r"'a' is float32 \[2\], expected a float"):
        io.load(tmp_path / "c", like={"a": 0.0, "b": torch.empty(3, dtype=torch.int64), "n": 1})


def test_like_refuses_a_tree_with_two_leaves_at_one_path(tmp_path):
    io.save(tmp_path / "c", {"1": torch.ones(2), 1: torch.zeros(2)})
    back = io.load(tmp_path / "c")
    assert torch.equal(back["1"], torch.ones(2)) and torch.equal(back[1], torch.zeros(2))
    with pytest.raises(CheckpointError, match=r"two leaves at the path '1'"):
        io.load(tmp_path / "c", like={"1": torch.empty(2)})


def test_a_template_on_the_meta_device_checks_shapes_and_keeps_the_data(tmp_path):
    params = fn.Linear(3, 2).init(fn.random.key(0))
    io.save(tmp_path / "c", params)
    back = io.load(tmp_path / "c", like=tree.map(lambda t: t.to("meta"), params))
    assert back["weight"].device.type == "cpu" and torch.equal(back["weight"], params["weight"])
