"""Adam over flat vectors: the twin of minivae/optim.py's Adam, faster on NumPy. Read that first.

The running means m and v are updated exactly as the plain Adam updates them (the same
operations in the same order, so the same numbers), and the bias-corrected update is folded:

    p -= lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
      =  c m / (sqrt(v) + e)   with  r = sqrt(1 - b2^t),  c = lr r / (1 - b1^t),  e = eps r

(multiply above and below by r): every per-step constant in two scalars, so m_hat and v_hat are
never formed. And m and v of all parameters live in two flat vectors, so most of a step is a few
array operations over every number at once rather than a dozen per parameter tensor (a model has
tens of small tensors, and per-call overhead would dominate); only reading the gradients and
writing the parameters go tensor by tensor. The step writes into scratch vectors kept from step
to step: a fresh megabyte-sized temporary is often fresh memory from the OS, and every page of it
a fault.

The state is the plain Adam's (t, the hyper-parameters, m.<name>, v.<name>), so a checkpoint does
not depend on the tier and a run resumes bit for bit in either.
"""

import math

from minivae.backend import array_module


class Adam:
    """Twin of optim.Adam: the same arguments, the same state_dict."""

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
        self.m_flat, self.v_flat, self.work, self.work2 = (xp.zeros(start, dtype=dtype)
                                                           for _ in range(4))
        self.m = {k: self.m_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}
        self.v = {k: self.v_flat[a:b].reshape(shape) for k, (a, b, shape) in self.slots.items()}

    def step(self):
        """Update every parameter in place from model.grads."""
        self.t += 1
        b1, b2 = self.b1, self.b2
        m, v, work, work2 = self.m_flat, self.v_flat, self.work, self.work2
        xp = array_module(m)
        grads = self.model.grads
        for name, (a, b, _) in self.slots.items():   # the gradients are read where they are
            g = grads[name].reshape(-1)
            xp.multiply(g, 1 - b1, out=work[a:b])     # (1 - b1) g
            xp.multiply(g, 1 - b2, out=work2[a:b])    # (1 - b2) g g, in the plain Adam's order
            work2[a:b] *= g
        m *= b1                                       # m = b1 m + (1 - b1) g
        m += work
        v *= b2                                       # v = b2 v + (1 - b2) g^2
        v += work2
        r = math.sqrt(1 - b2 ** self.t)
        denom = xp.sqrt(v, out=work)
        denom += self.eps * r
        update = xp.divide(m, denom, out=work)
        update *= self.lr * r / (1 - b1 ** self.t)
        for name, p in self.model.params.items():
            a, b, shape = self.slots[name]
            p -= update[a:b].reshape(shape)

    def state_dict(self):
        """optim.Adam's state: step count, hyper-parameters, the means m and v."""
        state = {"t": self.t, "lr": self.lr, "b1": self.b1, "b2": self.b2, "eps": self.eps}
        state.update({f"m.{k}": a for k, a in self.m.items()})
        state.update({f"v.{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state):
        """Restore an optim.Adam state_dict (KeyError for a missing array, ValueError for a
        misshapen one)."""
        self.t = int(state["t"])
        self.lr, self.b1, self.b2, self.eps = (float(state[k]) for k in ("lr", "b1", "b2", "eps"))
        for key, means in (("m", self.m), ("v", self.v)):
            for k, a in means.items():
                src = state[f"{key}.{k}"]
                if tuple(src.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {key}.{k}: shape {tuple(src.shape)}, "
                                     f"expected {tuple(a.shape)}")
                a[...] = array_module(a).asarray(src, dtype=a.dtype)
