"""The VAE objective of the gpu tier: models.VAE's forward and backward in few launches, one
host read a step, and every parameter and gradient in one flat buffer.

Read minivae/models.py first: `FlatVAE` goes before a seed model's class (minivae.tiers builds
`FlatVAE + ConvVAE` for the gpu tier) and carries out the same VAE.loss_and_grads, with
  * the heads' biases, the reparametrisation and the KL term with its gradients in one fused
    kernel (kernels.heads_*), and their backward in another;
  * the decoder's last bias, the BCE and its gradient in one fused kernel (the gradient written
    where the decoder's last layer gathers it from);
  * the L2 penalty over the flat buffer: its value a square and a sum per run of penalised
    parameters (one run for each seed model), its gradient one fused kernel;
  * the loss terms summed straight into one small device array (each sum shaped so that CuPy
    runs its own reduction kernel, which writes into its `out`, rather than CUB, which writes a
    fresh array and copies it: tests/standin/cupy/_launches.py) and read to the host in one
    transfer, the step's only device-to-host read;
  * parameters and gradients living in two flat device buffers (the layers hold views), so
    Adam (minivae/gpu/optim.py) is one kernel over all of them.
"""

from minivae.backend import to_host
from minivae.gpu import kernels
from minivae.gpu.layers import ConvTranspose2d, _Linear
from minivae.models import LossTerms


class FlatVAE:
    """A mixin for models.VAE subclasses built from the gpu tier's layers (see the docstring)."""

    def _finish(self, scale_name):
        super()._finish(scale_name)
        xp, total = self.xp, sum(p.size for p in self.params.values())
        self.flat_params = xp.empty(total, dtype=self.dtype)
        self.flat_grads = xp.zeros(total, dtype=self.dtype)
        self.slots, start = {}, 0
        for name, p in list(self.params.items()):
            end = start + p.size
            view = self.flat_params[start:end].reshape(p.shape)
            view[...] = p
            self.params[name] = view
            self.grads[name] = self.flat_grads[start:end].reshape(p.shape)
            self.slots[name], start = (start, end), end
        self.device_terms = xp.zeros(3, dtype=self.dtype)  # sum BCE, sum KL, sum p^2
        self._term_slots = [self.device_terms[i:i + 1] for i in range(3)]
        self.decoder.defer_last_bias = isinstance(self.decoder.layers[-1], _Linear)

    def _penalised_runs(self):
        """[(start, end)] of the flat buffer covering the penalised parameters, merged."""
        runs = []
        for start, end in sorted(self.slots[name] for name in self.regularized):
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
        return runs

    def _last_bias(self):
        last = self.decoder.layers[-1]
        return last.bias_shaped() if self.decoder.defer_last_bias else 0

    def decode(self, z):
        """z -> Bernoulli logits, as models.VAE.decode (the deferred bias added)."""
        return kernels.bias_add(self.decoder.forward(z), self._last_bias())

    # ---- the objective

    def loss(self, x, noise=None, beta=1.0, weight_decay=0.01):
        return self._forward(x, noise, beta, weight_decay)[0]

    def loss_and_grads(self, x, noise=None, beta=1.0, weight_decay=0.01, input_grad=False):
        """models.VAE.loss_and_grads, the same numbers (see the module docstring)."""
        cache = self._forward_on_device(x, noise, weight_decay)
        terms = self._read_terms(x.shape[0], beta, weight_decay)
        self._backward(x.shape[0], cache, beta / x.shape[0], weight_decay, input_grad)
        return terms

    def grads_on_device(self, x, noise, beta_n, weight_decay=0.01):
        """loss_and_grads without reading the loss terms to the host: every launch of a step
        and no transfer (x and noise already on the device), so the step can be captured in a
        CUDA graph; the terms stay in self.device_terms (sum BCE, sum KL, sum p^2). beta_n: the
        KL weight over the batch size, a number or a device array (a graph's per-step value)."""
        cache = self._forward_on_device(x, noise, weight_decay)
        self._backward(x.shape[0], cache, beta_n, weight_decay, False)
        return self.device_terms

    def _backward(self, n, cache, beta_n, weight_decay, input_grad):
        logits, eps, sigma, dlogits, dmu_kl, dscale_kl = cache
        dz = self.decoder.backward(dlogits, slot=self._dslot)   # dlogits is already / n
        dmu, dscale = kernels.heads_backward(dz, eps, sigma, dmu_kl, dscale_kl,
                                             self.sigma_exponent, beta_n)
        dh_mu, dh_scale = self.mu.backward(dmu), self.scale.backward(dscale)
        self.encoder.skip_input_grad = not input_grad
        dx = self.encoder.backward_from(dh_mu, dh_scale)        # the two heads' sum, fused
        if input_grad:
            self.input_grad = dx - logits / n
        self._penalty_grads(weight_decay)

    def _forward(self, x, noise, beta, weight_decay):
        cache = self._forward_on_device(x, noise, weight_decay)
        return self._read_terms(x.shape[0], beta, weight_decay), cache

    def _read_terms(self, n, beta, weight_decay):
        """The loss terms from the device's three sums, in one transfer."""
        return terms_from_sums(to_host(self.device_terms), n, beta, weight_decay)  # the one read

    def _forward_on_device(self, x, noise, weight_decay):
        xp, n = self.xp, x.shape[0]
        h = self.encoder.forward(x)
        zmu, zs = self.mu.forward_linear(h), self.scale.forward_linear(h)
        eps = self.draw_noise(n) if noise is None else xp.asarray(noise, dtype=zmu.dtype)
        mu, sigma, z, kl, dmu_kl, dscale_kl = kernels.HEADS[self.scale_name](
            zmu, self.mu.params["b"], zs, self.scale.params["b"], eps)
        decoded = self.decoder.forward(z)
        dlogits = self._dlogits_buffer(decoded)
        logits, bce = kernels.bce_with_logits_bias(decoded, self._last_bias(), x, n, dlogits)
        _sum_into(bce, self._term_slots[0])
        _sum_into(kl, self._term_slots[1])
        self._penalty_value(weight_decay)
        return logits, eps, sigma, dlogits, dmu_kl, dscale_kl

    def _dlogits_buffer(self, like):
        """Where the BCE kernel writes d loss / d logits: the slot buffer the decoder's last
        layer gathers its columns from when it is a ConvTranspose2d (kept as self._dslot),
        else a new array."""
        last = self.decoder.steps[-1]
        if isinstance(last, ConvTranspose2d):
            view, self._dslot = last.slot("dy", like.shape, like)
            return view
        self._dslot = None
        return self.xp.empty(like.shape, dtype=like.dtype)

    # ---- the L2 penalty over the flat buffer

    def _penalty_value(self, weight_decay):
        """Writes sum p^2 into the third term (nothing without a penalty: terms_from_sums
        does not read it then)."""
        if weight_decay == 0:
            return
        runs = self._penalised_runs()
        if len(runs) == 1:
            a, b = runs[0]
            p = self.flat_params[a:b]
            _sum_into(p * p, self._term_slots[2])
        else:
            self._term_slots[2][...] = sum(kernels.sum_of_squares(self.flat_params[a:b])
                                           for a, b in runs)

    def _penalty_grads(self, weight_decay):
        """Adds 2 lambda p to the penalised parameters' gradients."""
        if weight_decay == 0:
            return
        for a, b in self._penalised_runs():
            kernels.add_l2_grad(self.flat_grads[a:b], self.flat_params[a:b], 2 * weight_decay)


def terms_from_sums(sums, n, beta, weight_decay):
    """models.LossTerms from the three sums of a step of n images on the host (sum BCE, sum KL,
    sum p^2): what loss_and_grads returns, and what a replayed step's sums give."""
    recon, kl_value = float(sums[0]) / n, float(sums[1]) / n
    reg = weight_decay * float(sums[2]) if weight_decay != 0 else 0.0
    return LossTerms(recon + beta * kl_value + reg, recon, kl_value, reg)


def _sum_into(a, out):
    """out (1,) = a.sum(), as one launch of CuPy's own reduction kernel: summed over the first
    axis of a seen as (a.size, 1), which CUB does not take, so nothing is copied afterwards
    (tests/standin/cupy/_launches.py, reduction_sum); NumPy sums it pairwise as a.sum() does."""
    a.reshape(-1, 1).sum(axis=0, out=out)


def flat_class(cls):
    """The gpu tier's class of model class cls: FlatVAE before it (made once per class)."""
    made = _CLASSES.get(cls)
    if made is None:
        made = _CLASSES[cls] = type(cls.__name__, (FlatVAE, cls), {"__module__": __name__})
    return made


_CLASSES = {}
