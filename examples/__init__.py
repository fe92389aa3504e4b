"""The course's workloads as short fnnet scripts: ``python -m examples`` lists them,
``python -m examples NAME`` runs one (``--help`` for the options).

Each module has ``run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True)``
returning a dict of its metrics (``steps=None``: its defaults, which finish in about a minute
on a 2-core CPU and reach the result stated in its docstring; ``compile=None``: the
example's own default, ``True`` for all but the two long-sequence RNNs).
"""

from __future__ import annotations

import importlib

# name -> one line; the module examples.<name> has run(...)
EXAMPLES = {
    "linear_regression": "y = 2x with Linear(1, 1) and MSE",
    "optimizers": "SGD, Adagrad, Adam, Adamax, ASGD, LBFGS, RMSprop, Rprop on the same model",
    "logistic_regression": "Linear(1, 1) + sigmoid with BCE: a decision boundary",
    "breast_cancer": "30-25-20-15-10-5-1 MLP with BCE and weight decay on sklearn's breast cancer",
    "digits_mlp": "MLP on 5,000 real MNIST digits",
    "digits_cnn": "CNN on the digits (--arch course | inception | residual)",
    "char_rnn": '"hello" -> "ohlol" with RNNCell, RNN, then Embedding + RNN',
    "sine": "RNN forecasting sin(x), gradient clipping, autoregressive prediction",
    "names": "surname -> country: char embedding + bidirectional 2-layer GRU with lengths=",
    "sentiment": "Embedding + 2-layer BiLSTM + dropout on Rotten Tomatoes sentences",
    "gan": "the course's GAN on 8 Gaussians",
    "wgan_gp": "WGAN-GP on 8 Gaussians: gradient penalty, 5 critic steps, mode coverage",
    "seq_wgan_gp": "WGAN-GP on sine waves: LSTM generator and critic, penalty through the LSTM",
    "autoencoder": "784-256-64-20 autoencoder on the digits",
    "vae": "784-256-64-20 VAE on the digits: reconstructions and samples",
}


def load(name: str):
    """The example's module (``examples.<name>``)."""
    if name not in EXAMPLES:
        raise KeyError(name)
    return importlib.import_module(f"examples.{name}")
