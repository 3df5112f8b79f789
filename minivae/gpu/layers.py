"""The layer set of the gpu tier: layers.py's classes, counted in kernel launches.

Read minivae/layers.py first. Each class subclasses its plain twin (same constructor, same
parameters drawn in the same order), so a model built from this set holds the same numbers; only
how forward and backward are carried out differs, and tests/test_tiers.py checks the values.

What saves launches:
* a layer's bias goes into the fused kernel of the activation after it (kernels.bias_relu, ...):
  Sequential pairs each Dense or convolution with the activation that follows it, so
  `x @ W`, then one kernel for `act(z + b)`, where the plain tier takes three;
* the activations' backward are one fused kernel each, and the weight and bias gradients are
  written straight into the arrays in self.grads (in a model: views of one flat buffer, see
  minivae/gpu/models.py) with `out=`; a convolution's bias gradient is a product with a vector
  of ones (one launch, into its place) rather than a sum over the trailing axis, which CuPy runs
  through CUB into a fresh array and then copies;
* the convolutions are gathers and 2-D products (gpu/conv.py) on batch-last images (C, H, W, N),
  as in the fast tier, and the layout changes cost nothing: a Flatten or Reshape is a view, and
  where the layout must change in memory (a batch-first input, the decoder's batch-first logits,
  a Reshape from a Dense to a convolution) the gather or the fused activation next to it reads
  or writes the other layout directly. Sequential arranges that (see Sequential).
* an activation whose output a convolution gathers from writes it into a slot buffer (gpu/conv.py:
  the image and one zero past it, which the gather reads for the padding); Sequential passes the
  buffer on, forward and backward.
"""

from minivae import layers
from minivae.backend import array_module
from minivae.gpu import conv, kernels


def _into(layer, key, like):
    """The array backward should write gradient `key` into: the one in layer.grads when it fits
    (a view of the model's flat buffer), else a new one."""
    g = layer.grads.get(key)
    if g is not None and g.shape == like.shape and g.dtype == like.dtype:
        return g
    return array_module(like).empty_like(like)


class _Buffers:
    """Arrays a layer keeps from call to call (slot buffers, a vector of ones), one per shape,
    for the layer's life."""

    def _kept(self):
        if "buffers" not in self.__dict__:
            self.buffers = {}
        return self.buffers

    def ones(self, n, like):
        """A kept vector of n ones of like's dtype and module (one per length and dtype)."""
        kept = self._kept()
        key = ("ones", n, like.dtype.str)
        if key not in kept:
            kept[key] = array_module(like).ones(n, dtype=like.dtype)
        return kept[key]

    def slot(self, key, shape, like):
        return conv.slot(self._kept(), key, shape, like.dtype, array_module(like))


class _Linear(_Buffers):
    """What Dense and the convolutions add to their plain twin: forward_linear (no bias), so
    that a Sequential or the model can put the bias into the next fused kernel; backward takes
    the slot buffer dy lies in, if any (a ConvTranspose2d gathers from it)."""

    def forward(self, x, slot=None):
        return kernels.bias_add(self.forward_linear(x, slot), self.bias_shaped())

    def _weight_grad(self, a, b):
        """dW = a @ b, written into self.grads["W"] seen as a matrix."""
        W = self.params["W"]
        out = _into(self, "W", W)
        array_module(a).matmul(a, b, out=out.reshape(W.shape[0], -1))
        self.grads["W"] = out

    def _bias_grad_rows(self, dy_rows):
        """db = dy_rows (channels, positions) @ ones, written into self.grads["b"]."""
        b = self.params["b"]
        self.grads["b"] = array_module(dy_rows).matmul(
            dy_rows, self.ones(dy_rows.shape[1], dy_rows), out=_into(self, "b", b))


class Dense(_Linear, layers.Dense):
    """Twin of layers.Dense: the product, the bias elsewhere; gradients written in place."""

    def forward_linear(self, x, slot=None):
        self.x = x                                      # (N, in)
        return x @ self.params["W"]                     # (N, out), no bias yet

    def bias_shaped(self):
        return self.params["b"]

    def backward(self, dy, slot=None):
        self._weight_grad(self.x.T, dy)                                 # (in, out)
        b = self.params["b"]                                            # (out,): the plain sum,
        self.grads["b"] = dy.sum(axis=0, out=_into(self, "b", b))      # one launch (axis 0)
        if self.skip_input_grad:
            return None
        return dy @ self.params["W"].T                                  # (N, in)


class Conv2d(_Linear, layers.Conv2d):
    """Twin of layers.Conv2d: batch-last out (F, Ho, Wo, N); the input batch-last, or batch-first
    where Sequential says so (input_layout), the gather reading it as it is."""

    LAYOUT = ("last", "last")
    input_layout = "last"

    def forward_linear(self, x, slot=None):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        if slot is None:                            # x is not in a slot buffer: copy it into one
            view, slot = self.slot("x", x.shape, x)
            view[...] = x
        self.nchw = conv.image_shape(x.shape, self.input_layout)
        self.cols = conv.im2col(slot, self.nchw, kh, kw, s, p, self.input_layout)
        W = self.params["W"]
        Ho, Wo = self.output_shape(*self.nchw[2:])
        return (W.reshape(W.shape[0], -1) @ self.cols).reshape(W.shape[0], Ho, Wo, self.nchw[0])

    def bias_shaped(self):
        return self.params["b"].reshape(-1, 1, 1, 1)

    def backward(self, dy, slot=None):
        # As layers.Conv2d, with the columns as one matrix: dW = dY cols^T, db = dY 1,
        # dx = col2im(W^T dY).
        W = self.params["W"]
        dY = dy.reshape(W.shape[0], -1)                                 # (F, Ho*Wo*N)
        self._weight_grad(dY, self.cols.T)
        self._bias_grad_rows(dY)
        if self.skip_input_grad:
            return None
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        view, buf = self.slot("dcols", self.cols.shape, dY)
        array_module(dY).matmul(W.reshape(W.shape[0], -1).T, dY, out=view)
        return conv.col2im(buf, self.nchw, kh, kw, s, p, self.input_layout)


class ConvTranspose2d(_Linear, layers.ConvTranspose2d):
    """Twin of layers.ConvTranspose2d: batch-last in (Cin, H, W, N); out batch-last, or
    batch-first where Sequential says so (output_layout), the gather writing it so."""

    LAYOUT = ("last", "last")
    output_layout = "last"

    def forward_linear(self, x, slot=None):
        Cin, H, W_, N = x.shape
        out_hw = self.output_shape(H, W_)
        if min(out_hw) < 1:
            raise ValueError(f"ConvTranspose2d output would be {out_hw} for input {(H, W_)}")
        W = self.params["W"]
        self.x_shape, self.X = x.shape, x.reshape(Cin, -1)             # X: (Cin, H*W*N)
        self.nchw = (N, W.shape[1]) + tuple(out_hw)
        view, buf = self.slot("cols", (W[0].size, self.X.shape[1]), x)
        array_module(x).matmul(W.reshape(Cin, -1).T, self.X, out=view)
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        return conv.col2im(buf, self.nchw, kh, kw, s, p, self.output_layout)

    def bias_shaped(self):
        b = self.params["b"]
        return b.reshape(-1, 1, 1) if self.output_layout == "first" else b.reshape(-1, 1, 1, 1)

    def backward(self, dy, slot=None):
        # As layers.ConvTranspose2d: the columns of dy serve dW = X cols^T and dx = W cols.
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        if slot is None:
            view, slot = self.slot("dy", dy.shape, dy)
            view[...] = dy
        cols = conv.im2col(slot, self.nchw, kh, kw, s, p, self.output_layout)
        self._weight_grad(self.X, cols.T)
        if self.output_layout == "first":           # (N, Cout, Ho, Wo): CuPy's own reduction
            b = self.params["b"]
            self.grads["b"] = dy.sum(axis=(0, 2, 3), out=_into(self, "b", b))
        else:
            self._bias_grad_rows(dy.reshape(dy.shape[0], -1))
        if self.skip_input_grad:
            return None
        W = self.params["W"]
        return (W.reshape(W.shape[0], -1) @ cols).reshape(self.x_shape)   # (Cin, H, W, N)


class _Fused(_Buffers):
    """An activation with fused kernels: forward with the bias before it, backward alone or of
    two upstream gradients summed, each writing into an array given to it.

    convert (set by Sequential): a layout step right after this activation that it carries out
    itself: it writes its output in that step's layout (and reads dy in it), through the step's
    view of the arrays (Reshape, ToBatchFirst, ToBatchLast each have a `view`)."""

    convert = None
    z_shape = None

    def forward(self, x):
        self.z_shape, self.slot_buffer = None, None
        self.y = self.plain_forward(x)
        return self.y

    def forward_bias(self, z, b, slot=False):
        """act(z + b) into a new array, or into a slot buffer when slot is True (then kept as
        self.slot_buffer for the convolution that gathers from it)."""
        self.z_shape = z.shape
        if self.convert is not None:
            b = self.convert.view(array_module(z).broadcast_to(b, z.shape))
            z = self.convert.view(z)
        out, self.slot_buffer = self._out("y", z.shape, z, slot)
        self.BIAS(z, b, out)
        self.y = out
        return out

    def _out(self, key, shape, like, slot):
        if slot:
            return self.slot(key, shape, like)
        return array_module(like).empty(shape, dtype=like.dtype), None

    def _backward(self, kernel, args, slot):
        """kernel(*args, out) with out shaped like the forward's input z (a slot buffer when
        slot is True, kept as self.dslot)."""
        like = args[0]
        shape = self.z_shape if self.z_shape is not None else like.shape
        out, self.dslot = self._out("dz", shape, like, slot)
        kernel(*args, out if self.convert is None else self.convert.view(out))
        return out

    def backward(self, dy, slot=False):
        return self._backward(self.BACKWARD, (dy, self.y), slot)

    def backward_sum(self, dy1, dy2, slot=False):
        return self._backward(self.BACKWARD_SUM, (dy1, dy2, self.y), slot)


class ReLU(_Fused, layers.ReLU):
    """Twin of layers.ReLU."""
    plain_forward = layers.ReLU.forward
    BIAS, BACKWARD = staticmethod(kernels.bias_relu), staticmethod(kernels.relu_backward)
    BACKWARD_SUM = staticmethod(kernels.relu_backward_sum)


class Tanh(_Fused, layers.Tanh):
    """Twin of layers.Tanh."""
    plain_forward = layers.Tanh.forward
    BIAS, BACKWARD = staticmethod(kernels.bias_tanh), staticmethod(kernels.tanh_backward)
    BACKWARD_SUM = staticmethod(kernels.tanh_backward_sum)


class Sigmoid(_Fused, layers.Sigmoid):
    """Twin of layers.Sigmoid."""
    plain_forward = layers.Sigmoid.forward
    BIAS, BACKWARD = staticmethod(kernels.bias_sigmoid), staticmethod(kernels.sigmoid_backward)
    BACKWARD_SUM = staticmethod(kernels.sigmoid_backward_sum)


# --------------------------------------------------------------------------------------------
# Layout steps: each a view (no launch), with `view` for an activation that writes its layout.


class _LayoutStep(layers.Layer):
    """A change of layout that is a view of the array: forward = view, backward = its inverse."""

    def forward(self, x):
        self.in_shape = x.shape
        return self.view(x)

    def backward(self, dy):
        return self.unview(dy, self.in_shape)


class Flatten(_LayoutStep, layers.Flatten):
    """Twin of layers.Flatten: batch-last (d1, ..., N) to (N, d1*...), a transposed view."""

    LAYOUT = ("last", "first")

    @staticmethod
    def view(a):
        return a.reshape(-1, a.shape[-1]).T

    @staticmethod
    def unview(a, shape):
        return a.T.reshape(shape)


class Reshape(_LayoutStep, layers.Reshape):
    """Twin of layers.Reshape giving batch-last (*shape, N), a view of the transposed rows."""

    LAYOUT = ("first", "last")

    def view(self, a):
        return a.reshape(a.shape[0], -1).T.reshape(*self.shape, a.shape[0])

    @staticmethod
    def unview(a, shape):
        return a.reshape(-1, a.shape[-1]).T.reshape(shape)


class ToBatchLast(_LayoutStep):
    """(N, ...) -> (..., N) as a view; put in by Sequential, never by a model."""

    @staticmethod
    def view(a):
        return a.reshape(a.shape[0], -1).T.reshape(a.shape[1:] + (a.shape[0],))

    @staticmethod
    def unview(a, shape):
        return ToBatchFirst.view(a)


class ToBatchFirst(_LayoutStep):
    """(..., N) -> (N, ...) as a view; put in by Sequential, never by a model."""

    @staticmethod
    def view(a):
        return a.reshape(-1, a.shape[-1]).T.reshape((a.shape[-1],) + a.shape[:-1])

    @staticmethod
    def unview(a, shape):
        return ToBatchLast.view(a)


def layer_layout(layer):
    """(the layout layer takes, the one it gives): "first", "last", or None for either (an
    elementwise layer)."""
    if layer.ELEMENTWISE:
        return None, None
    return getattr(layer, "LAYOUT", ("first", "first"))


class Sequential(layers.Sequential):
    """Twin of layers.Sequential: its layers in the layouts they take, paired with the fused
    activations after them, and the layout changes done where they cost nothing.

    self.steps is self.layers with the layout changes put in (as in the fast tier), then taken
    out again where a neighbour does them: a batch-first input to a Conv2d is gathered as it is
    (input_layout), a ConvTranspose2d at the end writes batch-first (output_layout), and an
    activation paired with the layer before it writes the layout of a change right after it
    (convert: the Reshape from a Dense to a convolution, or the change at the end of a stack).
    From outside, the batch is first, as in the plain tier.

    defer_last_bias (set by a model): the last layer's bias is left out of the forward, for the
    model to add in its own fused kernel (the decoder's logits go into the BCE kernel)."""

    defer_last_bias = False

    def __init__(self, *layers_):
        super().__init__(*layers_)
        steps, current = [], "first"
        for layer in self.layers:
            takes, gives = layer_layout(layer)
            if takes is not None and takes != current:
                steps.append(ToBatchLast() if takes == "last" else ToBatchFirst())
            steps.append(layer)
            current = gives or current
        if current != "first":
            steps.append(ToBatchFirst())
        self.steps = self._absorb(steps)

    @staticmethod
    def _absorb(steps):
        out = []
        for step in steps:
            prev = out[-1] if out else None
            before = out[-2] if len(out) > 1 else None
            if (isinstance(step, (ToBatchFirst, ToBatchLast, Reshape)) and isinstance(prev, _Fused)
                    and isinstance(before, _Linear) and prev.convert is None):
                prev.convert = step
                continue
            if isinstance(step, ToBatchFirst) and isinstance(prev, ConvTranspose2d):
                prev.output_layout = "first"
                continue
            if isinstance(prev, ToBatchLast) and isinstance(step, Conv2d):
                out.pop()
                step.input_layout = "first"
            out.append(step)
        return out

    def forward(self, x):
        steps, i, slot = self.steps, 0, None
        while i < len(steps):
            layer = steps[i]
            after = steps[i + 1] if i + 1 < len(steps) else None
            if isinstance(layer, _Linear) and isinstance(after, _Fused):
                then = steps[i + 2] if i + 2 < len(steps) else None
                x = after.forward_bias(layer.forward_linear(x, slot), layer.bias_shaped(),
                                       slot=isinstance(then, Conv2d))
                slot = after.slot_buffer
                i += 2
                continue
            if isinstance(layer, _Linear):
                last = i == len(steps) - 1
                z = layer.forward_linear(x, slot)
                x = z if last and self.defer_last_bias else kernels.bias_add(z,
                                                                             layer.bias_shaped())
            else:
                x = layer.forward(x)
            slot = None
            i += 1
        return x

    def backward(self, dy, slot=None):
        return self.backward_from(dy, slot=slot)

    def backward_from(self, dy, dy2=None, slot=None):
        """The chain rule as in layers.Sequential; dy2: a second upstream gradient to add to dy
        (two layers read this Sequential's output), summed inside the last activation's fused
        backward when there is one; slot: the slot buffer dy lies in, if any."""
        self.layers[0].skip_input_grad = self.skip_input_grad
        steps = list(reversed(self.steps))
        for i, step in enumerate(steps):
            if dy2 is not None and i == 0:
                if not isinstance(step, _Fused):
                    dy = dy + dy2
            if isinstance(step, _Fused):
                gathered = isinstance(steps[i + 1] if i + 1 < len(steps) else None,
                                      ConvTranspose2d)
                dy = (step.backward_sum(dy, dy2, slot=gathered) if dy2 is not None and i == 0
                      else step.backward(dy, slot=gathered))
                slot = step.dslot
            else:
                dy = step.backward(dy) if slot is None else step.backward(dy, slot)
                slot = None
            if dy is None:                  # the first layer skipped its input gradient
                break
        return dy
