"""Adam (Kingma & Ba, 2015), bias-corrected, as Flux's ADAM and torch.optim.Adam compute it.

For each parameter p with gradient g, at step t = 1, 2, ...:

    m = b1 m + (1 - b1) g              running mean of the gradient
    v = b2 v + (1 - b2) g^2            running mean of its square
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The divisions by 1 - b^t undo the bias of starting m and v at zero.
"""

import math

from minivae.backend import array_module


class Adam:
    """The moments of all parameters live in two flat vectors, so a step is a dozen array
    operations over every number at once rather than a dozen per parameter tensor (a model has
    tens of small tensors, and per-call overhead would dominate). self.m / self.v give per-name
    views of them. The step writes into two scratch vectors kept from step to step: a fresh
    megabyte-sized temporary is often fresh memory from the OS, and every page of it a fault.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.model = model
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.t = 0
        params = model.params
        xp = array_module(next(iter(params.values())))
        self.slots, start = {}, 0                 # name -> where it sits in the flat vectors
        for name, p in params.items():
            self.slots[name] = (start, start + p.size, p.shape)
            start += p.size
        dtype = xp.result_type(*params.values())
        self.m_flat, self.v_flat, self.g, self.work = (xp.zeros(start, dtype=dtype)
                                                       for _ in range(4))
        self.m = {k: self.m_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}
        self.v = {k: self.v_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}

    def step(self):
        """Update every parameter in place from model.grads."""
        self.t += 1
        b1, b2, m, v, g, work = self.b1, self.b2, self.m_flat, self.v_flat, self.g, self.work
        xp = array_module(m)
        for name, (a, b, _) in self.slots.items():
            g[a:b] = self.model.grads[name].reshape(-1)
        m *= b1
        m += xp.multiply(g, 1 - b1, out=work)
        g *= g
        v *= b2
        v += xp.multiply(g, 1 - b2, out=work)
        # sqrt(v / (1 - b2^t)) = sqrt(v) / sqrt(1 - b2^t): one scalar division, as PyTorch does.
        denom = xp.sqrt(v, out=g)                 # g is spent: reuse it
        denom /= math.sqrt(1 - b2 ** self.t)
        denom += self.eps
        update = xp.multiply(m, self.lr / (1 - b1 ** self.t), out=work)
        update /= denom
        for name, p in self.model.params.items():
            a, b, shape = self.slots[name]
            p -= update[a:b].reshape(shape)

    def state_dict(self):
        """Everything needed to continue exactly: step count, hyper-parameters and moments."""
        state = {"t": self.t, "lr": self.lr, "b1": self.b1, "b2": self.b2, "eps": self.eps}
        state.update({f"m.{k}": a for k, a in self.m.items()})
        state.update({f"v.{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.lr, self.b1, self.b2, self.eps = (float(state[k]) for k in ("lr", "b1", "b2", "eps"))
        for moments, prefix in ((self.m, "m."), (self.v, "v.")):
            for k, a in moments.items():
                src = state[prefix + k]
                if tuple(src.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {prefix + k}: shape {tuple(src.shape)}, "
                                     f"expected {tuple(a.shape)}")
                a[...] = array_module(a).asarray(src, dtype=a.dtype)
