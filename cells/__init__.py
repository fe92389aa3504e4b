"""Recurrent cells and sequence layers with ``torch.nn``'s names, layouts and numbers:
``RNNCell``, ``LSTMCell``, ``GRUCell``; ``RNN``, ``LSTM``, ``GRU`` (multi-layer,
bidirectional, ``batch_first``, dropout between layers, LSTM ``proj_size``, ``lengths=``)."""

from .cell import GRUCell, LSTMCell, RNNCell
from .layer import GRU, LSTM, RNN

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]
