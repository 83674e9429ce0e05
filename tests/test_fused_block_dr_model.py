"""A float64 model of the fused_block backward's in-kernel dR accumulation (csrc/fused/fused_block_dr.cuh
DrAcc), lane by lane: the shared-memory layouts the cells write (X^T drhb pieces [2][HP][G*DH][XN],
h_in words [2][DH][HBW]), the fragments ldmatrix and the 32-bit loads give each lane, the m16n8k8
fragment layouts of mma.sync, the step schedule of the kernel's loop (a step's dR MMAs take the step
before's drhb and h_in; the epilogue the last step's) and DrAcc.store's output rows; checked against
dR[(g, o), u] = sum_t sum_n drhb_t[(g, o), n] h_in_t[u, n] over the batch columns n < nb, for odd
and even T, a batch tile only partly in the batch, HP = 1 and 2, m-tiles that do not divide over
the warps, and both directions (the processing order is the reverse of time for a forward
direction, so the model feeds the steps in the kernel's order). It also asserts that every
shared-memory region a step's dR reads was written in an earlier step and is not written in the
same step (the kernel has no barrier between a step's dR MMAs and its cells' writes). No GPU: this
checks the indexing; tests/gpu checks the kernel."""

from __future__ import annotations


import pytest
import torch

F64 = torch.float64


class Layout:
    """Config's constants of one configuration (fused_block.cuh Config)."""

    def __init__(self, G, DH, WARPS, BT, HP):
        self.G, self.DH, self.WARPS, self.BT, self.HP = G, DH, WARPS, BT, HP
        self.DR_MT = G * DH // 16
        self.MPW = -(-self.DR_MT // WARPS)
        self.NT = DH // 8
        self.NK = BT // 8
        self.XN = BT + (8 if (BT // 8) % 2 == 0 else 0)
        self.HBW = BT // 2 + (12 - (BT // 2) % 8) % 8


def lanes():
    return [(lane, lane >> 2, lane & 3) for lane in range(32)]


class Smem:
    """X^T [2][HP * G * DH][XN] and h_in words as element pairs, with the step that wrote each
    buffer (per buffer)."""

    def __init__(self, L: Layout):
        self.L = L
        self.x = torch.zeros(2, L.HP * L.G * L.DH * L.XN, dtype=F64)  # flat element index row * XN + col
        self.h = torch.zeros(2, L.DH * L.HBW, 2, dtype=F64)  # words of two 16-bit values
        self.x_stamp = [-1, -1]
        self.h_stamp = {}
        self.reads, self.writes = set(), set()

    def begin_step(self):
        self.reads, self.writes = set(), set()

    def end_step(self):
        assert not (self.reads & self.writes), f"a step reads and writes {self.reads & self.writes}"

    def read_x(self, buf, at_step):
        self.reads.add(("x", buf))
        assert self.x_stamp[buf] < at_step


def ldmatrix(flat, addrs, n_mat):
    """ldmatrix (not transposed) .x2 / .x4: lane l < 8 n_mat gives the element offset of row l % 8 of
    matrix l // 8 (8 consecutive elements); lane (gq, t4) gets (M_j[gq][2 t4], M_j[gq][2 t4 + 1])."""
    out = {}
    for lane, gq, t4 in lanes():
        regs = []
        for j in range(n_mat):
            a = addrs[8 * j + gq]
            regs.append((flat[a + 2 * t4].item(), flat[a + 2 * t4 + 1].item()))
        out[lane] = regs
    return out


def mma(d, a, b, k):
    """mma.sync m16n8k{k} per lane: d[lane] 4 floats (D[gq][2t4], D[gq][2t4+1], D[gq+8][2t4],
    D[gq+8][2t4+1]); a[lane] k // 4 registers of 2 values; b[lane] k // 8 registers."""
    A = torch.zeros(16, k, dtype=F64)
    B = torch.zeros(k, 8, dtype=F64)
    for lane, gq, t4 in lanes():
        for r, (v0, v1) in enumerate(a[lane]):
            row, col = gq + 8 * (r % 2), 2 * t4 + 8 * (r // 2)
            A[row, col], A[row, col + 1] = v0, v1
        for r, (v0, v1) in enumerate(b[lane]):
            B[2 * t4 + 8 * r, gq], B[2 * t4 + 8 * r + 1, gq] = v0, v1
    D = A @ B
    for lane, gq, t4 in lanes():
        d[lane][0] += D[gq, 2 * t4].item()
        d[lane][1] += D[gq, 2 * t4 + 1].item()
        d[lane][2] += D[gq + 8, 2 * t4].item()
        d[lane][3] += D[gq + 8, 2 * t4 + 1].item()


class Warp:
    """One warp's DrAcc: acc[mt][nt][lane][4]."""

    def __init__(self, L: Layout, warp: int):
        self.L, self.w = L, warp
        self.acc = [[[[0.0] * 4 for _ in range(32)] for _ in range(L.NT)] for _ in range(L.MPW)]

    def m_tiles(self):
        L = self.L
        return [mt for mt in range(L.MPW) if self.w + mt * L.WARPS < L.DR_MT]

    def step(self, sm: Smem, xbuf, hbuf):
        """DrAcc::step."""
        L = self.L
        flat, words = sm.x[xbuf], sm.h[hbuf]
        for ks in range(L.NK):
            for mt in self.m_tiles():
                m = self.w + mt * L.WARPS
                for hp in range(L.HP):
                    rows = [hp * L.G * L.DH + m * 16 + (lane & 15) for lane in range(32)]
                    a = ldmatrix(flat, [r * L.XN + ks * 8 for r in rows], 2)
                    for nt in range(L.NT):
                        b = {lane: [tuple(words[(nt * 8 + gq) * L.HBW + ks * 4 + t4].tolist())] for lane, gq, t4 in lanes()}
                        mma(self.acc[mt][nt], a, b, 8)

    def store(self, dR):
        L = self.L
        for mt in self.m_tiles():
            m = self.w + mt * L.WARPS
            for nt in range(L.NT):
                for lane, gq, t4 in lanes():
                    v = self.acc[mt][nt][lane]
                    dR[m * 16 + gq, nt * 8 + 2 * t4: nt * 8 + 2 * t4 + 2] = torch.tensor(v[0:2], dtype=F64)
                    dR[m * 16 + gq + 8, nt * 8 + 2 * t4: nt * 8 + 2 * t4 + 2] = torch.tensor(v[2:4], dtype=F64)


def run_model(L: Layout, drhb, hin, nb, pieces):
    """drhb [T, G*DH, BT] and hin [T, DH, BT] in the kernel's processing order (step s); columns
    >= nb carry garbage drhb (the cells compute on a copied row) and the kernel writes h_in 0 there.
    pieces: the HP pieces of drhb ([HP, T, G*DH, BT], summing to drhb). Returns dR [G*DH, DH]."""
    T = drhb.shape[0]
    sm = Smem(L)
    warps = [Warp(L, w) for w in range(L.WARPS)]

    def write_step(s, cur):
        # the cells of step s: drhb_s into X[cur ^ 1], h_in_s into the h buffer
        xb = cur ^ 1
        assert ("x", xb) not in sm.reads
        sm.writes.add(("x", xb))
        x = sm.x[xb].view(L.HP * L.G * L.DH, L.XN)
        for hp in range(L.HP):
            x[hp * L.G * L.DH:(hp + 1) * L.G * L.DH, :L.BT] = pieces[hp, s]
        sm.x_stamp[xb] = s
        for u in range(L.DH):
            for n in range(1, L.BT, 2):  # the lane of column n writes the pair n - 1, n
                h0 = hin[s, u, n - 1].item() if n - 1 < nb else 0.0
                h1 = hin[s, u, n].item() if n < nb else 0.0
                buf, w = cur, u * L.HBW + (n - 1) // 2
                key = ("h", buf)
                sm.h[buf, w] = torch.tensor([h0, h1], dtype=F64)
                sm.writes.add(key)
                sm.h_stamp[key] = s

    def read_h(key, at_step):
        sm.reads.add(key)
        assert sm.h_stamp.get(key, -1) < at_step

    for s in range(T):
        sm.begin_step()
        cur = s & 1
        sm.read_x(cur, s)
        read_h(("h", cur ^ 1), s)
        for w in warps:
            w.step(sm, cur, cur ^ 1)
        write_step(s, cur)
        sm.end_step()
    # the epilogue (after the loop's last barrier)
    if T > 0:
        for w in warps:
            w.step(sm, T & 1, (T - 1) & 1)
    dR = torch.full((L.G * L.DH, L.DH), float("nan"), dtype=F64)
    for w in warps:
        w.store(dR)
    return dR


# (G, DH, WARPS, BT, HP): LSTM 12x64's tiling, GRU 12x64's (3 m-tiles a warp), m-tiles that do not
# divide over the warps (GRU 32 W8 BT16, an explicit tiling), HP = 2 (elman_relu / slstm), batch
# tiles of 3 and 2 chunks
LAYOUTS = [(4, 64, 8, 8, 1), (3, 64, 4, 8, 1), (3, 32, 8, 16, 1), (1, 32, 2, 8, 2), (4, 16, 2, 24, 2),
           (4, 16, 2, 16, 2), (3, 16, 8, 8, 1)]


def _cases():
    for G, DH, W, BT, HP in LAYOUTS:
        for T in (1, 2, 5, 6):
            if DH >= 64 and T != 5:  # the planner's 12x64 tilings once each (time); the small layouts cover the rest
                continue
            yield G, DH, W, BT, HP, T


@pytest.mark.parametrize("G,DH,WARPS,BT,HP,T", list(_cases()))
def test_dr_model_matches_sum_over_steps(G, DH, WARPS, BT, HP, T):
    L = Layout(G, DH, WARPS, BT, HP)
    gen = torch.Generator().manual_seed(1000 * G + DH + 7 * BT + T)
    nb = BT - 3 if BT > 8 else 5  # a partial batch tile: columns >= nb are past the batch
    for reverse in (False, True):
        drhb_t = torch.randn(T, G * DH, BT, generator=gen, dtype=F64)  # by time t
        hin_t = torch.randn(T, DH, BT, generator=gen, dtype=F64)
        order = list(range(T)) if reverse else list(range(T - 1, -1, -1))  # the backward's step -> t
        drhb, hin = drhb_t[order], hin_t[order]
        lo = torch.rand(T, G * DH, BT, generator=gen, dtype=F64) * 0.25
        pieces = torch.stack([drhb - lo, lo]) if HP == 2 else drhb.unsqueeze(0)
        got = run_model(L, drhb, hin, nb, pieces)
        want = sum((drhb_t[t, :, :nb] @ hin_t[t, :, :nb].T for t in range(T)), torch.zeros(G * DH, DH, dtype=F64))
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-10), (
            f"reverse {reverse}: max err {(got - want).abs().max().item()}")


def test_model_sees_a_wrong_buffer():
    """The check can fail: the model reading the h_in buffer of the wrong parity is wrong."""
    L = Layout(4, 16, 2, 8, 1)
    T, nb = 4, 5
    gen = torch.Generator().manual_seed(3)
    drhb = torch.randn(T, 64, 8, generator=gen, dtype=F64)
    hin = torch.randn(T, 16, 8, generator=gen, dtype=F64)
    want = sum((drhb[t, :, :nb] @ hin[t, :, :nb].T for t in range(T)), torch.zeros(64, 16, dtype=F64))
    got = run_model(L, drhb, hin, nb, drhb.unsqueeze(0))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-10)
    orig = Warp.step

    def wrong_parity(self, sm, xbuf, hbuf):
        orig(self, sm, xbuf, hbuf ^ 1)

    Warp.step = wrong_parity
    try:
        bad = run_model(L, drhb, hin, nb, drhb.unsqueeze(0))
    finally:
        Warp.step = orig
    assert not torch.allclose(bad, want, rtol=1e-6, atol=1e-6)
