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

minivae/fast/layers.py holds faster twins of some of these for NumPy; read these first.
"""

import math
from collections.abc import Mapping

import numpy as np

from minivae.backend import array_module, get_backend, make_rng, to_device
from minivae.conv import (conv2d, conv2d_weight_grad, conv_output_size, conv_transpose2d,
                          conv_transpose_output_size)


class Layer:
    """Base class: no parameters, nothing cached.

    skip_input_grad: set to True on a layer whose input is the data (the first layer of an
    encoder); its backward then fills its grads and returns None instead of a dL/dx nobody uses.
    ELEMENTWISE: True for a layer that maps each number on its own (an activation), so it works
    on an array of any shape and layout.
    KINK: True for an elementwise layer whose derivative jumps where its input crosses 0; it
    keeps its output as self.y, of the input's sign (the gradient checks watch which side of the
    kink each input is on).
    """

    ELEMENTWISE = False
    KINK = False

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.skip_input_grad = False

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
        return x @ self.params["W"] + self.params["b"]  # (N, out)

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
# Convolutions (the arithmetic, and why the transposed convolution is an adjoint: conv.py)


class _Conv(Layer):
    """What both convolutions share: settings, Glorot-uniform weights, zero biases.

    fan_in = in_channels * kh * kw and fan_out = out_channels * kh * kw for both (Flux's rule);
    only the order of the weight's first two axes differs (each subclass's WEIGHT_ORDER).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 dtype=np.float32, backend="numpy", rng=None):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        first_two = ((out_channels, in_channels) if self.WEIGHT_ORDER == "FC"
                     else (in_channels, out_channels))
        self.params = {
            "W": glorot_uniform(first_two + (kh, kw), in_channels * kh * kw,
                                out_channels * kh * kw, dtype=dtype, backend=backend, rng=rng),
            "b": zeros((out_channels,), dtype=dtype, backend=backend),
        }

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding})")


class Conv2d(_Conv):
    """y = conv2d(x, W) + b: x (N, C, H, W), W (F, C, kh, kw), b (F,), y (N, F, Ho, Wo).

    Ho = floor((H + 2p - kh) / s) + 1, and likewise Wo.
    """

    WEIGHT_ORDER = "FC"                  # W is (out, in, kh, kw)

    def output_shape(self, height, width):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        return conv_output_size(height, kh, s, p), conv_output_size(width, kw, s, p)

    def forward(self, x):
        self.x = x                                                          # (N, C, H, W)
        y = conv2d(x, self.params["W"], self.stride, self.padding)          # (N, F, Ho, Wo)
        return y + self.params["b"].reshape(-1, 1, 1)

    def backward(self, dy):
        # y = conv2d(x, W) + b is linear in each of x, W and b (conv.py):
        #   dW = sum over the batch and the output pixels of dy times the input pixels it saw:
        #        dy times the columns of x;
        #   db = dy summed over everything but the channel;
        #   dx = the adjoint of the convolution applied to dy: a transposed convolution.
        W, s, p = self.params["W"], self.stride, self.padding
        self.grads["W"] = conv2d_weight_grad(self.x, dy, self.kernel_size, s, p)  # (F, C, kh, kw)
        self.grads["b"] = dy.sum(axis=(0, 2, 3))                                  # (F,)
        if self.skip_input_grad:
            return None
        return conv_transpose2d(dy, W, s, p, self.x.shape[2:])                    # (N, C, H, W)


class ConvTranspose2d(_Conv):
    """y = conv_transpose2d(x, W) + b: x (N, Cin, H, W), W (Cin, Cout, kh, kw), y (N, Cout, Ho, Wo).

    Ho = (H - 1) s - 2p + kh. This is the adjoint of a Conv2d from Cout to Cin channels with the
    same weights (PyTorch's layout), so it maps an image back onto the size the conv came from.
    """

    WEIGHT_ORDER = "CF"                  # W is (in, out, kh, kw), PyTorch's layout

    def output_shape(self, height, width):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        return (conv_transpose_output_size(height, kh, s, p),
                conv_transpose_output_size(width, kw, s, p))

    def forward(self, x):
        out_hw = self.output_shape(*x.shape[2:])
        if min(out_hw) < 1:
            raise ValueError(f"ConvTranspose2d output would be {out_hw} for input {x.shape[2:]}")
        self.x = x                                                          # (N, Cin, H, W)
        y = conv_transpose2d(x, self.params["W"], self.stride, self.padding, out_hw)
        return y + self.params["b"].reshape(-1, 1, 1)                       # (N, Cout, Ho, Wo)

    def backward(self, dy):
        # y = T(x; W) + b, where T is the adjoint of the convolution C(.; W) from Cout to Cin:
        #   dx = T^T(dy) = C(dy; W): the backward of a transposed conv is an ordinary conv;
        #   dW: <dy, T(x; W)> = <C(dy; W), x>, a conv of dy whose output is paired with x, so dW
        #       is the conv weight gradient with dy as its input and x as its output gradient;
        #   db = dy summed over everything but the channel.
        W, s, p = self.params["W"], self.stride, self.padding
        self.grads["W"] = conv2d_weight_grad(dy, self.x, self.kernel_size, s, p)  # (Cin, Cout, ..)
        self.grads["b"] = dy.sum(axis=(0, 2, 3))                                  # (Cout,)
        if self.skip_input_grad:
            return None
        return conv2d(dy, W, s, p)                                                # (N, Cin, H, W)


# --------------------------------------------------------------------------------------------
# Activations: y = f(x) elementwise, so dx = dy * f'(x), written in terms of what we cached.


class Activation(Layer):
    """Base class of the elementwise layers."""

    ELEMENTWISE = True


class ReLU(Activation):
    KINK = True

    def forward(self, x):
        self.y = array_module(x).maximum(x, 0)
        return self.y

    def backward(self, dy):
        # f'(x) = 1 where x > 0, else 0 (we take 0 at the kink), and x > 0 exactly where y > 0.
        return dy * (self.y > 0)


class Tanh(Activation):
    def forward(self, x):
        self.y = array_module(x).tanh(x)
        return self.y

    def backward(self, dy):
        # d tanh(x)/dx = 1 - tanh(x)^2 = 1 - y^2: the cached output is all we need.
        return dy * (1 - self.y * self.y)


class Sigmoid(Activation):
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
    """(N, d1, d2, ...) -> (N, d1*d2*...), row-major (the same order as PyTorch's flatten)."""

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.in_shape)


class Reshape(Layer):
    """(N, ...) -> (N, *shape); shape excludes the batch dimension."""

    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        return dy.reshape(self.in_shape)

    def __repr__(self):
        return f"Reshape({', '.join(map(str, self.shape))})"


# --------------------------------------------------------------------------------------------
# Composition


class ParamView(Mapping):
    """The params (or grads) of several named layers as one flat, ordered dict.

    view["encoder.0.W"] is layer "encoder"'s params["0.W"] (itself a view when that layer is a
    Sequential). Reads and writes go to the layer that owns the array, so the view is never out
    of date: `view[name] = array` replaces the array in its layer (same shape required).
    """

    def __init__(self, named_layers, attr="params"):
        self.layers = dict(named_layers)                # prefix -> layer
        self.attr = attr                                # "params" or "grads"

    def __getitem__(self, name):
        prefix, key = name.split(".", 1)
        return getattr(self.layers[prefix], self.attr)[key]

    def __setitem__(self, name, value):
        prefix, key = name.split(".", 1)
        old = self.layers[prefix].params[key]
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"{name}: expected shape {tuple(old.shape)}, got {tuple(value.shape)}")
        getattr(self.layers[prefix], self.attr)[key] = value

    def __iter__(self):
        for prefix, layer in self.layers.items():
            for key in layer.params:
                yield f"{prefix}.{key}"

    def __len__(self):
        return sum(len(layer.params) for layer in self.layers.values())

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items()) + "}"


class Sequential(Layer):
    """Layers applied in order. Parameters are named "<index>.<key>", e.g. "0.W" (as PyTorch).

    skip_input_grad set on the Sequential is passed on to its first layer.
    """

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
        self.layers[0].skip_input_grad = self.skip_input_grad
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        rows = [f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(rows) + "\n)"
