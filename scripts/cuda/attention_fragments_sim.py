"""A lane-by-lane emulation of kernels/attention.cu's tensor-core inner loop, run on a CPU.

Without a GPU, the riskiest part of the attention kernels is the bookkeeping of mma.sync and
ldmatrix fragments (which lane holds which element of Q, K, V, S, P and O). This script mirrors
the kernels' index arithmetic (the ldmatrix row addresses, the S -> P register reuse, the quad
reductions of the softmax, the stores) one lane at a time, with ldmatrix (.trans) and
mma.m16n8k16 implemented from the PTX ISA's fragment tables, and compares one warp's output with
a float64 softmax(QKᵀ/sqrt(d))V for the tiled kernel (attention_fa: Q through shared memory,
64-key tiles) and the short one (attention_short: Q fragments read directly, 32-key chunks),
head dims 32 and 64, lengths that end inside a tile. It checks the index math, not the compiler
or the hardware: a GPU run of tests/gpu/ops.rs stays the real test. Keep it in step with the kernel.
usage: python3 scripts/cuda/attention_fragments_sim.py   (needs numpy; about a second)
"""
import numpy as np
rng = np.random.default_rng(1)

def ldsm_x4(smem, addr, trans=False):
    # addr[l] = (row, col) flat index into smem (2D array); returns regs[l][i] = (lo, hi)
    mats = [np.stack([smem[addr[8*i + r][0], addr[8*i + r][1]:addr[8*i + r][1] + 8] for r in range(8)]) for i in range(4)]
    regs = [[None]*4 for _ in range(32)]
    for l in range(32):
        for i in range(4):
            M = mats[i]
            if trans:
                regs[l][i] = (M[2*(l % 4)][l // 4], M[2*(l % 4) + 1][l // 4])
            else:
                regs[l][i] = (M[l // 4][2*(l % 4)], M[l // 4][2*(l % 4) + 1])
    return regs

def mma(C, A, b0, b1):
    # C[l] = 4 floats, A[l] = 4 pairs, b0[l], b1[l] pairs
    Am = np.zeros((16, 16)); Bm = np.zeros((16, 8))
    for l in range(32):
        g, t = l // 4, l % 4
        Am[g, 2*t:2*t+2] = A[l][0]; Am[g+8, 2*t:2*t+2] = A[l][1]
        Am[g, 2*t+8:2*t+10] = A[l][2]; Am[g+8, 2*t+8:2*t+10] = A[l][3]
        Bm[2*t:2*t+2, g] = b0[l]; Bm[2*t+8:2*t+10, g] = b1[l]
    D = Am @ Bm
    for l in range(32):
        g, t = l // 4, l % 4
        C[l][0] += D[g, 2*t]; C[l][1] += D[g, 2*t+1]; C[l][2] += D[g+8, 2*t]; C[l][3] += D[g+8, 2*t+1]

def attend_chunk(D, KN, MT, qf, ks, ks0, vs0, valid, scale, st):
    # ks: smem 2D array; ks0/vs0: row offsets of the chunk's K and V
    s = [[[[0.0]*4 for _ in range(32)] for _ in range(KN // 8)] for _ in range(MT)]
    for kd in range(D // 16):
        for jp in range(KN // 16):
            addr = [(ks0 + jp*16 + (l & 7) + ((l >> 4) << 3), kd*16 + (((l >> 3) & 1) << 3)) for l in range(32)]
            b = ldsm_x4(ks, addr)
            for mt in range(MT):
                A = [qf[mt][kd][l] for l in range(32)]
                mma(s[mt][2*jp], A, [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                mma(s[mt][2*jp+1], A, [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
    if valid < KN:  # mask the raw scores of keys past the end
        for mt in range(MT):
            for l in range(32):
                t2 = (l & 3) * 2
                for j in range(KN // 8):
                    for i in range(4):
                        if j*8 + t2 + (i & 1) >= valid:
                            s[mt][j][l][i] = -np.inf
    for mt in range(MT):
        # raw max per lane, quad reduce, then scaled and merged with the running max
        mx = [[max(s[mt][j][l][i] for j in range(KN // 8) for i in range(4) if i >> 1 == r) for r in range(2)] for l in range(32)]
        mxq = [[max(st['m'][mt][l][r], max(mx[(l & ~3) + q][r] for q in range(4)) * scale) for r in range(2)] for l in range(32)]
        for l in range(32):
            corr = [2.0 ** (st['m'][mt][l][r] - mxq[l][r]) if st['m'][mt][l][r] != -np.inf else 0.0 for r in range(2)]
            for r in range(2):
                st['m'][mt][l][r] = mxq[l][r]; st['l'][mt][l][r] *= corr[r]
            for j in range(KN // 8):
                for i in range(4):
                    p = 2.0 ** (s[mt][j][l][i] * scale - mxq[l][i >> 1])
                    s[mt][j][l][i] = p; st['l'][mt][l][i >> 1] += p
            for n in range(D // 8):
                for i in range(4):
                    st['o'][mt][n][l][i] *= corr[i >> 1]
    for kk in range(KN // 16):
        a = [[None]*32 for _ in range(MT)]
        h = lambda x: float(np.float16(x))
        for mt in range(MT):
            for l in range(32):
                a[mt][l] = [(h(s[mt][2*kk][l][0]), h(s[mt][2*kk][l][1])), (h(s[mt][2*kk][l][2]), h(s[mt][2*kk][l][3])),
                            (h(s[mt][2*kk+1][l][0]), h(s[mt][2*kk+1][l][1])), (h(s[mt][2*kk+1][l][2]), h(s[mt][2*kk+1][l][3]))]
        for dp in range(D // 16):
            addr = [(vs0 + kk*16 + (l & 7) + (((l >> 3) & 1) << 3), dp*16 + ((l >> 4) << 3)) for l in range(32)]
            b = ldsm_x4(ks, addr, trans=True)
            for mt in range(MT):
                mma(st['o'][mt][2*dp], a[mt], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
                mma(st['o'][mt][2*dp+1], a[mt], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])

def store_rows(D, MT, st, out, row0, length):
    for mt in range(MT):
        for l in range(32):
            g, t2 = l >> 2, (l & 3) * 2
            for r in range(2):
                L = sum(st['l'][mt][(l & ~3) + q][r] for q in range(4))
                row = row0 + mt*16 + g + 8*r
                if row < length:
                    for n in range(D // 8):
                        out[row, n*8 + t2] = st['o'][mt][n][l][2*r] / L
                        out[row, n*8 + t2 + 1] = st['o'][mt][n][l][2*r+1] / L

def new_state(D, MT):
    return {'o': [[[[0.0]*4 for _ in range(32)] for _ in range(D // 8)] for _ in range(MT)],
            'm': [[[-np.inf]*2 for _ in range(32)] for _ in range(MT)],
            'l': [[[0.0]*2 for _ in range(32)] for _ in range(MT)]}

def reference(q, k, v):
    s = q @ k.T / np.sqrt(q.shape[1]); s -= s.max(1, keepdims=True); p = np.exp(s); p /= p.sum(1, keepdims=True)
    return p @ v

def fa_warp(D, length, warp, q0, scale_in=1.0):
    """The tiled kernel, one warp of one block: Q via smem + ldmatrix, K/V tiles of 64."""
    KN, MT, LD = 64, 2, D + 8
    q = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float) * scale_in
    k = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float) * scale_in
    v = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float)
    qs = np.zeros((128, LD))
    nq = min(128, length - q0); qs[:nq, :D] = q[q0:q0 + nq]
    row0 = warp * 32
    qf = [[None]*(D // 16) for _ in range(MT)]
    for mt in range(MT):
        for kd in range(D // 16):
            addr = [(row0 + mt*16 + (l & 15), kd*16 + ((l >> 4) << 3)) for l in range(32)]
            qf[mt][kd] = ldsm_x4(qs, addr)
    st = new_state(D, MT)
    scale = 1 / np.sqrt(D) * np.log2(np.e)
    for tile in range((length + KN - 1) // KN):
        k1 = tile * KN
        sm = np.zeros((2 * KN, LD)); n = min(KN, length - k1)
        sm[:n, :D] = k[k1:k1 + n]; sm[KN:KN + n, :D] = v[k1:k1 + n]
        attend_chunk(D, KN, MT, qf, sm, 0, KN, length - k1, scale, st)
    out = np.full((length - q0, D), np.nan)
    store_rows(D, MT, st, out, row0, length - q0)
    want = reference(q, k, v)[q0:]
    rows = slice(row0, min(row0 + 32, length - q0))
    err = np.abs(out[rows] - want[rows]).max()
    print(f"tiled D={D} len={length} q0={q0} warp={warp}: max err {err:.2e}")
    assert err < 2e-3, err

def short_warp(D, length, part):
    """The short kernel, one warp: Q fragments read directly, K/V whole in smem, chunks of 32."""
    KN, MT, LD = 32, 2, D + 8
    q = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float) * 2
    k = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float) * 2
    v = rng.uniform(-1, 1, (length, D)).astype(np.float16).astype(float)
    row0 = part * 32
    qf = [[None]*(D // 16) for _ in range(MT)]
    for mt in range(MT):
        for kd in range(D // 16):
            regs = []
            for l in range(32):
                g, t2 = l >> 2, (l & 3) * 2
                r0 = row0 + mt*16 + g; r1 = r0 + 8; c = kd*16 + t2
                get = lambda r, c: (q[r, c], q[r, c + 1]) if r < length else (0.0, 0.0)
                regs.append([get(r0, c), get(r1, c), get(r0, c + 8), get(r1, c + 8)])
            qf[mt][kd] = regs
    sm = np.zeros((256, LD)); sm[:length, :D] = k; sm[128:128 + length, :D] = v
    st = new_state(D, MT)
    scale = 1 / np.sqrt(D) * np.log2(np.e)
    for k0 in range(0, length, KN):
        attend_chunk(D, KN, MT, qf, sm, k0, 128 + k0, length - k0, scale, st)
    out = np.full((length, D), np.nan)
    store_rows(D, MT, st, out, row0, length)
    want = reference(q, k, v)
    rows = slice(row0, min(row0 + 32, length))
    err = np.abs(out[rows] - want[rows]).max()
    print(f"short D={D} len={length} part={part}: max err {err:.2e}")
    assert err < 2e-3, err

for D in (32, 64):
    fa_warp(D, 1, 0, 0)
    fa_warp(D, 65, 1, 0, 3.0)
    fa_warp(D, 200, 3, 0)
    fa_warp(D, 200, 2, 128, 2.0)
    short_warp(D, 7, 0)
    short_warp(D, 100, 3)
    short_warp(D, 45, 1)
print("ok")
