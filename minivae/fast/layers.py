"""The layer set of the fast tier: layers.py's classes, with faster twins where NumPy pays for one.

Read minivae/layers.py first. Each class here subclasses its plain twin (same constructor, same
parameters drawn in the same order, same names), so a model built from this set holds the same
numbers as one built from the plain set; only forward/backward differ, and tests/test_tiers.py
checks that they compute the same values.

The main saving is the layout: the convolutions, and the Flatten / Reshape at the ends of a
stack of them, keep images batch-last (C, H, W, N), the layout fast/conv.py computes in, so a
stack of convolutions never transposes between its layers. Each class says which layout it
takes and gives (LAYOUT = (input, output), "first" or "last"); this set's Sequential inserts
a conversion wherever two neighbours disagree, and at its ends, so from outside a Sequential
takes and gives the plain tier's layout (the batch first).

A layer without a twin here (Tanh, Sigmoid, any new plain layer) is the plain class itself
(minivae.tiers.LayerSet); an elementwise one (Layer.ELEMENTWISE) runs in whichever layout it is
handed, so no conversion surrounds it.
"""

from minivae import layers
from minivae.backend import array_module
from minivae.fast.conv import batch_first, batch_last, conv_plan


def bias_grad(dy, scratch):
    """db for a batch-last dy (F, ...): the twin of dy.sum(axis=(0, 2, 3)) on an NCHW dy.

    Written as the product of dy (F, Ho*Wo*N) with a vector of ones (kept in scratch), which
    BLAS runs on every core: 5-7x faster than NumPy's sum on ConvVAE's 16x16 activations.
    """
    ones = scratch.get("ones")
    if ones is None or ones.size != dy[0].size or ones.dtype != dy.dtype:
        ones = scratch["ones"] = array_module(dy).ones(dy[0].size, dtype=dy.dtype)
    return dy.reshape(dy.shape[0], -1) @ ones


class Dense(layers.Dense):
    """Twin of layers.Dense adding the bias in place: one pass over y fewer, no second array."""

    def forward(self, x):
        self.x = x                                      # (N, in)
        y = x @ self.params["W"]                        # (N, out)
        y += self.params["b"]
        return y


class _Planned:
    """What both fast convolutions add to their plain twin: batch-last in and out, and the
    buffers their conv plan keeps from call to call (self.scratch): fresh megabyte-sized arrays
    at every step come back from the OS as fresh pages, each one a fault (14-16% of a ConvVAE
    step before they were kept)."""

    LAYOUT = ("last", "last")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scratch = {}


class Conv2d(_Planned, layers.Conv2d):
    """Twin of layers.Conv2d on batch-last images: x (C, H, W, N) -> y (F, Ho, Wo, N).

    The products are fast/conv.py's plans (PhasePlan for ConvVAE's 32-channel layers).
    """

    def forward(self, x):
        self.plan = conv_plan(self.params["W"], x.shape[1:3], self.stride, self.padding,
                              scratch=self.scratch)
        self.X = self.plan.input_matrix(x)                              # kept for dW
        y = self.plan.forward(self.X)                                   # (F, Ho, Wo, N)
        y += self.params["b"].reshape(-1, 1, 1, 1)
        return y

    def backward(self, dy):
        Y = self.plan.output_matrix(dy)                                 # shared by dW and dx
        self.grads["W"] = self.plan.weight_grad(self.X, Y)              # (F, C, kh, kw)
        self.grads["b"] = bias_grad(dy, self.scratch)                   # (F,)
        if self.skip_input_grad:
            return None
        return self.plan.adjoint(Y)                                     # (C, H, W, N)


class ConvTranspose2d(_Planned, layers.ConvTranspose2d):
    """Twin of layers.ConvTranspose2d on batch-last images: (Cin, H, W, N) -> (Cout, Ho, Wo, N).

    The plan is that of the conv this layer is the adjoint of, with the roles of its two sides
    swapped (fast/conv.py).
    """

    def forward(self, x):
        out_hw = self.output_shape(*x.shape[1:3])
        if min(out_hw) < 1:
            raise ValueError(f"ConvTranspose2d output would be {out_hw} for input {x.shape[1:3]}")
        self.plan = conv_plan(self.params["W"], out_hw, self.stride, self.padding,
                              scratch=self.scratch)
        self.Y = self.plan.output_matrix(x)                             # kept for dW
        y = self.plan.adjoint(self.Y)                                   # (Cout, Ho, Wo, N)
        y += self.params["b"].reshape(-1, 1, 1, 1)
        return y

    def backward(self, dy):
        X = self.plan.input_matrix(dy)
        self.grads["W"] = self.plan.weight_grad(X, self.Y)              # (Cin, Cout, kh, kw)
        self.grads["b"] = bias_grad(dy, self.scratch)                   # (Cout,)
        if self.skip_input_grad:
            return None
        return self.plan.forward(X)                                     # (Cin, H, W, N)


class ReLU(layers.ReLU):
    """Twin of layers.ReLU: max(x, 0) taken against an array of zeros kept from call to call,
    in place where the Sequential knows nobody else reads the arrays.

    NumPy's vectorised loop for maximum wants two arrays; against the scalar 0 it is 3x slower.
    in_place (set by Sequential): the forward overwrites its input x, the fresh output of the
    layer before it that nothing else keeps, and the backward overwrites dy, the fresh input
    gradient of the layer after it. Writing into arrays just written (still in cache) instead
    of new ones: ConvVAE's ReLUs took 1.8 ms of a training step instead of 3.5 (a per-layer
    profile of the step), and the step 5-10% less time (benchmarks/ab.py against the copying
    ReLU: 0.90 and 0.95 in two runs).
    """

    zeros = None
    in_place = False

    def forward(self, x):
        zeros = self.zeros
        if zeros is None or zeros.shape != x.shape[1:] or zeros.dtype != x.dtype:
            zeros = self.zeros = array_module(x).zeros(x.shape[1:], dtype=x.dtype)
        self.y = array_module(x).maximum(x, zeros, out=x if self.in_place else None)
        return self.y

    def backward(self, dy):
        return array_module(dy).multiply(dy, self.y > 0, out=dy if self.in_place else None)


class Flatten(layers.Flatten):
    """Twin of layers.Flatten taking batch-last (d1, d2, ..., N) to (N, d1*d2*...), same rows.

    The output is a transposed view, which BLAS (the Dense that follows) reads as it is.
    """

    LAYOUT = ("last", "first")

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(-1, x.shape[-1]).T

    def backward(self, dy):
        return dy.T.reshape(self.in_shape)


class Reshape(layers.Reshape):
    """Twin of layers.Reshape giving batch-last (*shape, N), the same numbers."""

    LAYOUT = ("first", "last")

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1).T.reshape(*self.shape, x.shape[0])

    def backward(self, dy):
        return dy.reshape(-1, dy.shape[-1]).T.reshape(self.in_shape)


class ToBatchLast(layers.Layer):
    """(N, ...) -> (..., N) and back in the backward; put in by Sequential, never by a model."""

    def forward(self, x):
        return batch_last(x)

    def backward(self, dy):
        return batch_first(dy)


class ToBatchFirst(layers.Layer):
    """(..., N) -> (N, ...) and back in the backward; put in by Sequential, never by a model."""

    def forward(self, x):
        return batch_first(x)

    def backward(self, dy):
        return batch_last(dy)


# Layers whose forward and backward each return a new array that they do not keep.
FRESH = (Dense, Conv2d, ConvTranspose2d)


def layer_layout(layer):
    """(the layout layer takes, the one it gives): "first", "last", or None for either (an
    elementwise layer, which says so itself: Layer.ELEMENTWISE)."""
    if layer.ELEMENTWISE:
        return None, None
    return getattr(layer, "LAYOUT", ("first", "first"))


class Sequential(layers.Sequential):
    """Twin of layers.Sequential that runs its layers in the layouts they take.

    self.steps is self.layers with a ToBatchLast / ToBatchFirst put in wherever the layout
    changes, and a ToBatchFirst at the end if needed: outside, the batch is first, as in the
    plain tier. Names and indices ("0.W", seq[0]) still count self.layers only.
    """

    def __init__(self, *layers_):
        super().__init__(*layers_)
        self.steps, current = [], "first"
        for layer in self.layers:
            takes, gives = layer_layout(layer)
            if takes is not None and takes != current:
                self.steps.append(ToBatchLast() if takes == "last" else ToBatchFirst())
            self.steps.append(layer)
            if gives is not None:
                current = gives
        if current != "first":
            self.steps.append(ToBatchFirst())
        # A ReLU between two layers that return fresh arrays may work in place (see ReLU).
        for before, relu, after in zip(self.steps, self.steps[1:], self.steps[2:]):
            if isinstance(relu, ReLU) and isinstance(before, FRESH) and isinstance(after, FRESH):
                relu.in_place = True

    def forward(self, x):
        for step in self.steps:
            x = step.forward(x)
        return x

    def backward(self, dy):
        self.layers[0].skip_input_grad = self.skip_input_grad
        for step in reversed(self.steps):
            dy = step.backward(dy)
            if dy is None:                  # the first layer skipped its input gradient
                break
        return dy
