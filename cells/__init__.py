"""Recurrent cells and sequence layers with ``torch.nn``'s names, layouts and numbers:
``RNNCell``, ``LSTMCell``, ``GRUCell``; ``RNN``, ``LSTM``, ``GRU`` (multi-layer,
bidirectional, ``batch_first``, dropout between layers, LSTM ``proj_size``, ``lengths=``);
``Recurrent(cell)``: the same sequence options over any cell of the cell protocol
(``cells/recurrent.py``), a user's cell included."""

from .cell import GRUCell, LSTMCell, RNNCell
from .layer import GRU, LSTM, RNN
from .recurrent import Recurrent

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "Recurrent"]
