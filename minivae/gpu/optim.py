"""Adam as one kernel: the twin of minivae/optim.py's Adam for models of the gpu tier.

Read minivae/optim.py first. A gpu-tier model keeps every parameter and gradient in one flat
buffer (minivae/gpu/models.py), so Adam keeps m and v flat too and updates all of them, and the
parameters, in one fused kernel (kernels.adam_step): the same formulas, in the same order, as the
plain Adam's loop over the parameters, which takes about ten kernels per parameter tensor.
The state is the plain Adam's (t, the hyper-parameters, m.<name>, v.<name>).
"""

from minivae import optim
from minivae.gpu import kernels


class Adam(optim.Adam):
    """Twin of optim.Adam for a model with flat_params / flat_grads (gpu.models.FlatVAE)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not hasattr(model, "flat_params"):
            raise TypeError(f"{type(model).__name__} keeps no flat parameter buffer: build it "
                            f"in the gpu tier (minivae.tiers.build_model(..., impl='gpu'))")
        self.model = model
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.t = 0
        xp = model.xp
        self.m_flat = xp.zeros_like(model.flat_params)
        self.v_flat = xp.zeros_like(model.flat_params)
        self.m = {k: self.m_flat[a:b].reshape(model.params[k].shape)
                  for k, (a, b) in model.slots.items()}
        self.v = {k: self.v_flat[a:b].reshape(model.params[k].shape)
                  for k, (a, b) in model.slots.items()}

    def step(self):
        """Update every parameter in place from the model's flat gradient buffer."""
        self.t += 1
        self.apply(1 - self.b1 ** self.t, 1 - self.b2 ** self.t)

    def apply(self, bias1, bias2):
        """The update of step t given its bias corrections 1 - b1^t and 1 - b2^t: numbers, or
        device arrays a CUDA graph reads at every replay (minivae/gpu/replay.py, which counts
        self.t itself)."""
        kernels.adam_step(self.model.flat_params, self.model.flat_grads, self.m_flat,
                          self.v_flat, self.b1, self.b2, 1 - self.b1, 1 - self.b2, bias1, bias2,
                          self.lr, self.eps)
