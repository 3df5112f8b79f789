"""The convolutions of conv.py as gathers and plain matrix products, in few kernel launches.

Read minivae/conv.py first: the same im2col / col2im, laid out for a GPU. conv.py's im2col is a
loop over the kernel's kh*kw offsets, a strided copy each, and col2im the same loop with +=: 2 kh
kw kernels, 32 for ConvVAE's 4x4 kernels; and its products are batched over the images. Here:

* Images are batch-last inside a stack of convolutions, (C, H, W, N) as in the fast tier, and
  the column matrix of a batch is one 2-D matrix (C*kh*kw, Ho*Wo*N): a convolution is then one
  product K (F, C*kh*kw) @ cols, whose result (F, Ho*Wo*N) is the next batch-last image. cuBLAS
  takes one 2-D product with no copy (a batched product of a 2-D weight against 3-D columns goes
  through pointer arrays, 4 launches; a transposed column block is copied first).
* im2col is one gather, `take`, through an index made once on the host: every column entry names
  the pixel it copies, as a position in the image flattened, and the padding names one extra
  element past the image's end, which holds zero (the image lives in a "slot buffer": its
  storage and that zero, see `slot`). The index reads either layout: batch-first (N, C, H, W)
  images, such as the model's input, need no transpose first.
* col2im, im2col's adjoint, sends every column entry back to its pixel, adding the entries of
  the same pixel. Here it is a gather too: for every pixel, the (at most r) column entries that
  land on it, in conv.col2im's order, padded with the zero slot, gathered into (pixels, r) and
  summed along r: two launches, and the same sum in the same order every run (a scatter-add,
  cupy.add.at, adds with atomics in whatever order the threads arrive). The pixels come out in
  either layout, so the decoder's last layer writes the batch-first logits directly.

The indices depend only on the geometry, the batch size and the layouts; they are kept on the
device, one per combination. tests/test_tiers.py checks these functions against conv.py over
every geometry the gradient checks use.
"""

import numpy as np

from minivae.backend import array_module
from minivae.conv import conv_output_size

_INDEX = {}            # (kind, geometry, layout, array module) -> index array on the device


def image_shape(shape, layout):
    """(N, C, H, W) of an image batch of `shape` in `layout` ("first": N, C, H, W; "last":
    C, H, W, N)."""
    return tuple(shape) if layout == "first" else (shape[3],) + tuple(shape[:3])


def laid_out(nchw, layout):
    """The shape of an (N, C, H, W) batch in `layout`."""
    return tuple(nchw) if layout == "first" else tuple(nchw[1:]) + (nchw[0],)


def _pixel_positions(nchw, layout):
    """flat[n, c, h, w]: where pixel (n, c, h, w) sits in the batch flattened in `layout`."""
    N, C, H, W = nchw
    n, c, h, w = np.ogrid[:N, :C, :H, :W]
    if layout == "first":
        return ((n * C + c) * H + h) * W + w
    return ((c * H + h) * W + w) * N + n


def _sources(nchw, kh, kw, stride, padding, layout):
    """(C*kh*kw, Ho*Wo*N) int64: for every column entry, the flat position in `layout` of the
    pixel it copies, or -1 for padding."""
    N, C, H, W = nchw
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    c, i, j, oh, ow, n = np.ogrid[:C, :kh, :kw, :Ho, :Wo, :N]
    row, col = stride * oh + i - padding, stride * ow + j - padding
    inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
    flat = _pixel_positions(nchw, layout)[n, c, np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)]
    return np.where(inside, flat, -1).reshape(C * kh * kw, Ho * Wo * N)


def column_index(nchw, kh, kw, stride, padding, layout, xp):
    """The im2col gather's index (C*kh*kw, Ho*Wo*N) into an image batch of logical shape nchw
    stored in `layout`, flattened, followed by its zero slot (position N*C*H*W)."""
    key = ("columns", tuple(nchw), kh, kw, stride, padding, layout, xp)
    index = _INDEX.get(key)
    if index is None:
        src = _sources(nchw, kh, kw, stride, padding, layout)
        index = _INDEX[key] = xp.asarray(np.where(src < 0, int(np.prod(nchw)), src))
    return index


def pixel_index(nchw, kh, kw, stride, padding, layout, xp):
    """The col2im gather's index (N*C*H*W, r): for every pixel of the batch in `layout` order,
    the positions in the column matrix (C*kh*kw, Ho*Wo*N) flattened of the entries that came
    from it, in conv.col2im's order (kernel offsets i, then j), padded with the zero slot past
    the column matrix's end."""
    key = ("pixels", tuple(nchw), kh, kw, stride, padding, layout, xp)
    index = _INDEX.get(key)
    if index is None:
        src = _sources(nchw, kh, kw, stride, padding, layout).ravel()
        order = np.argsort(src, kind="stable")              # entries by pixel, (i, j) order kept
        order = order[src[order] >= 0]
        pixels = src[order]
        counts = np.bincount(pixels, minlength=int(np.prod(nchw)))
        rank = np.arange(pixels.size) - np.repeat(np.cumsum(counts) - counts, counts)
        host = np.full((counts.size, max(1, int(counts.max()))), src.size, np.int64)
        host[pixels, rank] = order
        index = _INDEX[key] = xp.asarray(host)
    return index


def slot(buffers, key, shape, dtype, xp):
    """(view, buffer): a kept buffer of prod(shape) + 1 elements whose last stays zero (the
    gathers' padding), and the view of the rest shaped `shape`, for a layer to write into; made
    once per key, shape and dtype and kept for the layer's life (buffers: the layer's dict), so
    a CUDA graph that writes it never finds it handed to something else."""
    size = int(np.prod(shape))
    full_key = (key, tuple(shape), np.dtype(dtype).str)
    buf = buffers.get(full_key)
    if buf is None:
        buf = buffers[full_key] = xp.zeros(size + 1, dtype=dtype)
    return buf[:size].reshape(shape), buf


def im2col(buf, nchw, kh, kw, stride, padding, layout):
    """conv.im2col of an image batch stored in a slot buffer `buf` in `layout`: the columns
    (C*kh*kw, Ho*Wo*N), one gather."""
    xp = array_module(buf)
    return xp.take(buf, column_index(nchw, kh, kw, stride, padding, layout, xp))


def col2im(buf, nchw, kh, kw, stride, padding, layout):
    """conv.col2im of a column matrix (C*kh*kw, Ho*Wo*N) stored in a slot buffer `buf`: the image
    batch of logical shape nchw in `layout`, overlaps summed; a gather and a sum."""
    xp = array_module(buf)
    index = pixel_index(nchw, kh, kw, stride, padding, layout, xp)
    return xp.take(buf, index).sum(axis=1).reshape(laid_out(nchw, layout))
