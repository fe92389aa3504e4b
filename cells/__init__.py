"""Recurrent cells and sequence layers with ``torch.nn``'s names, layouts and numbers:
``RNNCell``, ``LSTMCell``, ``GRUCell``; ``RNN``, ``LSTM``, ``GRU`` (multi-layer,
bidirectional, ``batch_first``, dropout between layers, LSTM ``proj_size``, ``lengths=``);
``Recurrent(cell)``: the same sequence options over any cell of the cell protocol
(``cells/recurrent.py``), a user's cell included."""

from fnnet._cache_key import tag_with_source

from .cell import GRUCell, LSTMCell, RNNCell
from .layer import GRU, LSTM, RNN
from .recurrent import Recurrent

tag_with_source(__file__)  # compiled graphs cached on disk are keyed by this source

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "Recurrent"]
