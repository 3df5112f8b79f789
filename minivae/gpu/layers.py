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
  minivae/gpu/models.py), with `out=`;
* the convolutions use gpu/conv.py (a gather and a scatter-add instead of 2 kh kw strided
  copies) and keep im2col(x) from the forward for the weight gradient.
"""

from minivae import layers
from minivae.backend import array_module
from minivae.gpu import conv, kernels


def _into(layer, key, like):
    """The array backward should write gradient `key` into: the one in layer.grads when it fits
    (a view of the model's flat buffer), else None (a new array)."""
    g = layer.grads.get(key)
    if g is not None and g.shape == like.shape and g.dtype == like.dtype:
        return g
    return None


class _Linear:
    """What Dense and the convolutions add to their plain twin: forward_linear (no bias), so
    that a Sequential or the model can put the bias into the next fused kernel."""

    def forward(self, x):
        return kernels.bias_add(self.forward_linear(x), self.bias_shaped())

    def _bias_grad(self, dy, axes):
        b = self.params["b"]
        out = _into(self, "b", b)
        self.grads["b"] = dy.sum(axis=axes, out=out)


class Dense(_Linear, layers.Dense):
    """Twin of layers.Dense: the product, the bias elsewhere; gradients written in place."""

    def forward_linear(self, x):
        self.x = x                                      # (N, in)
        return x @ self.params["W"]                     # (N, out), no bias yet

    def bias_shaped(self):
        return self.params["b"]

    def backward(self, dy):
        W = self.params["W"]
        out = _into(self, "W", W)
        xp = array_module(dy)
        self.grads["W"] = xp.matmul(self.x.T, dy, out=out)         # (in, out)
        self._bias_grad(dy, 0)                                      # (out,)
        if self.skip_input_grad:
            return None
        return dy @ W.T                                             # (N, in)


class Conv2d(_Linear, layers.Conv2d):
    """Twin of layers.Conv2d through gpu/conv.py; keeps im2col(x) for dW."""

    def forward_linear(self, x):
        (kh, kw), s, p = self.kernel_size, self.stride, self.padding
        self.x_shape = x.shape
        self.cols = conv.im2col(x, kh, kw, s, p)
        return conv.conv2d(x, self.params["W"], s, p, cols=self.cols)

    def bias_shaped(self):
        return self.params["b"].reshape(-1, 1, 1)

    def backward(self, dy):
        W, s, p = self.params["W"], self.stride, self.padding
        self.grads["W"] = conv.conv2d_weight_grad(self.cols, dy, W.shape, out=_into(self, "W", W))
        self._bias_grad(dy, (0, 2, 3))
        if self.skip_input_grad:
            return None
        return conv.conv_transpose2d(dy, W, s, p, self.x_shape[2:])


class ConvTranspose2d(_Linear, layers.ConvTranspose2d):
    """Twin of layers.ConvTranspose2d through gpu/conv.py; im2col(dy) serves dW and dx."""

    def forward_linear(self, x):
        out_hw = self.output_shape(*x.shape[2:])
        if min(out_hw) < 1:
            raise ValueError(f"ConvTranspose2d output would be {out_hw} for input {x.shape[2:]}")
        self.x = x
        return conv.conv_transpose2d(x, self.params["W"], self.stride, self.padding, out_hw)

    def bias_shaped(self):
        return self.params["b"].reshape(-1, 1, 1)

    def backward(self, dy):
        # As layers.ConvTranspose2d: dW is the conv weight gradient with dy as the input and x as
        # the output gradient, dx the conv of dy; both read im2col(dy), made once.
        W, s, p = self.params["W"], self.stride, self.padding
        (kh, kw) = self.kernel_size
        cols = conv.im2col(dy, kh, kw, s, p)
        self.grads["W"] = conv.conv2d_weight_grad(cols, self.x, W.shape, out=_into(self, "W", W))
        self._bias_grad(dy, (0, 2, 3))
        if self.skip_input_grad:
            return None
        return conv.conv2d(dy, W, s, p, cols=cols)


class _Fused:
    """An activation with a fused kernel for its forward with the bias before it, and for its
    backward alone or of two upstream gradients summed."""

    def forward(self, x):
        self.y = self.plain_forward(x)
        return self.y

    def forward_bias(self, z, b):
        self.y = self.BIAS(z, b)
        return self.y

    def backward(self, dy):
        return self.BACKWARD(dy, self.y)

    def backward_sum(self, dy1, dy2):
        return self.BACKWARD_SUM(dy1, dy2, self.y)


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


class Sequential(layers.Sequential):
    """Twin of layers.Sequential that runs a Dense or convolution and the fused activation after
    it as two kernels (the product, then act(z + b)).

    defer_last_bias (set by a model): the last layer's bias is left out of the forward, for the
    model to add in its own fused kernel (the decoder's logits go into the BCE kernel)."""

    defer_last_bias = False

    def forward(self, x):
        steps, i = self.layers, 0
        while i < len(steps):
            layer = steps[i]
            after = steps[i + 1] if i + 1 < len(steps) else None
            if isinstance(layer, _Linear) and isinstance(after, _Fused):
                x = after.forward_bias(layer.forward_linear(x), layer.bias_shaped())
                i += 2
                continue
            last = i == len(steps) - 1
            x = layer.forward_linear(x) if (last and self.defer_last_bias
                                            and isinstance(layer, _Linear)) else layer.forward(x)
            i += 1
        return x

    def backward(self, dy):
        return self.backward_from(dy)

    def backward_from(self, dy, dy2=None):
        """The chain rule as in layers.Sequential; dy2: a second upstream gradient to add to dy
        (two layers read this Sequential's output), summed inside the last activation's fused
        backward when there is one."""
        self.layers[0].skip_input_grad = self.skip_input_grad
        layers_ = list(reversed(self.layers))
        if dy2 is not None:
            if isinstance(layers_[0], _Fused):
                dy = layers_.pop(0).backward_sum(dy, dy2)
            else:
                dy = dy + dy2
        for layer in layers_:
            dy = layer.backward(dy)
        return dy
