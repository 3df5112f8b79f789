"""The three primitives behind Conv2d and ConvTranspose2d.

A 2-D convolution (strictly, a cross-correlation, as in PyTorch) of x (N, C, H, W) with weights
W (F, C, kh, kw) is a matrix product once every receptive field is laid out as a column:

    im2col:  cols[n, c, i, j, oh, ow] = xpad[n, c, i + s*oh, j + s*ow]     (N, C, kh, kw, Ho, Wo)
    conv2d:  y[n, f, oh, ow] = sum_{c,i,j} W[f, c, i, j] * cols[n, c, i, j, oh, ow]

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

from minivae.backend import array_module


def conv_output_size(size, kernel, stride, padding):
    """Spatial size after a Conv2d: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose_output_size(size, kernel, stride, padding):
    """Spatial size after a ConvTranspose2d: (size - 1) s - 2p + k."""
    return (size - 1) * stride - 2 * padding + kernel


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (N, C, kh, kw, Ho, Wo); cols[..., i, j, :, :] is one strided slice."""
    xp = array_module(x)
    N, C, H, W = x.shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return cols


def col2im(cols, H, W, stride, padding):
    """The adjoint of im2col: cols (N, C, kh, kw, Ho, Wo) -> x (N, C, H, W), overlaps summed."""
    xp = array_module(cols)
    N, C, kh, kw, Ho, Wo = cols.shape
    x = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += cols[:, :, i, j]
    return x[:, :, padding:padding + H, padding:padding + W]


def conv2d(x, W, stride, padding):
    """x (N, C, H, W), W (F, C, kh, kw) -> y (N, F, Ho, Wo), cols.  No bias.

    The columns are returned too: the weight gradient needs them, and recomputing is a waste.
    """
    xp = array_module(x)
    cols = im2col(x, W.shape[2], W.shape[3], stride, padding)       # (N, C, kh, kw, Ho, Wo)
    y = xp.tensordot(cols, W, axes=((1, 2, 3), (1, 2, 3)))          # (N, Ho, Wo, F)
    return xp.ascontiguousarray(y.transpose(0, 3, 1, 2)), cols


def conv2d_transpose(y, W, stride, padding, out_hw):
    """The adjoint of conv2d in x: y (N, F, Ho, Wo), W (F, C, kh, kw) -> x (N, C, H, W).

    out_hw = (H, W) picks the output size (several H map onto the same Ho when s > 1).
    """
    xp = array_module(y)
    cols = xp.tensordot(W, y, axes=(0, 1))                          # (C, kh, kw, N, Ho, Wo)
    cols = cols.transpose(3, 0, 1, 2, 4, 5)                         # (N, C, kh, kw, Ho, Wo)
    return col2im(cols, out_hw[0], out_hw[1], stride, padding)


def conv2d_weight_grad(cols, dy):
    """dL/dW of conv2d: cols = im2col(x) (N, C, kh, kw, Ho, Wo), dy (N, F, Ho, Wo) -> (F, C, kh, kw).

    y[n,f,oh,ow] = sum W[f,c,i,j] cols[n,c,i,j,oh,ow], so dW[f,c,i,j] = sum_{n,oh,ow} dy * cols.
    """
    xp = array_module(cols)
    return xp.tensordot(dy, cols, axes=((0, 2, 3), (0, 4, 5)))      # (F, C, kh, kw)
