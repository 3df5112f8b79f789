"""The convolutions of conv.py in few kernel launches: im2col as one gather, col2im as one
scatter-add. Read minivae/conv.py first: these are its functions (NCHW, the same layouts), and
tests/test_tiers.py checks them against it over every geometry the gradient checks use.

conv.py's im2col is a loop over the kernel's kh*kw offsets, a strided copy each, and col2im the
same loop with +=: 2 kh kw kernels on a GPU, 32 for ConvVAE's 4x4 kernels. Here the padded image
is never made. Every column entry names the pixel it copies, as an index into the batch
flattened, with one extra zero at its end standing for the padding:

    cols.flat[j] = xz[index[j]],   xz = concatenate(x.ravel(), [0])

so im2col is one `take` (and one concatenate), and col2im, its adjoint, sends every column entry
back to the pixel it came from, one `cupyx.scatter_add` into zeros (entries of the same pixel
add up; the zero slot collects the padding's and is dropped). The index arrays depend only on
the geometry and the batch size; they are made on the host once and kept on the device.
"""

import numpy as np

from minivae.backend import array_module
from minivae.conv import conv_output_size

_INDEX = {}            # (x shape, kh, kw, stride, padding, array module) -> index array


def column_index(x_shape, kh, kw, stride, padding, xp):
    """index (N, C*kh*kw, Ho*Wo) into x flattened (N*C*H*W entries, then the zero slot): which
    pixel of x each entry of im2col(x) copies, N*C*H*W where it is padding."""
    key = (tuple(x_shape), kh, kw, stride, padding, xp)
    index = _INDEX.get(key)
    if index is None:
        N, C, H, W = x_shape
        Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
        n, c, i, j, oh, ow = np.ogrid[:N, :C, :kh, :kw, :Ho, :Wo]
        row, col = stride * oh + i - padding, stride * ow + j - padding       # in x, unpadded
        inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
        flat = ((n * C + c) * H + row) * W + col
        host = np.where(inside, flat, N * C * H * W).astype(np.int64)
        index = _INDEX[key] = xp.asarray(host.reshape(N, C * kh * kw, Ho * Wo))
    return index


def _zero_slot(x):
    """A kept one-element zero of x's dtype and module (no kernel per call)."""
    xp = array_module(x)
    key = ("zero", x.dtype, xp)
    zero = _INDEX.get(key)
    if zero is None:
        zero = _INDEX[key] = xp.zeros(1, dtype=x.dtype)
    return zero


def im2col(x, kh, kw, stride, padding):
    """conv.im2col: x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), in one gather."""
    xp = array_module(x)
    xz = xp.concatenate([x.reshape(-1), _zero_slot(x)])
    return xp.take(xz, column_index(x.shape, kh, kw, stride, padding, xp))


def col2im(cols, x_shape, kh, kw, stride, padding):
    """conv.col2im: cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W), overlaps summed, in one
    scatter-add (cupyx.scatter_add on CuPy, numpy.add.at on NumPy)."""
    xp = array_module(cols)
    xz = xp.zeros(int(np.prod(x_shape)) + 1, dtype=cols.dtype)
    index = column_index(x_shape, kh, kw, stride, padding, xp)
    if xp.__name__ == "numpy":
        np.add.at(xz, index, cols)
    else:
        import cupyx
        cupyx.scatter_add(xz, index, cols)
    return xz[:-1].reshape(x_shape)


def conv2d(x, K, stride, padding, cols=None):
    """conv.conv2d, one gather and one batched product; cols: im2col(x) when already made."""
    F, C, kh, kw = K.shape
    N, _, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    if cols is None:
        cols = im2col(x, kh, kw, stride, padding)
    return (K.reshape(F, -1) @ cols).reshape(N, F, Ho, Wo)


def conv_transpose2d(y, K, stride, padding, x_hw):
    """conv.conv_transpose2d: one batched product and one scatter-add."""
    F, C, kh, kw = K.shape
    N = y.shape[0]
    cols = K.reshape(F, -1).T @ y.reshape(N, F, -1)
    return col2im(cols, (N, C) + tuple(x_hw), kh, kw, stride, padding)


def conv2d_weight_grad(cols, dy, kernel_shape, out=None):
    """conv.conv2d_weight_grad from cols = im2col(x): sum_n dy[n] @ cols[n]^T (F, C, kh, kw),
    as one batched product and one sum, written into `out` when given."""
    N, F = dy.shape[:2]
    per_sample = dy.reshape(N, F, -1) @ cols.transpose(0, 2, 1)       # (N, F, C*kh*kw)
    if out is None:
        return per_sample.sum(axis=0).reshape(kernel_shape)
    per_sample.sum(axis=0, out=out.reshape(F, -1))
    return out
