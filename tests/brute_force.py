"""Brute-force NumPy versions of the DESIGN.md math: loops over every cell and pixel, float64, no cleverness.
The reference implementation (fastmsfd/ops/reference.py) is tested against these."""
import math

import numpy as np

EPS = 1e-6


def distance(t, s, alpha, beta):
    B, C, h, w = t.shape
    d = np.zeros((B, h, w))
    for b in range(B):
        for i in range(h):
            for j in range(w):
                tv, sv = t[b, :, i, j].astype(np.float64), s[b, :, i, j].astype(np.float64)
                cos = tv @ sv / (max(np.linalg.norm(tv), EPS) * max(np.linalg.norm(sv), EPS))
                d[b, i, j] = alpha * np.sum((tv - sv) ** 2) / C + beta * (1 - cos)
    return d


def gaussian(out_len, n, sigma, radius=None):
    spacing = out_len / n
    r = 3 * sigma if radius is None else radius
    r = max(r, spacing / 2)
    G = np.zeros((out_len, n))
    for y in range(out_len):
        for i in range(n):
            u = y - ((i + 0.5) * spacing - 0.5)
            G[y, i] = 0.0 if abs(u) > r else math.exp(-u * u / (2 * sigma * sigma))
        G[y] /= G[y].sum()
    return G


def upsample(d, Gr, Gc):
    B, h, w = d.shape
    H, W = Gr.shape[0], Gc.shape[0]
    A = np.zeros((B, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                A[b, y, x] = sum(Gr[y, i] * d[b, i, j] * Gc[x, j] for i in range(h) for j in range(w))
    return A


def aggregate(maps, weights, mode):
    w = [wl * m for wl, m in zip(weights, maps)]
    if mode == "sum":
        return sum(w)
    if mode == "mean":
        return sum(w) / len(w)
    if mode == "max":
        return np.max(np.stack(w), axis=0)
    out = np.ones_like(w[0])
    for m in w:
        out = out * m
    return out


def border_statistics(maps, smooth):
    """Per-ring mean and std of (N, H, W) maps, pooled over rings with Gaussian weights, std floored at a tenth
    of its median over rings; spread back to (H, W). Every pixel visited one at a time."""
    N, H, W = maps.shape
    ring = np.array([[min(y, x, H - 1 - y, W - 1 - x) for x in range(W)] for y in range(H)])
    R = ring.max() + 1
    means, stds = np.zeros(R), np.zeros(R)
    for r in range(R):
        wsum = s1 = s2 = 0.0
        for y in range(H):
            for x in range(W):
                q = ring[y, x]
                w = (1.0 if q == r else 0.0) if smooth == 0 else math.exp(-(r - q) ** 2 / (2 * smooth ** 2))
                for n in range(N):
                    v = float(maps[n, y, x])
                    wsum, s1, s2 = wsum + w, s1 + w * v, s2 + w * v * v
        means[r] = s1 / wsum
        stds[r] = math.sqrt(max(s2 / wsum - means[r] ** 2, 0.0))
    stds = np.maximum(stds, max(0.1 * np.median(stds), 1e-12))
    return means[ring], stds[ring]
