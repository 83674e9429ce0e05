"""The models the layer and model suites time: hand-written LSTM / GRU loops (what users write
when they do not use nn.LSTM; Inductor unrolls them, the flashrnn backend rerolls them), an LSTM
language model and a bidirectional GRU encoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _param(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / fan_in**0.5)


class HandLSTM(nn.Module):
    """One LSTM layer as a Python loop over the steps of x [B, T, I]; returns h [B, T, H]."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.W = _param(4 * hidden, input_size, fan_in=input_size)  # [4H, I]
        self.U = _param(4 * hidden, hidden, fan_in=hidden)  # [4H, H]
        self.b = nn.Parameter(0.1 * torch.randn(4 * hidden))  # [4H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, I]
        h = x.new_zeros(x.shape[0], self.hidden)  # [B, H]
        c = x.new_zeros(x.shape[0], self.hidden)  # [B, H]
        outs = []
        for t in range(x.shape[1]):
            g = x[:, t] @ self.W.T + h @ self.U.T + self.b  # [B, 4H]
            i, f, z, o = g.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1)


class HandGRU(nn.Module):
    """One GRU layer in PyTorch's form (n = tanh(W_n x + b_in + r * (U_n h + b_hn))) as a Python
    loop over x [B, T, I]; returns h [B, T, H]."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.W = _param(3 * hidden, input_size, fan_in=input_size)  # [3H, I]
        self.U = _param(3 * hidden, hidden, fan_in=hidden)  # [3H, H]
        self.bi = nn.Parameter(0.1 * torch.randn(3 * hidden))  # [3H]
        self.bh = nn.Parameter(0.1 * torch.randn(3 * hidden))  # [3H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, I]
        h = x.new_zeros(x.shape[0], self.hidden)  # [B, H]
        outs = []
        for t in range(x.shape[1]):
            i_r, i_z, i_n = F.linear(x[:, t], self.W, self.bi).chunk(3, 1)
            h_r, h_z, h_n = F.linear(h, self.U, self.bh).chunk(3, 1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, 1)


HAND = {"lstm": HandLSTM, "gru": HandGRU}


class LSTMLM(nn.Module):
    """Embedding -> nn.LSTM (batch first) -> linear head: tokens [B, T] -> logits [B, T, V]."""

    def __init__(self, vocab: int, hidden: int, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens [B, T]
        y, _ = self.rnn(self.embed(tokens))  # [B, T, H]
        return self.head(y)  # [B, T, V]


class BiGRUEncoder(nn.Module):
    """Linear in -> bidirectional nn.GRU -> mean over time -> classes: x [B, T, F] -> [B, C]."""

    def __init__(self, features: int, hidden: int, classes: int, layers: int = 1):
        super().__init__()
        self.proj = nn.Linear(features, hidden)
        self.rnn = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, F]
        y, _ = self.rnn(torch.relu(self.proj(x)))  # [B, T, 2H]
        return self.head(y.mean(1))  # [B, C]


class HandLSTMModel(nn.Module):
    """A hand-written LSTM loop with an input projection and a head: x [B, T, F] -> [B, T, F]."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.rnn = HandLSTM(features, hidden)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, F]
        return self.head(self.rnn(x))
