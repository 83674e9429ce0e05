"""Differently written recurrent models for the reroll tests: each spelling the pass must
recognise, and the loops it must refuse. Sizes are tiny: B=3, I=5, H=6 (2 heads x 3), T=7."""

import torch
import torch.nn as nn
import torch.nn.functional as F

B, I, H, T = 3, 5, 6, 7


def _p(*shape, scale=0.4):
    return nn.Parameter(torch.randn(*shape) * scale)


# ---- loops over cell modules ----------------------------------------------------------------


class LSTMCellLoop(nn.Module):
    """nn.LSTMCell, x[t] (time first), hx=None, outputs stacked."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(I, H)

    def forward(self, x):  # x [T, B, I]
        state, outs = None, []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            outs.append(state[0])
        return torch.stack(outs), state[1]


class GRUCellLoop(nn.Module):
    """nn.GRUCell, batch first x[:, t], initial state given, stack along dim 1."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(I, H)

    def forward(self, x, h0):  # x [B, T, I], h0 [B, H]
        h, outs = h0, []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            outs.append(h)
        return torch.stack(outs, 1)


class RNNTanhCellLoop(nn.Module):
    """nn.RNNCell(tanh) over x.unbind(0); only the last state used."""

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(I, H, nonlinearity="tanh")

    def forward(self, x):  # x [T, B, I]
        h = torch.zeros(x.shape[1], H)
        for x_t in x.unbind(0):
            h = self.cell(x_t, h)
        return h


class RNNReluCellLoop(nn.Module):
    """nn.RNNCell(relu) without biases, loop running backwards, outputs put back in time order."""

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(I, H, nonlinearity="relu", bias=False)

    def forward(self, x):  # x [B, T, I]
        h, outs = None, [None] * x.shape[1]
        for t in reversed(range(x.shape[1])):
            h = self.cell(x[:, t], h)
            outs[t] = h
        return torch.stack(outs, 1)


# ---- hand-written cells ---------------------------------------------------------------------


class LSTMFused(nn.Module):
    """One fused W and U, `@` with `.T`, chunk, torch.sigmoid and x.sigmoid(), unbind, stack."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.b = _p(4 * H, I), _p(4 * H, H), _p(4 * H)

    def forward(self, x):  # x [B, T, I]
        h = x.new_zeros(x.shape[0], H)
        c = x.new_zeros(x.shape[0], H)
        outs = []
        for x_t in x.unbind(1):
            g = x_t @ self.W.T + h @ self.U.T + self.b
            i, f, z, o = g.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = o.sigmoid() * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1), c


class LSTMPerGateLinear(nn.Module):
    """One matrix per gate, F.linear, gate order (f, o, i, g) in the code, F.sigmoid / F.tanh,
    x.select(1, t), two biases, only the last h returned."""

    def __init__(self):
        super().__init__()
        self.wx = nn.ParameterList([_p(H, I) for _ in range(4)])
        self.wh = nn.ParameterList([_p(H, H) for _ in range(4)])
        self.bx = nn.ParameterList([_p(H) for _ in range(4)])
        self.bh = nn.ParameterList([_p(H) for _ in range(4)])

    def forward(self, x, h, c):  # x [B, T, I], h, c [B, H]
        for t in range(x.shape[1]):
            x_t = x.select(1, t)
            pre = [F.linear(x_t, self.wx[k], self.bx[k]) + F.linear(h, self.wh[k], self.bh[k]) for k in range(4)]
            f, o, i, g = F.sigmoid(pre[0]), F.sigmoid(pre[1]), F.sigmoid(pre[2]), F.tanh(pre[3])
            c = f * c + i * g
            h = o * F.tanh(c)
        return h


class LSTMAddmmSplitBackward(nn.Module):
    """torch.addmm and torch.matmul, split, no recurrent bias, gates by slicing, backwards loop."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.b = _p(I, 4 * H), _p(H, 4 * H), _p(4 * H)

    def forward(self, x):  # x [T, B, I]
        h = torch.zeros(x.shape[1], H)
        c = torch.zeros(x.shape[1], H)
        outs = []
        for t in range(x.shape[0] - 1, -1, -1):
            g = torch.addmm(self.b, x[t], self.W) + torch.matmul(h, self.U)
            i, f = g[:, :H], g[:, H: 2 * H]
            z, o = g[:, 2 * H:].split(H, dim=1)
            c = f.sigmoid() * c + i.sigmoid() * z.tanh()
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        return torch.stack(outs[::-1])


class LSTMEinsumCat(nn.Module):
    """einsum for both matmuls, gates by view + unbind, no bias, outputs cat of unsqueezed h."""

    def __init__(self):
        super().__init__()
        self.W, self.U = _p(4 * H, I), _p(4 * H, H)

    def forward(self, x):  # x [B, T, I]
        h = x.new_zeros(x.shape[0], H)
        c = torch.zeros_like(h)
        outs = []
        for t in range(x.shape[1]):
            g = torch.einsum("bi,gi->bg", x[:, t], self.W) + torch.einsum("bj,gj->bg", h, self.U)
            i, f, z, o = g.view(-1, 4, H).unbind(1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h.unsqueeze(1))
        return torch.cat(outs, 1)


class LSTMPrecomputedInput(nn.Module):
    """The input projection computed by the user before the loop, gx[:, t] inside it."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(I, 4 * H)
        self.U = _p(4 * H, H)

    def forward(self, x):  # x [B, T, I]
        gx = self.inp(x)  # [B, T, 4H]
        h = c = x.new_zeros(x.shape[0], H)
        outs = []
        for t in range(x.shape[1]):
            i, f, z, o = (gx[:, t] + h @ self.U.t()).chunk(4, -1)
            c = f.sigmoid() * c + i.sigmoid() * z.tanh()
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        return torch.stack(outs, 1)


class GRUHand(nn.Module):
    """GRU in PyTorch's form: n = tanh(W_n x + b_in + r * (U_n h + b_hn))."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.bi, self.bh = _p(3 * H, I), _p(3 * H, H), _p(3 * H), _p(3 * H)

    def forward(self, x):  # x [B, T, I]
        h = x.new_zeros(x.shape[0], H)
        outs = []
        for t in range(x.shape[1]):
            gi = F.linear(x[:, t], self.W, self.bi)
            gh = F.linear(h, self.U, self.bh)
            i_r, i_z, i_n = gi.chunk(3, 1)
            h_r, h_z, h_n = gh.chunk(3, 1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, 1)


class ElmanTanhHand(nn.Module):
    def __init__(self):
        super().__init__()
        self.W, self.U, self.b = _p(H, I), _p(H, H), _p(H)

    def forward(self, x):  # x [T, B, I]
        h, outs = torch.zeros(x.shape[1], H), []
        for t in range(x.shape[0]):
            h = torch.tanh(x[t] @ self.W.T + self.b + h @ self.U.T)
            outs.append(h)
        return torch.stack(outs)


class ElmanReluHand(nn.Module):
    def __init__(self):
        super().__init__()
        self.W, self.U = _p(H, I), _p(H, H)

    def forward(self, x, h):  # x [T, B, I], h [B, H]
        for t in range(x.shape[0]):
            h = torch.relu(torch.mm(x[t], self.W.t()) + torch.mm(h, self.U.t()))
        return h


NH, DH = 2, 3


class MultiHeadLSTMEinsum(nn.Module):
    """Block-diagonal R: the state is [B, NH, DH], einsum over the head axis."""

    def __init__(self, I=I, NH=NH, DH=DH):
        super().__init__()
        self.NH, self.DH = NH, DH
        self.W = _p(NH, 4, DH, I)  # [NH, G, DH, I]
        self.R = _p(NH, 4, DH, DH)  # [NH, G, DH, DH]
        self.b = _p(NH, 4, DH)  # [NH, G, DH]

    def forward(self, x):  # x [B, T, I] -> [B, T, NH*DH]
        h = x.new_zeros(x.shape[0], self.NH, self.DH)  # [B, NH, DH]
        c = x.new_zeros(x.shape[0], self.NH, self.DH)
        outs = []
        for t in range(x.shape[1]):
            g = torch.einsum("bi,ngdi->bngd", x[:, t], self.W) + torch.einsum("bne,ngde->bngd", h, self.R) + self.b
            i, f, z, o = g.unbind(2)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h.reshape(x.shape[0], self.NH * self.DH))
        return torch.stack(outs, 1)


class MultiHeadGRUBmm(nn.Module):
    """Block-diagonal R with bmm over heads: h [B, H] viewed as [NH, B, DH]."""

    def __init__(self):
        super().__init__()
        self.W, self.bi = _p(3 * H, I), _p(3 * H)
        self.R = _p(NH, DH, 3 * DH)  # per head: DH -> (r, z, n) x DH
        self.bh = _p(NH, 1, 3 * DH)

    def forward(self, x):  # x [T, B, I]
        Bn = x.shape[1]
        h = x.new_zeros(Bn, H)
        outs = []
        for t in range(x.shape[0]):
            gi = F.linear(x[t], self.W, self.bi).view(Bn, 3, NH, DH)
            hh = torch.bmm(h.view(Bn, NH, DH).transpose(0, 1), self.R) + self.bh  # [NH, B, 3 DH]
            hh = hh.view(NH, Bn, 3, DH).permute(1, 2, 0, 3)  # [B, 3, NH, DH]
            r = torch.sigmoid(gi[:, 0] + hh[:, 0])
            z = torch.sigmoid(gi[:, 1] + hh[:, 1])
            n = torch.tanh(gi[:, 2] + r * hh[:, 2])
            h = ((1 - z) * n + z * h.view(Bn, NH, DH)).reshape(Bn, H)
            outs.append(h)
        return torch.stack(outs)


# ---- loops that must be refused -------------------------------------------------------------


class ResetBeforeGRU(nn.Module):
    """The original GRU: n = tanh(W_n x + U_n (r * h)) -- a different function, not rewritten."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.Un = _p(3 * H, I), _p(2 * H, H), _p(H, H)

    def forward(self, x):  # x [B, T, I]
        h = x.new_zeros(x.shape[0], H)
        for t in range(x.shape[1]):
            i_r, i_z, i_n = (x[:, t] @ self.W.T).chunk(3, 1)
            h_r, h_z = (h @ self.U.T).chunk(2, 1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + (r * h) @ self.Un.T)
            h = (1 - z) * n + z * h
        return h


class DecoderFeedback(nn.Module):
    """The step input is the previous output: depends on an earlier state."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(I, H)
        self.out = nn.Linear(H, I)

    def forward(self, x0, h, c):  # x0 [B, I]
        inp, outs = x0, []
        for _ in range(T):
            h, c = self.cell(inp, (h, c))
            inp = torch.tanh(self.out(h))
            outs.append(inp)
        return torch.stack(outs)


class WeightsPerStep(nn.Module):
    """A different cell (different weights) at every step."""

    def __init__(self):
        super().__init__()
        self.cells = nn.ModuleList(nn.RNNCell(I, H) for _ in range(T))

    def forward(self, x):  # x [T, B, I]
        h = torch.zeros(x.shape[1], H)
        for t in range(x.shape[0]):
            h = self.cells[t](x[t], h)
        return h


class CellStateCollected(nn.Module):
    """c_t of every step is used after the loop: an intermediate value the op does not give."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(I, H)

    def forward(self, x):  # x [T, B, I]
        h = c = torch.zeros(x.shape[1], H)
        cs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            cs.append(c)
        return h, torch.stack(cs)


class DataDependentLoop(nn.Module):
    """Control flow on a value: Dynamo breaks the graph at every step; nothing to reroll."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(I, H)

    def forward(self, x):  # x [T, B, I]
        h = torch.zeros(x.shape[1], H)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            if h.sum() > 0:
                h = h * 0.5
        return h


class BidirectionalElmanHand(nn.Module):
    """Both directions in one loop body: two independent recurrences (two rewrites)."""

    def __init__(self):
        super().__init__()
        self.Wf, self.Uf, self.Wb, self.Ub = _p(H, I), _p(H, H), _p(H, I), _p(H, H)

    def forward(self, x):  # x [T, B, I]
        steps = x.shape[0]
        hf = hb = torch.zeros(x.shape[1], H)
        fwd, bwd = [None] * steps, [None] * steps
        for t in range(steps):
            hf = torch.tanh(x[t] @ self.Wf.T + hf @ self.Uf.T)
            hb = torch.tanh(x[steps - 1 - t] @ self.Wb.T + hb @ self.Ub.T)
            fwd[t], bwd[steps - 1 - t] = hf, hb
        return torch.cat([torch.stack(fwd), torch.stack(bwd)], -1)


class AttentionInLoop(nn.Module):
    """The step input is built from attention over memory with the state as query."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(2 * I, I)
        self.q = _p(I, I)

    def forward(self, x, memory):  # x [T, B, I], memory [B, M, I]
        h = torch.zeros(x.shape[1], I)
        for t in range(x.shape[0]):
            scores = torch.einsum("bi,bmi->bm", h @ self.q, memory).softmax(-1)
            context = torch.einsum("bm,bmi->bi", scores, memory)
            h = self.cell(torch.cat([x[t], context], -1), h)
        return h


class NoGradInLoop(nn.Module):
    """Part of the step under torch.no_grad(): the rewrite would change the gradients."""

    def __init__(self):
        super().__init__()
        self.W, self.U = _p(H, I), _p(H, H)

    def forward(self, x):  # x [T, B, I]
        h = torch.zeros(x.shape[1], H)
        for t in range(x.shape[0]):
            with torch.no_grad():
                r = h @ self.U.T
            h = torch.tanh(x[t] @ self.W.T + r)
        return h
