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
