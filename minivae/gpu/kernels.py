"""The gpu tier's fused elementwise kernels: each one CuPy kernel launch, plain NumPy on the CPU.

Read minivae/layers.py, losses.py, models.py and optim.py first: every function here computes an
expression written there, in the same operations and order, so the numbers agree (most of them
bit for bit); what changes is that CuPy runs each function as one kernel (`cupy.fuse`, as in
CuPy's user guide: a plain Python function of ufuncs and operators) instead of one kernel per
operation. On NumPy arrays a fused function is the Python function itself, as cupy.fuse does.

What a fused body may contain (CuPy's fusion, and the stand-in in tests/ checks it as it runs):
operators, in-place operators on its arguments (`m *= b1` writes m, `out[...] = y` writes out),
ufuncs such as exp, log1p, tanh, maximum, `where`, and one reduction (`xp.sum`, a function);
positional arguments only; no other indexing, reshaping, host reads or allocation.
"""

from minivae.backend import array_module

_KERNELS = {}          # (function, array module) -> its fused kernel


def fused(fn):
    """fn as one kernel where its arguments are CuPy arrays (cupy.fuse), fn itself on NumPy.

    On CuPy every Python number passed is handed to the kernel as a scalar of the arrays'
    floating dtype: cupy.fuse types a Python float argument as a double parameter, and a
    sub-expression of scalars alone by the first loop that fits, which can be half precision
    (tests/test_cupy_trace.py traces every kernel with CuPy's own tracer to keep both out)."""
    def call(*args):
        arrays = [a for a in args if hasattr(a, "shape")]
        xp = array_module(arrays[0]) if arrays else None
        if xp is None or xp.__name__ == "numpy":
            return fn(*args)
        kernel = _KERNELS.get((fn, xp))
        if kernel is None:
            kernel = _KERNELS[fn, xp] = xp.fuse(kernel_name=fn.__name__)(fn)
        scalar = next((a.dtype.type for a in arrays if a.dtype.kind == "f"), None)
        if scalar is not None:
            args = [scalar(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a
                    for a in args]
        return kernel(*args)
    call.__name__, call.__doc__, call.__wrapped__ = fn.__name__, fn.__doc__, fn
    return call


# --------------------------------------------------------------------------------------------
# A layer's bias and its activation (layers.py: Dense.forward / the convolutions' forward, then
# the activation's forward), and the activations' backward. Each writes into `out`, an array the
# caller gives: a fresh one, a buffer it keeps, or a view of either in another layout.


@fused
def bias_add(z, b):
    """x @ W + b (or conv + b), given z = x @ W: the bias of a layer with no activation after."""
    return z + b


@fused
def bias_relu(z, b, out):
    """out = ReLU.forward(z + b): max(z + b, 0)."""
    xp = array_module(z)
    out[...] = xp.maximum(z + b, 0)


@fused
def bias_tanh(z, b, out):
    """out = Tanh.forward(z + b)."""
    xp = array_module(z)
    out[...] = xp.tanh(z + b)


@fused
def bias_sigmoid(z, b, out):
    """out = Sigmoid.forward(z + b): 0.5 (1 + tanh((z + b) / 2)), layers.sigmoid."""
    xp = array_module(z)
    out[...] = 0.5 * (1 + xp.tanh(0.5 * (z + b)))


@fused
def relu_backward(dy, y, out):
    """out = ReLU.backward: dy * (y > 0)."""
    out[...] = dy * (y > 0)


@fused
def tanh_backward(dy, y, out):
    """out = Tanh.backward: dy * (1 - y^2)."""
    out[...] = dy * (1 - y * y)


@fused
def sigmoid_backward(dy, y, out):
    """out = Sigmoid.backward: dy * y * (1 - y)."""
    out[...] = dy * y * (1 - y)


@fused
def relu_backward_sum(dy1, dy2, y, out):
    """out = ReLU.backward(dy1 + dy2): two layers read this ReLU's output (the encoder's two
    heads)."""
    out[...] = (dy1 + dy2) * (y > 0)


@fused
def tanh_backward_sum(dy1, dy2, y, out):
    """out = Tanh.backward(dy1 + dy2)."""
    out[...] = (dy1 + dy2) * (1 - y * y)


@fused
def sigmoid_backward_sum(dy1, dy2, y, out):
    """out = Sigmoid.backward(dy1 + dy2)."""
    out[...] = (dy1 + dy2) * y * (1 - y)


# --------------------------------------------------------------------------------------------
# The objective (models.VAE._forward / loss_and_grads, losses.py)


@fused
def bce_with_logits_bias(z, b, x, n, dlogits):
    """The decoder's last bias, then losses.bce_with_logits and its gradient divided by the
    batch size n: (logits, the elementwise BCE); d BCE / d logits / n written into dlogits."""
    xp = array_module(z)
    logits = z + b
    dlogits[...] = (0.5 * (1 + xp.tanh(0.5 * logits)) - x) / n
    return logits, xp.maximum(logits, 0) - logits * x + xp.log1p(xp.exp(-xp.abs(logits)))


@fused
def heads_log_var(zmu, bmu, zs, bs, eps):
    """The heads' biases, the reparametrisation and kl_log_var (seed 001: s = log sigma^2):
    (mu, sigma, z, the elementwise KL, dKL/dmu, dKL/ds)."""
    xp = array_module(zmu)
    mu, s = zmu + bmu, zs + bs
    sigma = xp.exp(0.5 * s)
    var = xp.exp(s)
    return mu, sigma, mu + eps * sigma, 0.5 * (var + mu * mu - 1 - s), mu, 0.5 * (var - 1)


@fused
def heads_log_sigma(zmu, bmu, zs, bs, eps):
    """The same for kl_log_sigma (seed 000: s = log sigma)."""
    xp = array_module(zmu)
    mu, s = zmu + bmu, zs + bs
    sigma = xp.exp(1.0 * s)
    var = xp.exp(2 * s)
    return mu, sigma, mu + eps * sigma, 0.5 * (var + mu * mu - 1 - 2 * s), mu, var - 1


HEADS = {"log_var": heads_log_var, "log_sigma": heads_log_sigma}


@fused
def heads_backward(dz, eps, sigma, dmu_kl, dscale_kl, c, beta_n):
    """VAE.loss_and_grads through the reparametrisation and the KL: (dmu, dscale)."""
    return dz + beta_n * dmu_kl, dz * eps * (c * sigma) + beta_n * dscale_kl


@fused
def sum_of_squares(p):
    """The L2 penalty's sum: sum p^2 over every penalised parameter at once (losses.l2_penalty)."""
    xp = array_module(p)
    return xp.sum(p * p)


@fused
def add_l2_grad(g, p, two_lam):
    """g += 2 lambda p: the penalty's gradient added to every penalised parameter's (in place)."""
    g += two_lam * p


# --------------------------------------------------------------------------------------------
# Adam (optim.Adam.step) over every parameter at once, in place


@fused
def adam_step(p, g, m, v, b1, b2, one_minus_b1, one_minus_b2, bias1, bias2, lr, eps):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr (m / bias1) / (sqrt(v / bias2) + eps), bias_i = 1 - b_i^t.

    Every factor that involves only hyper-parameters (1 - b_i, bias_i) comes in computed on the
    host: inside a kernel a sub-expression of scalars alone is typed by CuPy's fusion without the
    weak-scalar rule, and 1 - b1 came out in half precision (0.10009766), every step 1.3% large."""
    xp = array_module(p)
    m *= b1
    m += one_minus_b1 * g
    v *= b2
    v += one_minus_b2 * g * g
    p -= lr * (m / bias1) / (xp.sqrt(v / bias2) + eps)


# --------------------------------------------------------------------------------------------
# A replayed step's inputs (minivae/gpu/replay.py): the batch and its noise picked on the device
# through a step counter, the images converted there.


@fused
def batch_positions(counter, batch, offsets, out):
    """out = counter * batch + offsets: where this step's batch starts in the epoch's order."""
    out[...] = counter * batch + offsets


@fused
def pixel_sources(image, pixels, pixel_map, zero_slot, out):
    """out = the position in the stored images (flattened, one zero past the end) of every
    input pixel of every image in the batch: image * pixels + pixel_map, or zero_slot for the
    padding (pixel_map < 0)."""
    xp = array_module(image)
    out[...] = xp.where(pixel_map >= 0, image * pixels + pixel_map, zero_slot)


@fused
def to_unit(raw, scale, out):
    """out = raw / scale: uint8 pixels to [0, 1] in out's dtype (data.to_float's division)."""
    out[...] = raw / scale


@fused
def advance(counter):
    """counter += 1."""
    counter += 1
