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
    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.model = model
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.t = 0
        self.m = {k: array_module(p).zeros_like(p) for k, p in model.params.items()}
        self.v = {k: array_module(p).zeros_like(p) for k, p in model.params.items()}

    def step(self):
        """Update every parameter in place from model.grads."""
        self.t += 1
        b1, b2 = self.b1, self.b2
        # sqrt(v / (1 - b2^t)) = sqrt(v) / sqrt(1 - b2^t): one scalar division, as PyTorch does.
        step_size = self.lr / (1 - b1 ** self.t)
        c2 = math.sqrt(1 - b2 ** self.t)
        grads = self.model.grads
        for name, p in self.model.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= step_size * m / (array_module(p).sqrt(v) / c2 + self.eps)

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
