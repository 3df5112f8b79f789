"""The optimizers, as the textbook writes them: SGD, SGD with momentum, and Adam.

Each takes the model (its params and, after loss_and_grads, its grads, dicts of the same names),
updates every parameter in place in step(), and saves what it needs to continue exactly in
state_dict(): its step count, its hyper-parameters, and its running arrays by parameter name.
For each parameter p with gradient g, at step t = 1, 2, ...:

    SGD        p -= lr g
    momentum   v = mu v - lr g;  p += v              v: a velocity, the running sum of past steps
    Adam       m = b1 m + (1 - b1) g                 running mean of the gradient
               v = b2 v + (1 - b2) g^2               running mean of its square
               p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Adam (Kingma & Ba, 2015) is bias-corrected as Flux's ADAM and torch.optim.Adam compute it: the
divisions by 1 - b^t undo the bias of starting m and v at zero (after one step m = (1 - b1) g,
and m / (1 - b1) = g). Momentum is cs231n's form, which PyTorch's SGD(momentum=mu) equals for a
constant lr (its v is this one's -v / lr).

These work for a model of any tier; minivae.tiers.make_optimizer(model, name) gives the one of
the model's tier where the tier has a twin (minivae/fast/optim.py and minivae/gpu/optim.py have
Adam's), which computes the same update faster and saves the same state.
"""

from minivae.backend import array_module


def _check_lr(lr):
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")


def _load_arrays(key, arrays, state):
    """Copy state[f"{key}.<name>"] into each arrays[<name>], in place (views stay views)."""
    for k, a in arrays.items():
        src = state[f"{key}.{k}"]
        if tuple(src.shape) != tuple(a.shape):
            raise ValueError(f"optimizer state {key}.{k}: shape {tuple(src.shape)}, "
                             f"expected {tuple(a.shape)}")
        a[...] = array_module(a).asarray(src, dtype=a.dtype)


class SGD:
    """SGD(model, lr=1e-2): p -= lr g."""

    def __init__(self, model, lr=1e-2):
        _check_lr(lr)
        self.model, self.lr, self.t = model, lr, 0

    def step(self):
        self.t += 1
        for name, p in self.model.params.items():
            p -= self.lr * self.model.grads[name]

    def state_dict(self):
        return {"t": self.t, "lr": self.lr}

    def load_state_dict(self, state):
        self.t, self.lr = int(state["t"]), float(state["lr"])


class Momentum:
    """Momentum(model, lr=1e-2, momentum=0.9): v = mu v - lr g; p += v."""

    def __init__(self, model, lr=1e-2, momentum=0.9):
        _check_lr(lr)
        self.model, self.lr, self.momentum, self.t = model, lr, momentum, 0
        self.v = {k: array_module(p).zeros_like(p) for k, p in model.params.items()}

    def step(self):
        self.t += 1
        for name, p in self.model.params.items():
            self.v[name] = self.momentum * self.v[name] - self.lr * self.model.grads[name]
            p += self.v[name]

    def state_dict(self):
        state = {"t": self.t, "lr": self.lr, "momentum": self.momentum}
        state.update({f"v.{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state):
        self.t, self.lr, self.momentum = (int(state["t"]), float(state["lr"]),
                                          float(state["momentum"]))
        _load_arrays("v", self.v, state)


class Adam:
    """Adam(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8) over model.params, reading model.grads."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        _check_lr(lr)
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
        _load_arrays("m", self.m, state)
        _load_arrays("v", self.v, state)


# name -> class: what `train --optimizer` offers (minivae.tiers maps each tier's twins)
OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}
