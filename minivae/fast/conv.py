"""The convolutions of conv.py, faster on NumPy: batch-last images and two plans.

Read minivae/conv.py first: this computes the same functions (conv2d, conv_transpose2d,
conv2d_weight_grad, im2col, col2im) and tests/test_tiers.py checks that they agree over every
geometry the gradient checks use. What differs is only how the numbers are laid out and copied.

A plan turns each side of a convolution into a matrix, X = plan.input_matrix(x) and
Y = plan.output_matrix(y), such that the convolution is one matrix product with a matrix made of
W, its adjoint (the transposed convolution) is the product with its transpose, and dW is the
product of the two sides. One plan serves both layers, the roles of the two sides swapped:

                        Conv2d (x -> y)        ConvTranspose2d (y -> x)
    forward             plan.forward           plan.adjoint
    input gradient      plan.adjoint           plan.forward
    weight gradient     plan.weight_grad(X, Y), X made from the x side, Y from the y side

Two plans; conv_plan picks the one that copies fewer numbers into matrices:

  Im2colPlan  X = im2col(x), every receptive field as a column (kh*kw*C rows, Ho*Wo*N columns);
              Y = y itself. y = W X, x = col2im(W^T Y), dW = Y X^T. Twin: conv.py as it is,
              with the matrices kept in scratch buffers and X made once for forward and dW.
  PhasePlan   (stride > 1) splits the padded x by row and column mod s into s*s "phases"
              (space to depth); the strided conv is then a stride-1 conv of the phases with a
              ceil(kh/s) x ceil(kw/s) kernel. X = the phases (each pixel once, no copies),
              Y = im2col of y (ceil(kh/s)*ceil(kw/s)*F rows at y's resolution). For ConvVAE's
              32-channel 4x4 stride-2 layers, X and Y together hold 1.6x fewer numbers than
              im2col's X (whose 16x16 layer alone is 8 MB at batch 64), and nothing is summed
              into a pixel from several columns: 5-8% off the whole training step.

Images here are batch-last, (C, H, W, N): the products' outputs are then already images in
that layout, nothing is transposed, and the strided copies move runs of N numbers.
batch_last / batch_first convert (fast/layers.py's Sequential calls them at a stack's ends).
"""

from functools import cached_property

from minivae.backend import array_module
from minivae.conv import conv_output_size


def _ceil_div(a, b):
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# im2col and its adjoint, batch-last


def im2col_batch_last(x, kh, kw, stride, padding, out=None):
    """x (C, H, W, N) -> cols (kh*kw*C, Ho*Wo*N): conv.im2col's twin, batch-last.

        cols[(i, j, c), (oh, ow, n)] = xpad[c, i + s*oh, j + s*ow, n]

    A loop over the kh*kw kernel offsets, each one strided slice of the padded x. The batch
    index runs fastest in x, in its padded copy and in cols, so each copy moves runs of N.
    out: a (kh*kw*C, Ho*Wo*N) array to fill instead of a new one.
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
    shape = (kh, kw, C, Ho, Wo, N)
    cols = xp.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    for i in range(kh):
        for j in range(kw):
            cols[i, j] = xpad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return cols.reshape(kh * kw * C, Ho * Wo * N)


def col2im_batch_last(cols, x_shape, kh, kw, stride, padding):
    """cols (kh*kw*C, Ho*Wo*N) -> x (C, H, W, N): conv.col2im's twin, batch-last.

    The same loop with +=: each column goes back onto the pixels it was copied from, and a
    pixel that sat in several receptive fields receives several contributions. Returns a view
    of the padded sum without its border.
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


def _phase_slices(size, stride, padding, a):
    """Where the rows of x sit in phase a of the padded x: (rows of x, rows of the phase).

    Phase a holds padded rows a, a + s, a + 2s, ...; padded row r is row r - p of x. So its rows
    of x are h = first, first + s, ... with (h + p) % s == a, at phase index (h + p - a) / s.
    """
    first = (a - padding) % stride
    count = len(range(first, size, stride))
    start = (first + padding - a) // stride
    return slice(first, size, stride), slice(start, start + count)


# --------------------------------------------------------------------------------------------
# Plans


class Im2colPlan:
    """The convolution as W (F, kh*kw*C) @ im2col_batch_last(x); see the module docstring.

    Built for one call: weights W (F, C, kh, kw) on x of spatial size in_hw. The weight matrix
    is made once, when first needed, and serves the forward and the backward of the call.
    scratch: a dict the caller keeps from call to call, holding the plan's matrices and the
    products that are only steps on the way (see _scratch).
    """

    def __init__(self, W, in_hw, stride, padding, scratch=None):
        self.weights = W
        self.scratch = {} if scratch is None else scratch
        self.F, self.C, self.kh, self.kw = W.shape
        self.height, self.width = in_hw           # the input's size; W is the weight
        self.stride, self.padding = stride, padding
        self.Ho = conv_output_size(self.height, self.kh, stride, padding)
        self.Wo = conv_output_size(self.width, self.kw, stride, padding)

    def _scratch(self, name, shape, like):
        """self.scratch[name], an array of this shape and like's dtype, reused from call to call.

        Megabytes allocated and freed anew at every step often come back from the OS as fresh
        pages, each one a fault: 1700 per ConvVAE step, and 14-16% of its time, before the
        plans' matrices and intermediate products were kept. (The arrays a layer returns are always
        new; these are its own: X and Y, kept for the backward, and products copied out of.)
        """
        out = self.scratch.get(name)
        if out is None or out.shape != shape or out.dtype != like.dtype:
            out = self.scratch[name] = array_module(like).empty(shape, dtype=like.dtype)
        return out

    def _scratch_product(self, name, A, B):
        """A @ B, into a scratch array (for a product whose numbers are copied out next)."""
        out = self._scratch(name, (A.shape[0], B.shape[1]), A)
        return array_module(A).matmul(A, B, out=out)

    def matrix_size(self):
        """Numbers per sample that the plan copies into matrices: im2col's X."""
        return self.kh * self.kw * self.C * self.Ho * self.Wo

    @cached_property
    def matrix(self):
        """W (F, C, kh, kw) -> (F, kh*kw*C), columns ordered like the rows of im2col."""
        return self.weights.transpose(0, 2, 3, 1).reshape(self.F, -1)

    def input_matrix(self, x):
        shape = (self.kh * self.kw * self.C, self.Ho * self.Wo * x.shape[3])  # (kh*kw*C, Ho*Wo*N)
        out = self._scratch("input", shape, x)
        return im2col_batch_last(x, self.kh, self.kw, self.stride, self.padding, out)

    def output_matrix(self, y):
        return y.reshape(self.F, -1)                                        # (F, Ho*Wo*N)

    def forward(self, X):
        """y = W X, read as the image (F, Ho, Wo, N)."""
        return (self.matrix @ X).reshape(self.F, self.Ho, self.Wo, -1)

    def adjoint(self, Y):
        """x = col2im(W^T Y) (batch-last): each column's share goes back onto the pixels it came
        from."""
        N = Y.shape[1] // (self.Ho * self.Wo)
        return col2im_batch_last(self._scratch_product("adjoint", self.matrix.T, Y),
                      (self.C, self.height, self.width, N), self.kh, self.kw,
                      self.stride, self.padding)

    def weight_grad(self, X, Y):
        """y = Wm X as matrices, so dWm = dY X^T (a sum over every output pixel of the batch)."""
        dW = Y @ X.T                                                        # (F, kh*kw*C)
        dW = dW.reshape(self.F, self.kh, self.kw, self.C).transpose(0, 3, 1, 2)
        return array_module(dW).ascontiguousarray(dW)                       # (F, C, kh, kw)


class PhasePlan(Im2colPlan):
    """The strided convolution as a stride-1 convolution of the phases of x ("space to depth").

    Phase (a, b) of the padded x holds the pixels (a + s*u, b + s*v). Kernel offset i = a + s*u'
    reads padded row s*oh + i = a + s*(oh + u'): row oh + u' of phase a. So

        y[f, oh, ow] = sum_{a,b,c,u',v'} W[f, c, a + s*u', b + s*v'] phase_ab[c, oh + u', ow + v']

    a stride-1 conv with s*s*C input channels and a th x tw kernel, th = ceil(kh/s) (W is zero
    past kh). Its product runs the other way round from im2col's: Y = im2col of y, padded by
    th - 1 (the windows of y each phase pixel sees), and the phases X = P(x) are used as they are.
    With Wp (s*s*C, th*tw*F) the rearranged weights:

        adjoint   x = P^T(Wp Y)                 (P^T: the phases' pixels back in place, unpadded)
        forward   y = windows^T(Wp^T X)         (each output pixel sums its th*tw window taps)
        dWp       = X Y^T, rearranged back to (F, C, kh, kw)

    Every pixel of the phases is computed once (nothing accumulated from many columns), and for
    k = 2s with F = C the matrices hold fewer numbers than im2col's. The price: the phases are
    hr x wr = ceil((H + 2p)/s) pixels a side, a few more than Ho x Wo, and the products do more
    arithmetic than the convolution. Each product runs over only the run of phase rows it needs
    (Ho rows of a window tap, a phase's own rows of x: see _rows), which leaves the extra
    columns: 12.5% more arithmetic for 16x16 -> 8x8 (27% over all hr rows), 25% for 8x8 -> 4x4.
    """

    def __init__(self, W, in_hw, stride, padding, scratch=None):
        super().__init__(W, in_hw, stride, padding, scratch)
        s = stride
        self.th, self.tw = _ceil_div(self.kh, s), _ceil_div(self.kw, s)
        self.hr = _ceil_div(self.height + 2 * padding, s)            # rows of the largest phase
        self.wr = _ceil_div(self.width + 2 * padding, s)

    def matrix_size(self):
        """Numbers per sample in X (the phases) and Y (the windows of y)."""
        s = self.stride
        return (s * s * self.C + self.th * self.tw * self.F) * self.hr * self.wr

    @cached_property
    def matrix(self):
        """W (F, C, kh, kw) -> Wp (s*s*C, th*tw*F): rows (a, b, c), columns (t, t', f).

        Kernel row i = a + s*u' goes to window tap t = th - 1 - u' (Y's windows run upwards in
        y while u' runs downwards in x); W is zero-padded to (th*s, tw*s) first.
        """
        F, C, s, th, tw, W = self.F, self.C, self.stride, self.th, self.tw, self.weights
        Wp = array_module(W).zeros((F, C, th * s, tw * s), dtype=W.dtype)
        Wp[:, :, :self.kh, :self.kw] = W
        Wp = Wp.reshape(F, C, th, s, tw, s)[:, :, ::-1, :, ::-1, :]       # (f, c, t, a, t', b)
        return Wp.transpose(3, 5, 1, 2, 4, 0).reshape(s * s * C, th * tw * F)

    def input_matrix(self, x):
        """P(x): x (C, H, W, N) -> its s*s phases, zero-padded, as (s*s*C, hr*wr*N)."""
        s, p = self.stride, self.padding
        X = self._scratch("input", (s, s, self.C, self.hr, self.wr, x.shape[3]), x)
        X[...] = 0
        for a in range(s):
            x_rows, p_rows = _phase_slices(self.height, s, p, a)
            for b in range(s):
                x_cols, p_cols = _phase_slices(self.width, s, p, b)
                X[a, b][:, p_rows, p_cols] = x[:, x_rows, x_cols]
        return X.reshape(s * s * self.C, -1)

    def output_matrix(self, y):
        """The th x tw windows of y seen by each phase pixel: (th*tw*F, hr*wr*N)."""
        th, tw = self.th, self.tw
        F, Ho, Wo, N = y.shape
        ypad = self._scratch("padded output", (F, self.hr + th - 1, self.wr + tw - 1, N), y)
        ypad[...] = 0
        ypad[:, th - 1:th - 1 + Ho, tw - 1:tw - 1 + Wo] = y
        out = self._scratch("output", (th * tw * F, self.hr * self.wr * N), y)
        return im2col_batch_last(ypad, th, tw, 1, 0, out)

    def _rows(self, M, first, count):
        """Rows first .. first+count-1 of the phase grid of M (rows, hr*wr*N), as a matrix.

        Each phase row is wr*N contiguous numbers, so a run of rows is one matrix with a longer
        stride between its rows: a view, which BLAS takes as it is (no copy).
        """
        M = M.reshape(M.shape[0], self.hr, -1)[:, first:first + count]
        return M.reshape(M.shape[0], -1)                                # (rows, count*wr*N)

    def forward(self, X):
        """y = windows^T(Wp^T X): pixel (oh, ow) sums tap (t, t') of window (oh + u', ow + v').

        Taps of window row t = th - 1 - u' read phase rows u' .. u' + Ho - 1 only, so their
        product runs over those Ho of the hr rows.
        """
        th, tw, F, Ho, Wo = self.th, self.tw, self.F, self.Ho, self.Wo
        N = X.shape[1] // (self.hr * self.wr)
        Wt = self.matrix.T.reshape(th, tw * F, -1)                      # (t, (t', f), (a, b, c))
        y = array_module(X).empty((F, Ho, Wo, N), dtype=X.dtype)
        for t in range(th):
            u = th - 1 - t
            Z = self._scratch_product("forward", Wt[t], self._rows(X, u, Ho))
            Z = Z.reshape(tw, F, Ho, self.wr, N)                       # (t', f, oh, phase col, n)
            for t2 in range(tw):
                v = tw - 1 - t2
                if t == 0 and t2 == 0:
                    y[...] = Z[t2][:, :, v:v + Wo]
                else:
                    y += Z[t2][:, :, v:v + Wo]
        return y

    def adjoint(self, Y):
        """x = P^T(Wp Y): every needed phase pixel once, then copied into place in x.

        Phase row a holds rows of x only at p_rows (the others are padding), so its product
        runs over those rows of Y only.
        """
        s, p, C = self.stride, self.padding, self.C
        N = Y.shape[1] // (self.hr * self.wr)
        Wa = self.matrix.reshape(s, s * C, -1)                          # (a, (b, c), (t, t', f))
        x = array_module(Y).empty((C, self.height, self.width, N), dtype=Y.dtype)
        for a in range(s):
            x_rows, p_rows = _phase_slices(self.height, s, p, a)
            count = p_rows.stop - p_rows.start
            Ya = self._rows(Y, p_rows.start, count)
            phases = self._scratch_product(f"adjoint {a}", Wa[a], Ya)   # one buffer per a
            phases = phases.reshape(s, C, count, self.wr, N)            # (b, c, row, col, n)
            for b in range(s):
                x_cols, p_cols = _phase_slices(self.width, s, p, b)
                x[:, x_rows, x_cols] = phases[b][:, :, p_cols]
        return x

    def weight_grad(self, X, Y):
        """dWp = X Y^T, then the inverse of `matrix` (padding entries dropped).

        Computed as its transpose, one block of columns per window row t: Y's rows for t are
        zero but at the Ho phase rows whose window reaches into y (u' = th - 1 - t onwards, as
        in forward), so each block sums over those rows only.
        """
        F, C, s, th, tw, Ho = self.F, self.C, self.stride, self.th, self.tw, self.Ho
        xp = array_module(X)
        Yt = Y.reshape(th, tw * F, -1)                                  # (t, (t', f), positions)
        dWp = xp.empty((th, tw * F, s * s * C), dtype=X.dtype)
        for t in range(th):
            u = th - 1 - t
            xp.matmul(self._rows(Yt[t], u, Ho), self._rows(X, u, Ho).T, out=dWp[t])
        dWp = dWp.reshape(th, tw, F, s, s, C).transpose(2, 5, 0, 3, 1, 4)  # (f, c, t, a, t', b)
        dW = dWp[:, :, ::-1, :, ::-1, :].reshape(F, C, th * s, tw * s)[:, :, :self.kh, :self.kw]
        return xp.ascontiguousarray(dW)


PLANS = {"im2col": Im2colPlan, "phases": PhasePlan}


def conv_plan(W, in_hw, stride, padding, kind=None, scratch=None):
    """The plan for a conv with weights W (F, C, kh, kw) on images of in_hw = (H, W).

    kind=None picks the plan that copies fewer numbers into matrices (phases only pay for
    stride > 1); "im2col" or "phases" forces one (for tests and comparisons). scratch: see
    Im2colPlan (a layer passes its own dict).
    """
    if kind is not None:
        return PLANS[kind](W, in_hw, stride, padding, scratch)
    plan = Im2colPlan(W, in_hw, stride, padding, scratch)
    if stride > 1:
        phases = PhasePlan(W, in_hw, stride, padding, scratch)
        if phases.matrix_size() < plan.matrix_size():
            return phases
    return plan


# --------------------------------------------------------------------------------------------
# Layout conversions


def batch_last(x):
    """(N, ...) -> (..., N): the twin of x.transpose(1, ..., 0), copied 8 samples at a time.

    A plain transposed copy gathers one number per cache line it reads, while 8 samples at once
    write 32-byte runs and read 8 streams: 3-4x faster with NumPy.
    """
    xp = array_module(x)
    out = xp.empty(x.shape[1:] + x.shape[:1], dtype=x.dtype)
    for k in range(0, x.shape[0], 8):
        out[..., k:k + 8] = xp.moveaxis(x[k:k + 8], 0, -1)
    return out


def batch_first(x):
    """(..., N) -> (N, ...): back to the plain tier's layout."""
    xp = array_module(x)
    return xp.ascontiguousarray(xp.moveaxis(x, -1, 0))
