"""Convolutions as matrix products: the arithmetic behind Conv2d and ConvTranspose2d (NCHW).

A 2-D convolution (strictly a cross-correlation, as in PyTorch) maps images x (N, C, H, W) to
y (N, F, Ho, Wo) through a weight K (F, C, kh, kw), stride s and zero padding p:

    y[n, f, oh, ow] = sum_{c, i, j} K[f, c, i, j] * xpad[n, c, s*oh + i, s*ow + j]       (1)

with Ho = floor((H + 2p - kh) / s) + 1 (likewise Wo), xpad being x with p zeros on each side.

im2col copies the pixels each output position sees into one column,

    cols[n, (c, i, j), (oh, ow)] = xpad[n, c, s*oh + i, s*ow + j],

so (1) is a matrix product per sample, y[n] = Km @ cols[n] with Km = K.reshape(F, C*kh*kw).
Everything else follows because (1) is linear in x and in K:

    conv2d(x, K)               y  = Km @ im2col(x)
    conv_transpose2d(y, K)     x  = col2im(Km^T @ y), the adjoint of conv2d:
                                    <conv2d(x, K), y> = <x, conv_transpose2d(y, K)> for all x, y
    conv2d_weight_grad(x, dy)  dK = sum_n dy[n] @ im2col(x)[n]^T

(H and W are always an image's height and width here; the layers call K their parameter "W".)

The transposed convolution (ConvTranspose2d's forward, Conv2d's input gradient) is that adjoint:
each output pixel's value, spread through the kernel, summed back onto the pixels it came from.
minivae/fast/conv.py computes the same functions faster on NumPy; read this file first.
"""

from minivae.backend import array_module


def conv_output_size(size, kernel, stride, padding):
    """Spatial size after a Conv2d: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_output_size(size, kernel, stride, padding):
    """Spatial size after a ConvTranspose2d: (size - 1) s - 2p + k."""
    return (size - 1) * stride - 2 * padding + kernel


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo): one column per output pixel.

    A loop over the kh*kw kernel offsets (i, j), as in Chainer's conv.py: what offset (i, j)
    sees from every output position at once is one strided slice of the padded x.
    """
    xp = array_module(x)
    N, C, H, W = x.shape
    s, p = stride, padding
    Ho, Wo = conv_output_size(H, kh, s, p), conv_output_size(W, kw, s, p)
    xpad = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i:i + s * Ho:s, j:j + s * Wo:s]
    return cols.reshape(N, C * kh * kw, Ho * Wo)


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W), overlaps summed.

    The same loop with +=: every column goes back onto the pixels it was copied from, so a pixel
    that sat in several receptive fields receives the sum of its copies. (No np.add.at: within
    one offset (i, j) the slice's pixels are distinct.)
    """
    xp = array_module(cols)
    N, C, H, W = x_shape
    s, p = stride, padding
    Ho, Wo = conv_output_size(H, kh, s, p), conv_output_size(W, kw, s, p)
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    xpad = xp.zeros((N, C, H + 2 * p, W + 2 * p), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xpad[:, :, i:i + s * Ho:s, j:j + s * Wo:s] += cols[:, :, i, j]
    return xpad[:, :, p:p + H, p:p + W]


def conv2d(x, K, stride, padding):
    """Formula (1): x (N, C, H, W), K (F, C, kh, kw) -> y (N, F, Ho, Wo)."""
    F, C, kh, kw = K.shape
    N, _, H, W = x.shape
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    cols = im2col(x, kh, kw, stride, padding)                     # (N, C*kh*kw, Ho*Wo)
    return (K.reshape(F, -1) @ cols).reshape(N, F, Ho, Wo)        # one product per sample


def conv_transpose2d(y, K, stride, padding, x_hw):
    """The adjoint of conv2d: y (N, F, Ho, Wo), K (F, C, kh, kw) -> x (N, C, H, W), (H, W) = x_hw.

    conv2d is y[n] = Km @ im2col(x)[n]; its adjoint runs the two steps backwards, each
    transposed: the columns Km^T @ y[n], then col2im puts them back onto the image.
    """
    F, C, kh, kw = K.shape
    N = y.shape[0]
    cols = K.reshape(F, -1).T @ y.reshape(N, F, -1)               # (N, C*kh*kw, Ho*Wo)
    return col2im(cols, (N, C) + tuple(x_hw), kh, kw, stride, padding)


def conv2d_weight_grad(x, dy, kernel_size, stride, padding):
    """dL/dK (F, C, kh, kw) for y = conv2d(x, K), from x (N, C, H, W) and dy = dL/dy (N, F, Ho, Wo).

    y[n] = Km @ cols[n] with cols = im2col(x), so each weight Km[f, k] multiplies cols[n, k, q]
    into y[n, f, q] for every sample n and output pixel q: dKm = sum_n dy[n] @ cols[n]^T.
    """
    kh, kw = kernel_size
    N, F = dy.shape[:2]
    cols = im2col(x, kh, kw, stride, padding)                     # (N, C*kh*kw, Ho*Wo)
    dK = array_module(x).tensordot(dy.reshape(N, F, -1), cols, axes=([0, 2], [0, 2]))
    return dK.reshape(F, x.shape[1], kh, kw)
