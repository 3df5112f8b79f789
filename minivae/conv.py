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
    strided copies below moves runs of N numbers (not rows of Wo, which are short in small
    images); and the convolution is one plain GEMM with no hidden transposes of cols, the
    largest array of the layer.
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


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: cols (kh*kw*C, Ho*Wo*N) -> x (C, H, W, N), overlaps summed.

    Returns a view into the padded sum (no copy to drop the border).
    """
    xp = array_module(cols)
    C, H, W, N = x_shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    p = padding
    cols = cols.reshape(kh, kw, C, Ho, Wo, N)
    xpad = xp.zeros((C, H + 2 * p, W + 2 * p, N), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xpad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += cols[i, j]
    return xpad[:, p:p + H, p:p + W]


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
    """
    F, C, kh, kw = W.shape
    cols = weights_as_matrix(W).T @ y.reshape(F, -1)           # (kh*kw*C, Ho*Wo*N)
    return col2im(cols, (C,) + tuple(out_hw) + y.shape[3:], kh, kw, stride, padding)


def conv2d_weight_grad(dy, cols, w_shape):
    """dL/dW of conv2d: dy (F, Ho, Wo, N), cols = im2col(x) -> (F, C, kh, kw).

    y = W cols (as matrices), so dW = dy cols^T, summing over every output pixel of the batch.
    """
    F, C, kh, kw = w_shape
    dW = dy.reshape(F, -1) @ cols.T                            # (F, kh*kw*C)
    return array_module(dW).ascontiguousarray(dW.reshape(F, kh, kw, C).transpose(0, 3, 1, 2))
