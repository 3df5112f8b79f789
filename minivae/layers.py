"""Layers: each one a forward/backward pair, with the backward derived next to the code.

The contract every layer keeps:

    layer.params          dict name -> array ({} for layers without parameters)
    layer.grads           same keys, overwritten (not accumulated) by each backward
    y  = layer.forward(x) caches what backward needs
    dx = layer.backward(dy)  fills layer.grads and returns dL/dx

Notation: L is the scalar loss, dy = dL/dy arrives from above, and we return dx = dL/dx. Batches
lead: Dense sees x (N, in); convolutions see NCHW images (N, C, H, W). Layers read their parameters
from `self.params` on every call, so a parameter replaced by a new array (any float dtype, same
shape) is used from then on, and a layer computes in whatever dtype it is handed.
"""

import math

import numpy as np

from minivae.backend import array_module, get_backend, make_rng, to_device
from minivae.conv import (batch_first, batch_last, conv_output_size, conv_plan,
                          conv_transpose_output_size)


class Layer:
    """Base class: no parameters, nothing cached.

    skip_input_grad: a layer that reads the data itself (the first layer of an encoder) may set
    this, and its backward then returns None instead of computing a dL/dx nobody uses.
    """

    skip_input_grad = False

    def __init__(self):
        self.params = {}
        self.grads = {}

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return f"{type(self).__name__}()"


def glorot_uniform(shape, fan_in, fan_out, *, dtype, backend, rng):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), drawn on the host (Flux's default init)."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    w = make_rng(rng).uniform(-a, a, size=shape).astype(dtype)
    return to_device(w, get_backend(backend))


def zeros(shape, *, dtype, backend):
    return get_backend(backend).zeros(shape, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Dense


class Dense(Layer):
    """y = x @ W + b, with x (N, in), W (in, out), b (out,), y (N, out)."""

    def __init__(self, in_features, out_features, *, dtype=np.float32, backend="numpy", rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params = {
            "W": glorot_uniform((in_features, out_features), in_features, out_features,
                                dtype=dtype, backend=backend, rng=rng),
            "b": zeros((out_features,), dtype=dtype, backend=backend),
        }

    def forward(self, x):
        self.x = x                                      # (N, in)
        y = x @ self.params["W"]                        # (N, out)
        y += self.params["b"]                           # in place: one pass fewer
        return y

    def backward(self, dy):
        # y[n,o] = sum_i x[n,i] W[i,o] + b[o]. Each W[i,o] touches every row n, so its gradient sums
        # dy[n,o] x[n,i] over the batch: dW = x^T dy. b[o] is added to every row: db = sum_n dy.
        # Each x[n,i] reaches every output o through W[i,o]: dx = dy W^T.
        self.grads["W"] = self.x.T @ dy                  # (in, out)
        self.grads["b"] = dy.sum(axis=0)                 # (out,)
        if self.skip_input_grad:
            return None
        return dy @ self.params["W"].T                   # (N, in)

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features})"


# --------------------------------------------------------------------------------------------
# Convolutions (the arithmetic is in conv.py: a plan turns each into matrix products)


class _Conv(Layer):
    """What both convolutions share: settings, Glorot-uniform weights, zero biases, the layout.

    fan_in = in_channels * kh * kw and fan_out = out_channels * kh * kw for both (Flux's rule);
    only the order of the weight's first two axes differs (each subclass's WEIGHT_ORDER).

    layout="NCHW" (the default): images come in and go out as (N, C, H, W), converted to and from
    the batch-last (C, H, W, N) that conv.py computes in. layout="CHWN": they arrive and leave
    batch-last, so a stack of such layers never converts (see ConvVAE).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 layout="NCHW", dtype=np.float32, backend="numpy", rng=None):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.layout = _check_layout(layout)
        self.scratch = {}                # the conv plans' buffers, kept from step to step
        first_two = ((out_channels, in_channels) if self.WEIGHT_ORDER == "FC"
                     else (in_channels, out_channels))
        self.params = {
            "W": glorot_uniform(first_two + (kh, kw), in_channels * kh * kw,
                                out_channels * kh * kw, dtype=dtype, backend=backend, rng=rng),
            "b": zeros((out_channels,), dtype=dtype, backend=backend),
        }

    def _batch_last(self, x):
        return batch_last(x) if self.layout == "NCHW" else x

    def _batch_first(self, x):
        return batch_first(x) if self.layout == "NCHW" else x

    def _bias_grad(self, dy):
        """db: dy (F, Ho, Wo, N) summed over everything but the channel, written as the product
        of dy (F, Ho*Wo*N) with a vector of ones, which BLAS runs on every core: 5-7x faster than
        NumPy's sum over three axes on ConvVAE's 16x16 activations."""
        ones = self.scratch.get("ones")
        if ones is None or ones.size != dy[0].size or ones.dtype != dy.dtype:
            ones = self.scratch["ones"] = array_module(dy).ones(dy[0].size, dtype=dy.dtype)
        return dy.reshape(dy.shape[0], -1) @ ones

    def __repr__(self):
        layout = "" if self.layout == "NCHW" else f", layout={self.layout!r}"
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding}{layout})")


class Conv2d(_Conv):
    """y = conv(x, W) + b: x (N, C, H, W), W (F, C, kh, kw), b (F,), y (N, F, Ho, Wo).

    Ho = floor((H + 2p - kh) / s) + 1, and likewise Wo.
    """

    WEIGHT_ORDER = "FC"                  # W is (out, in, kh, kw)

    def output_shape(self, H, W):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        return conv_output_size(H, kh, s, p), conv_output_size(W, kw, s, p)

    def forward(self, x):
        x = self._batch_last(x)                                         # (C, H, W, N)
        self.plan = conv_plan(self.params["W"], x.shape[1:3], self.stride, self.padding,
                              scratch=self.scratch)
        self.X = self.plan.input_matrix(x)                              # kept for dW
        y = self.plan.forward(self.X)                                   # (F, Ho, Wo, N)
        y += self.params["b"].reshape(-1, 1, 1, 1)
        return self._batch_first(y)

    def backward(self, dy):
        # y = conv(x; W) + b is linear in each of W, b and x (the plan's X just copies pixels):
        #   dW = sum over the batch and output positions of dy times the input pixels it saw:
        #        the product of the two sides' matrices (plan.weight_grad);
        #   db = dy summed over everything but the channel;
        #   dx = the adjoint of the convolution applied to dy, i.e. a transposed convolution.
        dy = self._batch_last(dy)                                       # (F, Ho, Wo, N)
        Y = self.plan.output_matrix(dy)                                 # shared by dW and dx
        self.grads["W"] = self.plan.weight_grad(self.X, Y)              # (F, C, kh, kw)
        self.grads["b"] = self._bias_grad(dy)                           # (F,)
        if self.skip_input_grad:
            return None
        return self._batch_first(self.plan.adjoint(Y))                 # (C, H, W, N)


class ConvTranspose2d(_Conv):
    """y = conv_transpose(x, W) + b: x (N, Cin, H, W), W (Cin, Cout, kh, kw), y (N, Cout, Ho, Wo).

    Ho = (H - 1) s - 2p + kh. This is the adjoint of a Conv2d from Cout to Cin channels with the
    same weights (PyTorch's layout), so it maps an image back onto the size the conv came from.
    """

    WEIGHT_ORDER = "CF"                  # W is (in, out, kh, kw), PyTorch's layout

    def output_shape(self, H, W):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        return conv_transpose_output_size(H, kh, s, p), conv_transpose_output_size(W, kw, s, p)

    def forward(self, x):
        x = self._batch_last(x)                                         # (Cin, H, W, N)
        out_hw = self.output_shape(*x.shape[1:3])
        if min(out_hw) < 1:
            raise ValueError(f"ConvTranspose2d output would be {out_hw} for input {x.shape[1:3]}")
        # The plan of the conv this layer is the adjoint of: from (Cout, Ho, Wo) to x's side.
        self.plan = conv_plan(self.params["W"], out_hw, self.stride, self.padding,
                              scratch=self.scratch)
        self.Y = self.plan.output_matrix(x)                             # kept for dW
        y = self.plan.adjoint(self.Y)                                   # (Cout, Ho, Wo, N)
        y += self.params["b"].reshape(-1, 1, 1, 1)
        return self._batch_first(y)

    def backward(self, dy):
        # y = T(x; W) + b where T is the adjoint of the convolution C(.; W). Linear again:
        #   dx = T^T(dy) = C(dy; W): the backward of a transposed conv is an ordinary conv.
        #   dW: <dy, T(x; W)> = <C(dy; W), x>, a conv of dy whose output is paired with x, so dW
        #       is the conv weight gradient with dy on the input side and x on the output side.
        #   db = dy summed over everything but the channel.
        dy = self._batch_last(dy)                                       # (Cout, Ho, Wo, N)
        X = self.plan.input_matrix(dy)
        self.grads["W"] = self.plan.weight_grad(X, self.Y)              # (Cin, Cout, kh, kw)
        self.grads["b"] = self._bias_grad(dy)                           # (Cout,)
        return self._batch_first(self.plan.forward(X))                 # (Cin, H, W, N)


def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


LAYOUTS = ("NCHW", "CHWN")


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


# --------------------------------------------------------------------------------------------
# Activations: y = f(x) elementwise, so dx = dy * f'(x), written in terms of what we cached.


class ReLU(Layer):
    zeros = None        # kept between calls: max(x, 0) is taken against zeros shaped like x[0]

    def forward(self, x):
        # Against an array, not the scalar 0: NumPy's vectorised loop for maximum wants two
        # arrays, and with a scalar it is 3x slower.
        zeros = self.zeros
        if zeros is None or zeros.shape != x.shape[1:] or zeros.dtype != x.dtype:
            zeros = self.zeros = array_module(x).zeros(x.shape[1:], dtype=x.dtype)
        self.y = array_module(x).maximum(x, zeros)
        return self.y

    def backward(self, dy):
        # f'(x) = 1 where x > 0, else 0 (we take 0 at the kink), and x > 0 exactly where y > 0.
        return dy * (self.y > 0)


class Tanh(Layer):
    def forward(self, x):
        self.y = array_module(x).tanh(x)
        return self.y

    def backward(self, dy):
        # d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2: the cached output is all we need.
        return dy * (1 - self.y * self.y)


class Sigmoid(Layer):
    def forward(self, x):
        self.y = sigmoid(x)
        return self.y

    def backward(self, dy):
        # d sigma(x)/dx = sigma(x) (1 - sigma(x)) = y (1 - y).
        return dy * self.y * (1 - self.y)


def sigmoid(x):
    """1 / (1 + exp(-x)) written as (1 + tanh(x/2)) / 2: no overflow for any finite x."""
    xp = array_module(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


# --------------------------------------------------------------------------------------------
# Shape plumbing: no arithmetic, so the backward just undoes the reshape.


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...), row-major (the same order as PyTorch's flatten).

    layout="CHWN": the input is batch-last, (d1, d2, ..., N); the rows are the same.
    """

    def __init__(self, *, layout="NCHW"):
        super().__init__()
        self.layout = _check_layout(layout)

    def forward(self, x):
        self.shape = x.shape
        if self.layout == "CHWN":
            return x.reshape(-1, x.shape[-1]).T         # a transposed view; BLAS reads it as is
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return (dy.T if self.layout == "CHWN" else dy).reshape(self.shape)

    def __repr__(self):
        return "Flatten()" if self.layout == "NCHW" else f"Flatten(layout={self.layout!r})"


class Reshape(Layer):
    """(N, ...) -> (N, *shape); shape excludes the batch dimension.

    layout="CHWN": the output is batch-last instead, (*shape, N), with the same numbers.
    """

    def __init__(self, *shape, layout="NCHW"):
        super().__init__()
        self.shape = shape
        self.layout = _check_layout(layout)

    def forward(self, x):
        self.in_shape = x.shape
        if self.layout == "CHWN":
            return x.reshape(x.shape[0], -1).T.reshape(*self.shape, x.shape[0])
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        if self.layout == "CHWN":
            return dy.reshape(-1, dy.shape[-1]).T.reshape(self.in_shape)
        return dy.reshape(self.in_shape)

    def __repr__(self):
        args = ", ".join(map(str, self.shape))
        if self.layout != "NCHW":
            args += f", layout={self.layout!r}"
        return f"Reshape({args})"


# --------------------------------------------------------------------------------------------
# Composition


class ParamView:
    """An ordered, name -> array view over several layers' params (or grads).

    `view["0.W"]` reads layer 0's params["W"]; assigning `view["0.W"] = array` replaces it in the
    layer (same shape required), so models and Sequential can hand out one flat dict that stays in
    sync with the layers that own the arrays.
    """

    def __init__(self, named_layers, attr="params"):
        self._slots = {}          # name -> (the layer that owns the array, its key there)
        for prefix, layer in named_layers:
            for key in layer.params:
                name = f"{prefix}.{key}" if prefix else key
                # A Sequential's params are a ParamView too: point at the layer behind it, so a
                # lookup is one dict access however deep the nesting (Adam does dozens a step).
                nested = isinstance(layer.params, ParamView)
                self._slots[name] = layer.params._slots[key] if nested else (layer, key)
        self._attr = attr

    def __getitem__(self, name):
        layer, key = self._slots[name]
        return getattr(layer, self._attr)[key]

    def __setitem__(self, name, value):
        layer, key = self._slots[name]
        old = layer.params[key]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"{name}: expected shape {tuple(old.shape)}, got {tuple(value.shape)}")
        getattr(layer, self._attr)[key] = value

    def __iter__(self):
        return iter(self._slots)

    def __len__(self):
        return len(self._slots)

    def __contains__(self, name):
        return name in self._slots

    def keys(self):
        return self._slots.keys()

    def values(self):
        return [self[k] for k in self._slots]

    def items(self):
        return [(k, self[k]) for k in self._slots]

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items()) + "}"


class Sequential(Layer):
    """Layers applied in order. Parameters are named "<index>.<key>", e.g. "0.W" (as PyTorch)."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)
        named = [(str(i), layer) for i, layer in enumerate(self.layers)]
        self.params = ParamView(named, "params")
        self.grads = ParamView(named, "grads")

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        # The chain rule, read right to left: each layer turns dL/d(its output) into
        # dL/d(its input), which is the next layer down's dL/d(output).
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:          # the first layer skipped its input gradient
                break
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Sequential(\n" + "\n".join(f"  ({i}) {l!r}" for i, l in enumerate(self.layers)) + "\n)"
