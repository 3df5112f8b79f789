"""The convolution as loops over every output pixel (cs231n's conv_forward_naive): the reference
the plain tier's conv.py is checked against. Slow, and obviously right; tests only."""

import numpy as np


def conv_forward_naive(x, W, b, stride, padding):
    """y[n, f, oh, ow] = sum_{c,i,j} W[f, c, i, j] xpad[n, c, s*oh + i, s*ow + j] + b[f]."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    s, p = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    Ho, Wo = (H + 2 * p - kh) // s + 1, (Wd + 2 * p - kw) // s + 1
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for oh in range(Ho):
                for ow in range(Wo):
                    patch = xpad[n, :, s * oh:s * oh + kh, s * ow:s * ow + kw]
                    y[n, f, oh, ow] = np.sum(patch * W[f]) + b[f]
    return y


def conv_backward_naive(dy, x, W, stride, padding):
    """(dx, dW, db) of conv_forward_naive, by the same loops: every output pixel sends dy back to
    the patch it read (dx) and to the weights that read it (dW)."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    s, p = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxpad, dW = np.zeros_like(xpad), np.zeros_like(W)
    for n in range(N):
        for f in range(F):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    rows, cols = slice(s * oh, s * oh + kh), slice(s * ow, s * ow + kw)
                    dxpad[n, :, rows, cols] += dy[n, f, oh, ow] * W[f]
                    dW[f] += dy[n, f, oh, ow] * xpad[n, :, rows, cols]
    return dxpad[:, :, p:p + H, p:p + Wd], dW, dy.sum(axis=(0, 2, 3))
