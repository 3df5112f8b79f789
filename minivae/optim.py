"""Adam (Kingma & Ba, 2015), bias-corrected, as Flux's ADAM and torch.optim.Adam compute it.

For each parameter p with gradient g, at step t = 1, 2, ...:

    m = b1 m + (1 - b1) g              running mean of the gradient
    v = b2 v + (1 - b2) g^2            running mean of its square
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The divisions by 1 - b^t undo the bias of starting m and v at zero: after one step m = (1 - b1) g,
and m / (1 - b1) = g.

This Adam works for a model of any tier; minivae.tiers.make_adam(model) gives the one of the
model's tier (minivae/fast/optim.py on the fast tier), which computes the same update faster and
saves the same state (the step count, m and v).
"""

from minivae.backend import array_module


class Adam:
    """Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8) over model.params, reading model.grads."""

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
        for name, p in self.model.params.items():
            g = self.model.grads[name]
            self.m[name] = b1 * self.m[name] + (1 - b1) * g
            self.v[name] = b2 * self.v[name] + (1 - b2) * g * g
            m_hat = self.m[name] / (1 - b1 ** self.t)
            v_hat = self.v[name] / (1 - b2 ** self.t)
            p -= self.lr * m_hat / (array_module(p).sqrt(v_hat) + self.eps)

    def state_dict(self):
        """Everything needed to continue exactly: step count, hyper-parameters, m and v."""
        state = {"t": self.t, "lr": self.lr, "b1": self.b1, "b2": self.b2, "eps": self.eps}
        state.update({f"m.{k}": a for k, a in self.m.items()})
        state.update({f"v.{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state):
        """Restore a state_dict (KeyError for a missing array, ValueError for a misshapen one)."""
        self.t = int(state["t"])
        self.lr, self.b1, self.b2, self.eps = (float(state[k]) for k in ("lr", "b1", "b2", "eps"))
        for key, means in (("m", self.m), ("v", self.v)):
            for k, a in means.items():
                src = state[f"{key}.{k}"]
                if tuple(src.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {key}.{k}: shape {tuple(src.shape)}, "
                                     f"expected {tuple(a.shape)}")
                a[...] = array_module(a).asarray(src, dtype=a.dtype)     # in place: views stay
