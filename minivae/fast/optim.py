"""Adam over flat vectors: the twin of minivae/optim.py's Adam, faster on NumPy. Read that first.

The same update, rewritten. Store the running sums M = m / (1 - b1) and V = v / (1 - b2) instead
of the means m, v; then

    M = b1 M + g,    V = b2 V + g^2,    p -= c M / (sqrt(V) + e)
    with r = sqrt((1 - b2) / (1 - b2^t)),  c = lr (1 - b1) / ((1 - b1^t) r),  e = eps / r

(substitute m = (1 - b1) M and sqrt(v / (1 - b2^t)) = r sqrt(V), then divide above and below by
r): the same update up to rounding, with every per-step constant folded into two scalars, 10
passes over the numbers instead of 14. And M and V of all parameters live in two flat vectors,
so most of a step is a few array operations over every number at once rather than a dozen per
parameter tensor (a model has tens of small tensors, and per-call overhead would dominate); only
reading the gradients and writing the parameters go tensor by tensor. The step writes into a
scratch vector kept from step to step: a fresh megabyte-sized temporary is often fresh memory
from the OS, and every page of it a fault. Adam runs on one core and was a quarter of the MLP's
training step before this.

The state is saved as the plain Adam's (t, the hyper-parameters, the means m.<name> =
(1 - b1) M, v.<name> = (1 - b2) V), converted at this class's edge, so a checkpoint does not
depend on the tier. The conversion runs in float64 and the means are saved so: sums of training's
float32 come back bit for bit (a float64 run resumes on this tier to rounding).
"""

import math

from minivae.backend import array_module


class Adam:
    """Twin of optim.Adam: the same arguments and state_dict (converted as described above)."""

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
        grads = self.model.grads
        for name, (a, b, _) in self.slots.items():   # the gradients are read where they are
            g = grads[name].reshape(-1)
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
        """optim.Adam's state: step count, hyper-parameters, the means m = (1 - b1) M and
        v = (1 - b2) V (float64)."""
        state = {"t": self.t, "lr": self.lr, "b1": self.b1, "b2": self.b2, "eps": self.eps}
        for key, sums, beta in (("m", self.M, self.b1), ("v", self.V, self.b2)):
            state.update({f"{key}.{k}": (1 - beta) * a.astype("float64") for k, a in sums.items()})
        return state

    def load_state_dict(self, state):
        """Restore an optim.Adam state_dict: M = m / (1 - b1), V = v / (1 - b2)."""
        self.t = int(state["t"])
        self.lr, self.b1, self.b2, self.eps = (float(state[k]) for k in ("lr", "b1", "b2", "eps"))
        for sums, key, beta in ((self.M, "m", self.b1), (self.V, "v", self.b2)):
            for k, a in sums.items():
                src = state[f"{key}.{k}"]
                if tuple(src.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {key}.{k}: shape {tuple(src.shape)}, "
                                     f"expected {tuple(a.shape)}")
                means = array_module(a).asarray(src, dtype="float64")
                a[...] = (means / (1 - beta)).astype(a.dtype)
