"""The gpu tier's training step as one CUDA graph: captured once per batch size, then replayed.

Read minivae/gpu/models.py and minivae/train.py first. At the seed models' sizes a GPU step is
bound by the host: CuPy spends some 20 us of Python per kernel call, so the gpu tier's ~100
launches cost more host time than device time. A CUDA graph records every launch of a step
once and replays them all for one host call, so a replayed step costs its kernels' device time.

A graph replays the same kernels on the same memory with the same arguments, so everything
that changes from step to step lives in device arrays the graph reads:

* the training images, uploaded once as they are stored (uint8, flattened, one zero past the
  end for the padding), and per epoch the order of the images (the data generator's
  permutation), the reparametrisation noise of every step (drawn from the model's generator in
  the order and amounts the eager loop draws them) and a table of per-step numbers (the KL
  weight over the batch size, Adam's bias corrections 1 - b1^t and 1 - b2^t): four uploads an
  epoch, and the numbers of every step are the eager loop's;
* a step counter on the device: the graph's first kernels pick the batch's images through it,
  gather and convert them (padding and uint8 / 255 in the kernel), pick its noise and its row of
  the table, and its last ones write the step's three loss sums into a per-epoch table and
  advance the counter. A replay is one launch, no read and no upload; the host reads the loss
  table a few times a second (minivae/train.py).

Memory: the capture runs on a stream of its own, from a memory pool of its own
(`cupy.cuda.using_allocator`), so the arrays the graph uses are never handed to anything else
while it lives; the arrays kept before it (parameters, Adam's moments, the layers' kept
buffers, the tables here) live as long as the model.

Warmed up, then checked: before the capture, two eager steps on the capture's stream load every
kernel and make the cuBLAS handle (drivers before CUDA 12.3 refuse to load a kernel during a
capture); after it, two replays from the same state and inputs must give the two eager steps'
parameters, Adam moments and loss sums (to float tolerance), or the graph is not used. The check
costs two eager steps, two replays and a few copies of the parameters, once per batch size.
"""

import numpy as np

from minivae.backend import backend_name, to_host
from minivae.gpu import kernels

TOLERANCE = 1e-5           # relative to an array's largest value: eager against replayed


class GraphUnavailable(Exception):
    """Why a CUDA graph does not run this step (one line)."""


def why_not(model, tier, xp, opt):
    """None when the step can be replayed from a CUDA graph here, else why not (a phrase)."""
    if backend_name(xp) != "cupy":
        return "it needs --backend cupy"
    if tier != "gpu":
        return f"it replays the gpu tier's step, and this run uses the {tier} tier"
    if not hasattr(opt, "apply"):
        return (f"it replays the gpu tier's Adam, and this run uses "
                f"{type(opt).__name__}")
    if not hasattr(xp.cuda.Stream, "begin_capture"):
        return f"CuPy {xp.__version__} cannot capture CUDA graphs"
    return None


def pixel_map(spec, side=28):
    """For every input pixel of one image as the model takes it (padded, flattened or not),
    the pixel of the stored side x side image it shows, or -1 for the padding."""
    p, padded = spec.pad, side + 2 * spec.pad
    r, c = np.divmod(np.arange(padded * padded), padded)
    inside = (r >= p) & (r < p + side) & (c >= p) & (c < p + side)
    return np.where(inside, (r - p) * side + (c - p), -1).astype(np.int64)


class ReplayedStep:
    """The training step of a gpu-tier model for full batches of `batch` images, replayed from
    a CUDA graph: load_epoch() once an epoch, replay() once a step, read_terms() now and then.
    capture() must succeed first (else it raises GraphUnavailable)."""

    def __init__(self, model, opt, images, spec, batch, weight_decay, steps):
        xp = self.xp = model.xp
        self.model, self.opt, self.spec = model, opt, spec
        self.batch, self.weight_decay = batch, weight_decay
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.pool = xp.cuda.MemoryPool()
        self.graph = None
        dtype, latent = model.dtype, model.latent_dim
        flat = np.zeros(images.size + 1, dtype=np.uint8)           # the zero slot at the end
        flat[:-1] = np.asarray(images).reshape(-1)
        self.count, self.pixels = len(images), int(np.prod(images.shape[1:]))
        with self.stream:
            self.images = xp.asarray(flat)
            self.pixel_map = xp.asarray(pixel_map(spec, images.shape[1])[None, :])
            self.offsets = xp.asarray(np.arange(batch, dtype=np.int64))
            self.counter = xp.zeros(1, dtype=np.int64)
            self.order = xp.zeros(steps * batch, dtype=np.int64)
            self.noise = xp.zeros((steps * batch, latent), dtype=dtype)
            self.numbers = xp.zeros((steps, 3), dtype=dtype)    # beta / n, bias1, bias2
            self.terms = xp.zeros((steps, 3), dtype=dtype)      # sum BCE, sum KL, sum p^2
            self.positions = xp.empty(batch, dtype=np.int64)
            self.sources = xp.empty((batch, self.pixel_map.shape[1]), dtype=np.int64)
            self.x = xp.empty((batch, self.pixel_map.shape[1]), dtype=dtype)

    # ---- the step

    def body(self):
        """One training step with everything read from the device arrays above: what is
        captured, and what the warm-up runs eagerly."""
        xp, model = self.xp, self.model
        kernels.batch_positions(self.counter, self.batch, self.offsets, self.positions)
        images = xp.take(self.order, self.positions)
        kernels.pixel_sources(images[:, None], self.pixels, self.pixel_map, self.images.size - 1,
                              self.sources)
        kernels.to_unit(xp.take(self.images, self.sources), 255, self.x)
        noise = xp.take(self.noise, self.positions, axis=0)
        numbers = xp.take(self.numbers, self.counter, axis=0)         # (1, 3)
        model.grads_on_device(self.x.reshape(self.spec.input_shape(self.batch)), noise,
                              numbers[:, 0], self.weight_decay)
        self.opt.apply(numbers[:, 1], numbers[:, 2])
        self.terms[self.counter] = model.device_terms[None, :]
        kernels.advance(self.counter)

    def numbers_for(self, betas, first_t):
        """The per-step table for steps with KL weights `betas` (host floats), Adam's count
        going on from first_t: what the eager step passes as numbers, in the model's dtype."""
        b1, b2 = self.opt.b1, self.opt.b2
        t = np.arange(first_t, first_t + len(betas))
        return np.stack([np.asarray(betas, dtype=np.float64) / self.batch, 1 - b1 ** t,
                         1 - b2 ** t], axis=1).astype(self.model.dtype)

    def load_epoch(self, order, noise, numbers):
        """An epoch's inputs (host arrays: image indices in batch order, the noise of every
        step, the per-step table), uploaded into the arrays the graph reads; the counter back
        to the first step."""
        with self.stream:
            self.order[:order.size].set(np.asarray(order, dtype=np.int64), stream=self.stream)
            self.noise[:len(noise)].set(np.asarray(noise, dtype=self.model.dtype),
                                        stream=self.stream)
            self.numbers[:len(numbers)].set(numbers, stream=self.stream)
            self.counter.fill(0)

    def load_trial(self, beta, first_t, steps, seed=0):
        """Inputs for `steps` steps that take none of a run's random numbers: the stored images
        in order, noise from a generator of its own, KL weight beta, Adam's count going on from
        first_t (what the capture's check replays, and a benchmark)."""
        n = steps * self.batch
        noise = np.random.default_rng(seed).standard_normal((n, self.model.latent_dim))
        self.load_epoch(np.arange(n) % self.count, noise, self.numbers_for([beta] * steps,
                                                                           first_t))

    def replay(self):
        """One training step: one launch."""
        self.graph.launch(stream=self.stream)
        self.opt.t += 1

    def read_terms(self, start, stop):
        """The loss sums of steps start..stop-1 of this epoch, (stop - start, 3), on the host
        (one read, after the stream's work so far)."""
        with self.stream:
            return to_host(self.terms[start:stop])

    # ---- capture

    def capture(self):
        """Warm up, capture, check (see the module docstring). GraphUnavailable on failure;
        the model and the optimizer are left as they were either way."""
        xp, stream = self.xp, self.stream
        state = [self.model.flat_params, self.opt.m_flat, self.opt.v_flat]
        with stream:
            saved = [a.copy() for a in state]
            try:
                eager = self._two_steps(self.body, state, saved)
                with xp.cuda.using_allocator(self.pool.malloc):
                    stream.begin_capture()
                    try:
                        self.body()
                    except BaseException:
                        _end_quietly(stream)
                        raise
                    graph = stream.end_capture()
                replayed = self._two_steps(lambda: graph.launch(stream=stream), state, saved)
            except Exception as e:                  # noqa: BLE001 - any failure: eager steps
                self._restore(state, saved)
                raise GraphUnavailable(f"the capture failed ({type(e).__name__}: "
                                       f"{_first_line(e)})") from e
        for name, a, b in zip(("parameters", "Adam's m", "Adam's v", "loss sums"), eager,
                              replayed):
            err = float(np.abs(a - b).max()) / max(1e-30, float(np.abs(a).max()))
            if not err <= TOLERANCE:
                raise GraphUnavailable(f"two replayed steps gave {name} off by {err:.1e} "
                                       f"relative to two eager steps")
        self.graph = graph

    def _two_steps(self, step, state, saved):
        """The host copies of state and the loss sums after two steps from `saved`; then
        state is put back."""
        self._restore(state, saved)
        step()
        step()
        out = [to_host(a) for a in state] + [to_host(self.terms[:2])]
        self._restore(state, saved)
        return out

    def _restore(self, state, saved):
        for a, s in zip(state, saved):
            a[...] = s
        self.counter.fill(0)


def _end_quietly(stream):
    """End a capture that failed (CuPy raises that it was invalidated: the first error says
    why)."""
    try:
        stream.end_capture()
    except Exception:                                   # noqa: BLE001
        pass


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
