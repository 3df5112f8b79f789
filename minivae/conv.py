"""The three primitives behind Conv2d and ConvTranspose2d.

A 2-D convolution (strictly, a cross-correlation, as in PyTorch) of images x with weights
W (F, C, kh, kw) is a matrix product once every receptive field is laid out as a column:

    im2col:  cols[(i, j, c), (oh, ow, n)] = xpad[c, i + s*oh, j + s*ow, n]   (kh*kw*C, Ho*Wo*N)
    conv2d:  y[f, oh, ow, n] = sum_{i,j,c} W[f, c, i, j] * cols[(i, j, c), (oh, ow, n)]
             i.e. the matrix product W (F, kh*kw*C) @ cols, read as (F, Ho, Wo, N)

Everything here works on batch-last images (C, H, W, N): then the product's output is already an
image in the same layout, with nothing to transpose, and the strided copies move runs of N numbers.
The layers accept NCHW (N, C, H, W) by default and convert with batch_last / batch_first; a model
that keeps a whole stack of convolutions batch-last (layout="CHWN") converts once at each end.

im2col is a loop over the kh*kw kernel positions, each one strided slice of the padded input
(Chainer's `conv.py` does the same). Everything in conv2d is linear in x, so its adjoint -- the map
with <conv2d(x), y> = <x, conv2d_transpose(y)> for all x, y -- undoes each step in reverse order:
the matrix product becomes the product with W transposed, and im2col becomes col2im, which *adds*
each column back onto the pixel it was copied from (a pixel that sat in several receptive fields
receives several contributions). That adjoint is exactly the transposed convolution, so

    Conv2d.forward          = conv2d              ConvTranspose2d.forward  = conv2d_transpose
    Conv2d.backward dx      = conv2d_transpose    ConvTranspose2d.backward dx = conv2d
    both layers' dW         = conv2d_weight_grad (with the roles of input and output swapped)

The transposed convolution can also be computed without col2im's scattered sums: split the padded
output by row and column mod s into s*s "phases"; each phase is then an ordinary stride-1 conv
of y (see _conv2d_transpose_gather). conv2d_transpose uses whichever form has fewer columns.

Output sizes: conv2d gives Ho = floor((H + 2p - kh) / s) + 1; conv2d_transpose, given an input of
size Ho, produces H = (Ho - 1) s - 2p + kh (the size a conv2d would map back onto Ho exactly).
"""

import numpy as np

from minivae.backend import array_module


def conv_output_size(size, kernel, stride, padding):
    """Spatial size after a Conv2d: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_output_size(size, kernel, stride, padding):
    """Spatial size after a ConvTranspose2d: (size - 1) s - 2p + k."""
    return (size - 1) * stride - 2 * padding + kernel


def im2col(x, kh, kw, stride, padding):
    """x (C, H, W, N) -> cols (kh*kw*C, Ho*Wo*N): one column per output pixel.

    The batch index runs fastest in x, in its padded copy and in cols, so each of the kh*kw
    strided copies below moves runs of N numbers; and the convolution is one plain GEMM with
    no hidden transposes of cols, the largest array of the layer.
    """
    xp = array_module(x)
    C, H, W, N = x.shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    p = padding
    xpad = x
    if p:
        xpad = xp.zeros((C, H + 2 * p, W + 2 * p, N), dtype=x.dtype)
        xpad[:, p:p + H, p:p + W] = x
    cols = xp.empty((kh, kw, C, Ho, Wo, N), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[i, j] = xpad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return cols.reshape(kh * kw * C, Ho * Wo * N)


def _phase_slices(size, stride, padding, a):
    """Where the rows of x sit in phase a of the padded x: (rows of x, rows of the phase).

    Phase a holds padded rows a, a + s, a + 2s, ...; padded row r is row r - p of x. So its rows
    of x are h = first, first + s, ... with (h + p) % s == a, at phase index (h + p - a) / s.
    """
    first = (a - padding) % stride
    count = len(range(first, size, stride))
    start = (first + padding - a) // stride
    return slice(first, size, stride), slice(start, start + count)


def _phase_shape(x_shape, stride, padding, a, b):
    """Shape of phase (a, b) of the padded x: the padded rows a, a + s, ... and columns b, b + s, ...

    phase[c, u, v, n] = xpad[c, a + s*u, b + s*v, n], so a stride-s slice of xpad is a plain
    (unit-stride) slice of one phase, in which whole rows of numbers are contiguous.
    """
    C, H, W, N = x_shape
    return (C, len(range(a, H + 2 * padding, stride)), len(range(b, W + 2 * padding, stride)), N)


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: cols (kh*kw*C, Ho*Wo*N) -> x (C, H, W, N), overlaps summed.

    Each phase of the padded x (see _phase_shape) collects the kernel offsets that land on it:
    offset (i, j) reaches padded rows i + s*oh, i.e. rows i//s + oh of phase i % s. One phase
    at a time, in a buffer of its own, the sum stays in cache and adds contiguous rows (20%
    faster than adding strided slices into the padded image); then its rows of x are copied out.
    """
    xp = array_module(cols)
    C, H, W, N = x_shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    cols = cols.reshape(kh, kw, C, Ho, Wo, N)
    x = xp.empty(x_shape, dtype=cols.dtype)
    for a in range(stride):
        x_rows, p_rows = _phase_slices(H, stride, padding, a)
        for b in range(stride):
            x_cols, p_cols = _phase_slices(W, stride, padding, b)
            shape = _phase_shape(x_shape, stride, padding, a, b)
            if a >= kh or b >= kw:              # no kernel offset lands on this phase
                phase = xp.zeros(shape, dtype=cols.dtype)
            else:                               # offset (a, b) covers [:Ho, :Wo]; zero the rest
                phase = xp.empty(shape, dtype=cols.dtype)
                phase[:, :Ho, :Wo] = cols[a, b]
                phase[:, Ho:] = 0
                phase[:, :Ho, Wo:] = 0
            for i in range(a, kh, stride):
                for j in range(b, kw, stride):
                    u, v = i // stride, j // stride
                    if u or v:
                        phase[:, u:u + Ho, v:v + Wo] += cols[i, j]
            x[:, x_rows, x_cols] = phase[:, p_rows, p_cols]
    return x


def weights_as_matrix(W):
    """W (F, C, kh, kw) -> (F, kh*kw*C), rows ordered like the rows of cols."""
    F = W.shape[0]
    return W.transpose(0, 2, 3, 1).reshape(F, -1)


def batch_last(x):
    """(N, C, H, W) -> (C, H, W, N), the layout the functions above work in.

    Copied 8 samples at a time: a plain transposed copy gathers one number per cache line it
    reads, while 8 samples at once write 32-byte runs and read 8 streams (3-4x faster with
    NumPy; on a GPU one copy is best).
    """
    xp = array_module(x)
    out = xp.empty(x.shape[1:] + x.shape[:1], dtype=x.dtype)
    if xp is not np:
        out[...] = x.transpose(1, 2, 3, 0)
        return out
    for k in range(0, x.shape[0], 8):
        out[..., k:k + 8] = x[k:k + 8].transpose(1, 2, 3, 0)
    return out


def batch_first(x):
    """(C, H, W, N) -> (N, C, H, W): back to the layers' default layout."""
    return array_module(x).ascontiguousarray(x.transpose(3, 0, 1, 2))


def conv2d(x, W, stride, padding):
    """x (C, H, W, N), W (F, C, kh, kw) -> y (F, Ho, Wo, N), cols.  No bias.

    The columns are returned too: the weight gradient needs them, and recomputing is a waste.
    """
    F, C, kh, kw = W.shape
    cols = im2col(x, kh, kw, stride, padding)                  # (kh*kw*C, Ho*Wo*N)
    y = weights_as_matrix(W) @ cols                            # (F, Ho*Wo*N)
    Ho = conv_output_size(x.shape[1], kh, stride, padding)
    Wo = conv_output_size(x.shape[2], kw, stride, padding)
    return y.reshape(F, Ho, Wo, x.shape[3]), cols


def conv2d_transpose(y, W, stride, padding, out_hw):
    """The adjoint of conv2d in x: y (F, Ho, Wo, N), W (F, C, kh, kw) -> x (C, H, W, N).

    out_hw = (H, W) picks the output size (several H map onto the same Ho when s > 1).
    Two ways to the same numbers; the one with the smaller column matrix is used:

    scatter  the adjoint read literally: cols = W^T y, then col2im adds every column back
             onto the pixels it came from (kh*kw*C rows of Ho*Wo*N columns).
    gather   each output phase is an ordinary stride-1 conv of y (see _conv2d_transpose_gather),
             whose columns hold ceil(kh/s)*ceil(kw/s)*F rows: 4x fewer than scatter's when
             k = 2s and F = C, and every output number is written once, never accumulated.
    """
    F, C, kh, kw = W.shape
    Ho, Wo = y.shape[1:3]
    th, tw = -(-kh // stride), -(-kw // stride)                 # ceil(k / s)
    hr, wr = -(-(out_hw[0] + 2 * padding) // stride), -(-(out_hw[1] + 2 * padding) // stride)
    gather = th * tw * F * hr * wr < kh * kw * C * Ho * Wo
    return (_conv2d_transpose_gather if gather else _conv2d_transpose_scatter)(
        y, W, stride, padding, out_hw)


def _conv2d_transpose_scatter(y, W, stride, padding, out_hw):
    F, C, kh, kw = W.shape
    cols = weights_as_matrix(W).T @ y.reshape(F, -1)           # (kh*kw*C, Ho*Wo*N)
    return col2im(cols, (C,) + tuple(out_hw) + y.shape[3:], kh, kw, stride, padding)


def _conv2d_transpose_gather(y, W, stride, padding, out_hw):
    """conv2d_transpose computed phase by phase ("sub-pixel convolution").

    The scatter form puts W[f, c, i, j] y[f, oh, ow] on padded pixel (s*oh + i, s*ow + j). Fix a
    phase (a, b) of the padded output, the pixels (a + s*m, b + s*n): the kernel offsets landing
    there are i = a + s*u, j = b + s*v, coming from oh = m - u, ow = n - v, so

        phase_ab[c, m, n] = sum_{u, v, f} W[f, c, a + s*u, b + s*v] * y[f, m - u, n - v]

    -- a stride-1 correlation of y, zero-padded, with the th x tw kernel of offsets (u, v)
    flipped (W is zero for offsets past kh, kw). One im2col of the padded y serves all s*s
    phases, and one GEMM computes them all, with rows (a, b, c) in the weight matrix.
    """
    F, C, kh, kw = W.shape
    _, Ho, Wo, N = y.shape
    H, Wd = out_hw
    s, xp = stride, array_module(y)
    th, tw = -(-kh // s), -(-kw // s)
    hr, wr = -(-(H + 2 * padding) // s), -(-(Wd + 2 * padding) // s)  # rows of the largest phase
    # Weights: (F, C, th*s, tw*s) zero-padded, kernel row i = u*s + a, u flipped (tap t = th-1-u).
    Wp = xp.zeros((F, C, th * s, tw * s), dtype=W.dtype)
    Wp[:, :, :kh, :kw] = W
    Wp = Wp.reshape(F, C, th, s, tw, s)[:, :, ::-1, :, ::-1, :]          # (f, c, t_h, a, t_w, b)
    Wg = Wp.transpose(3, 5, 1, 2, 4, 0).reshape(s * s * C, th * tw * F)   # rows (a, b, c)
    # y with th-1 zero rows above (m - u < 0) and enough below for the largest phase.
    ypad = xp.zeros((F, hr + th - 1, wr + tw - 1, N), dtype=y.dtype)
    ypad[:, th - 1:th - 1 + Ho, tw - 1:tw - 1 + Wo] = y
    phases = (Wg @ im2col(ypad, th, tw, 1, 0)).reshape(s, s, C, hr, wr, N)
    x = xp.empty((C, H, Wd, N), dtype=y.dtype)
    for a in range(s):
        x_rows, p_rows = _phase_slices(H, s, padding, a)
        for b in range(s):
            x_cols, p_cols = _phase_slices(Wd, s, padding, b)
            x[:, x_rows, x_cols] = phases[a, b][:, p_rows, p_cols]
    return x


def conv2d_weight_grad(dy, cols, w_shape):
    """dL/dW of conv2d: dy (F, Ho, Wo, N), cols = im2col(x) -> (F, C, kh, kw).

    y = W cols (as matrices), so dW = dy cols^T, summing over every output pixel of the batch.
    """
    F, C, kh, kw = w_shape
    dW = dy.reshape(F, -1) @ cols.T                            # (F, kh*kw*C)
    return array_module(dW).ascontiguousarray(dW.reshape(F, kh, kw, C).transpose(0, 3, 1, 2))
