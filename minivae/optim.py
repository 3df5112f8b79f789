"""Adam (Kingma & Ba, 2015), bias-corrected, as Flux's ADAM and torch.optim.Adam compute it.

For each parameter p with gradient g, at step t = 1, 2, ...:

    m = b1 m + (1 - b1) g              running mean of the gradient
    v = b2 v + (1 - b2) g^2            running mean of its square
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The divisions by 1 - b^t undo the bias of starting m and v at zero.

What we store instead: the running sums M = m / (1 - b1) and V = v / (1 - b2), so that

    M = b1 M + g,    V = b2 V + g^2,    p -= c M / (sqrt(V) + e)
    with r = sqrt((1 - b2) / (1 - b2^t)),  c = lr (1 - b1) / ((1 - b1^t) r),  e = eps / r

(substitute m = (1 - b1) M and sqrt(v / (1 - b2^t)) = r sqrt(V), then divide above and below by
r). The same update, up to rounding, with every per-step constant folded into two scalars: 10
passes over the numbers instead of 14 (the gradients are read where the layers left them, not
gathered first). That matters because Adam runs on one core, touches every parameter several
times, and was a quarter of the MLP's training step.
"""

import math

from minivae.backend import array_module


class Adam:
    """M and V of all parameters live in two flat vectors, so most of a step is array
    operations over every number at once rather than a dozen per parameter tensor (a model has
    tens of small tensors, and per-call overhead would dominate); only reading the gradients and
    writing the parameters go tensor by tensor. self.M / self.V give per-name views of them.
    The step writes into a scratch vector kept from step to step: a fresh megabyte-sized
    temporary is often fresh memory from the OS, and every page of it a fault.
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
        self.M_flat, self.V_flat, self.work = (xp.zeros(start, dtype=dtype) for _ in range(3))
        self.M = {k: self.M_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}
        self.V = {k: self.V_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}

    def step(self):
        """Update every parameter in place from model.grads."""
        self.t += 1
        M, V, work = self.M_flat, self.V_flat, self.work
        xp = array_module(M)
        M *= self.b1
        V *= self.b2
        for name, (a, b, _) in self.slots.items():   # the gradients are read where they are
            g = self.model.grads[name].reshape(-1)
            M[a:b] += g
            xp.multiply(g, g, out=work[a:b])
        V += work
        r = math.sqrt((1 - self.b2) / (1 - self.b2 ** self.t))
        c = self.lr * (1 - self.b1) / ((1 - self.b1 ** self.t) * r)
        denom = xp.sqrt(V, out=work)
        denom += self.eps / r
        update = xp.divide(M, denom, out=work)
        update *= c
        for name, p in self.model.params.items():
            a, b, shape = self.slots[name]
            p -= update[a:b].reshape(shape)

    def state_dict(self):
        """Everything needed to continue exactly: step count, hyper-parameters and the sums."""
        state = {"t": self.t, "lr": self.lr, "b1": self.b1, "b2": self.b2, "eps": self.eps}
        state.update({f"M.{k}": a for k, a in self.M.items()})
        state.update({f"V.{k}": a for k, a in self.V.items()})
        return state

    def load_state_dict(self, state):
        """Restore a state_dict, or one saved before Adam kept sums: that one holds the means
        m = (1 - b1) M and v = (1 - b2) V, under m.<name> and v.<name>."""
        self.t = int(state["t"])
        self.lr, self.b1, self.b2, self.eps = (float(state[k]) for k in ("lr", "b1", "b2", "eps"))
        for sums, key, beta in ((self.M, "M", self.b1), (self.V, "V", self.b2)):
            for k, a in sums.items():
                src, scale = state.get(f"{key}.{k}"), 1.0
                if src is None:
                    src, scale = state[f"{key.lower()}.{k}"], 1 / (1 - beta)
                if tuple(src.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {key}.{k}: shape {tuple(src.shape)}, "
                                     f"expected {tuple(a.shape)}")
                a[...] = array_module(a).asarray(src, dtype=a.dtype) * scale
