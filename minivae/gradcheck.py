"""The gradient-check suite: every hand-written backward against central finite differences.

How one check works (cs231n's recipe). For a layer y = f(x; params), pick a random upstream
gradient g shaped like y and define the scalar L = sum(f(x) * g). Then layer.backward(g) must
return dL/dx and fill dL/dparams. For every input and parameter tensor T we compare:

  * sampled coordinates: (L(T + h e_i) - L(T - h e_i)) / 2h  against  dL/dT[i];
  * a random direction u: (L(T + h u) - L(T - h u)) / 2h  against  <dL/dT, u>, which tests
    every coordinate of a large tensor at once.

Central differences have error O(h^2) from truncation and O(eps * |L| / h) from rounding; in
float64 with h = 1e-5 both are ~1e-10 relative. The error reported is

    rel_error(a, n) = max|a - n| / max(1e-8, max(|a| + |n|))

normalised by the largest magnitude (of the samples, or of the whole analytic gradient if larger),
so coordinates whose true gradient is ~0 do not divide by ~0; a direction's error is measured
against |dL/dT|. A check passes below 1e-6 in float64. With --dtype float32 the analytic gradient
is computed in float32 (the training path) and compared with float64 finite differences; it
passes below 1e-4.

A ReLU's derivative jumps at 0, so a central difference whose two points straddle a ReLU's
kink measures the kink, not the gradient. After each pair of evaluations the check compares the
signs of every kinked layer's output (Layer.KINK) at the two points; where they differ the
coordinate (or direction) is drawn again, and the table counts those redrawn. Everything random
in a check (data, upstream gradients, coordinates, directions) comes from `--seed`.

Every check runs in one tier of the engine (--impl: the plain layers, or a tier's twins:
minivae.tiers; the default is the tier the models use on the backend). A single layer is checked
through a one-layer Sequential of its tier, which in the fast tier turns NCHW images batch-last and
back, so both tiers are checked on the same NCHW inputs.

The same functions serve `pytest tests/test_gradcheck.py` and `minivae gradcheck`.
"""

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from minivae.backend import BACKENDS, array_module, backend_name, get_backend, to_host
from minivae.conv import conv_output_size, conv_transpose_output_size
from minivae.layers import Layer
from minivae.losses import bce_with_logits, kl_log_sigma, kl_log_var, l2_penalty
from minivae.models import MODELS
from minivae.tiers import IMPLS, TIERS, build_model, resolve_impl

H = 1e-5
TOLERANCE = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-4}


def rel_error(a, n):
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return float(np.max(np.abs(a - n)) / max(1e-8, float(np.max(np.abs(a) + np.abs(n)))))


def kinked_layers(root):
    """Every layer under root (a layer, a Sequential, a model) whose derivative jumps at 0."""
    found, stack, seen = [], [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Layer) and obj.KINK:
            found.append(obj)
        children = vars(obj).values() if hasattr(obj, "__dict__") else ()
        for child in children:
            if isinstance(child, Layer):
                stack.append(child)
            elif isinstance(child, (list, tuple)):
                stack.extend(c for c in child if isinstance(c, Layer))
    return found


def kink_signature(kinked):
    """Which side of its kink every input of every kinked layer was on in the last forward."""
    return tuple(to_host(layer.y > 0).tobytes() for layer in kinked)


@dataclass
class Context:
    """What a check runs with: backend, dtype of the analytic gradients, random numbers, tier."""
    xp: object
    dtype: np.dtype
    rng: np.random.Generator
    impl: str                       # the tier's name
    redrawn: int = 0                # coordinates / directions drawn again at a kink
    kinked: list = field(default_factory=list)   # the layers whose kinks to watch

    @property
    def layers(self):
        return TIERS[self.impl].layers


def _central(f, ctx, perturb):
    """(f(+h) - f(-h)) / 2h with perturb(+1) / perturb(-1) / perturb(0) moving the point, or
    None when the two points lie on different sides of a kink."""
    perturb(+1)
    fp, sp = f(), kink_signature(ctx.kinked)
    perturb(-1)
    fm, sm = f(), kink_signature(ctx.kinked)
    perturb(0)
    return None if sp != sm else (fp - fm) / (2 * H)


def numeric_vs_analytic(f, T, analytic, ctx, coords=24, directions=2):
    """Worst rel_error of central differences of scalar f() in tensor T (perturbed in place)
    against the analytic gradient, over sampled coordinates and random directions. A coordinate
    or direction whose two points straddle a kink is replaced by another (ctx.redrawn counts)."""
    xp, rng = array_module(T), ctx.rng
    analytic = to_host(analytic).astype(np.float64)
    flat = T.reshape(-1)                    # a view: T is contiguous
    idx, numeric = [], []
    for i in rng.permutation(T.size):
        if len(idx) == min(coords, T.size):
            break
        old = float(flat[i])

        def move(sign, i=i, old=old):
            flat[i] = old + sign * H
        n = _central(f, ctx, move)
        if n is None:
            ctx.redrawn += 1
            continue
        idx.append(i)
        numeric.append(n)
    idx, numeric = np.array(idx, dtype=np.int64), np.array(numeric)
    # Coordinates: the error against the larger of the sampled values and the tensor's largest
    # gradient, so a sample that happens to hold only near-zero gradients is not judged alone.
    a = analytic.reshape(-1)[idx]
    worst = float(np.max(np.abs(a - numeric), initial=0.0)) / max(
        1e-8, float(np.max(np.abs(a) + np.abs(numeric), initial=0.0)),
        float(np.max(np.abs(analytic))))
    done = tries = 0
    while done < directions and tries < 10 * directions:
        tries += 1
        u = rng.standard_normal(T.shape)
        u /= np.linalg.norm(u)
        ud = xp.asarray(u, dtype=T.dtype)
        base = T.copy()

        def move(sign, base=base, ud=ud):
            T[...] = base + (sign * H) * ud
        n = _central(f, ctx, move)
        if n is None:
            ctx.redrawn += 1
            continue
        done += 1
        # |<g, u>| <= |g| for a unit u, so measure the error against |g|: a direction nearly
        # orthogonal to g has a tiny derivative, and dividing by it would only amplify rounding.
        a = float((analytic * u).sum())
        worst = max(worst, abs(a - n) / max(1e-8, float(np.linalg.norm(analytic)) + abs(n)))
    return worst


# --------------------------------------------------------------------------------------------
# Checks of single layers, loss terms, whole models, and the conv adjoint identity.


@dataclass
class Check:
    name: str                 # what is checked, e.g. "Conv2d"
    config: str               # its configuration, e.g. "k=3 s=2 p=1 x=(2,3,7,9)"
    run: Callable             # run(ctx: Context) -> list of (tensor name, error)


def layer_check(make, x_shape, positive_margin=False):
    """Check layer = make(L, dtype=float64, backend=..., rng=...) at input shape x_shape, with L
    the tier's layer set, through a one-layer Sequential of that tier (see the docstring)."""

    def run(ctx):
        xp, rng, L = ctx.xp, ctx.rng, ctx.layers
        layer = make(L, dtype=np.float64, backend=backend_name(xp), rng=rng)
        net = L.Sequential(layer)
        ctx.kinked = kinked_layers(net)
        x = rng.standard_normal(x_shape)
        if positive_margin:     # keep inputs away from a kink at 0 (ReLU)
            x = np.sign(x) * (np.abs(x) + 0.1)
        x = xp.asarray(x)
        g = xp.asarray(rng.standard_normal(net.forward(x).shape))
        # analytic gradients in the dtype under test
        params64 = dict(layer.params)
        for k, p in params64.items():
            layer.params[k] = p.astype(ctx.dtype)
        net.forward(x.astype(ctx.dtype))
        dx = net.backward(g.astype(ctx.dtype))
        analytic = {"x": dx, **{k: layer.grads[k] for k in params64}}
        for k, p in params64.items():
            layer.params[k] = p
        # numeric gradients in float64
        tensors = {"x": x, **params64}

        def f():
            return float((net.forward(x) * g).sum())

        return [(k, numeric_vs_analytic(f, T, analytic[k], ctx)) for k, T in tensors.items()]

    return run


def loss_check(fn, shapes, names):
    """Check an elementwise loss fn(*inputs) -> (value, *grads) via L = sum(value * w)."""

    def run(ctx):
        xp, rng = ctx.xp, ctx.rng
        inputs = [xp.asarray(rng.standard_normal(s)) for s in shapes]
        if fn is bce_with_logits:   # targets in [0, 1], logits spread wide
            inputs = [inputs[0] * 3, xp.asarray(rng.random(shapes[1]))]
        value = fn(*inputs)[0]
        w = xp.asarray(rng.standard_normal(value.shape))
        grads = fn(*[a.astype(ctx.dtype) for a in inputs])[1:]

        def f():
            return float((fn(*inputs)[0] * w).sum())

        return [(name, numeric_vs_analytic(f, inputs[i], grads[i] * w.astype(ctx.dtype), ctx))
                for i, name in enumerate(names)]

    return run


def l2_check(ctx):
    xp, rng = ctx.xp, ctx.rng
    params = {"a": xp.asarray(rng.standard_normal((3, 4))), "b": xp.asarray(rng.standard_normal(5))}
    weight_decay = 0.37
    _, grads = l2_penalty({k: p.astype(ctx.dtype) for k, p in params.items()}, weight_decay)
    return [(k, numeric_vs_analytic(lambda: l2_penalty(params, weight_decay)[0], params[k],
                                    grads[k], ctx)) for k in params]


def model_check(name, n, coords=12):
    """Whole model: loss_and_grads against finite differences of loss() with fixed noise, for
    every parameter tensor and the input, on a batch of n. beta != 1 and weight decay != 0 so
    that every factor in the objective is exercised."""

    def run(ctx):
        xp, rng = ctx.xp, ctx.rng

        def build(dtype):
            return build_model(name, seed=1, dtype=dtype, backend=backend_name(xp),
                               impl=ctx.impl)
        model = build(np.float64)                    # the finite differences, in float64
        ctx.kinked = kinked_layers(model)
        # Random biases (they start at zero) spread the ReLU pre-activations away from 0.
        for k in model.params:
            if k.endswith(".b"):
                model.params[k][...] = xp.asarray(rng.uniform(-0.5, 0.5, model.params[k].shape))
        x_shape = MODELS[name].input_shape(n)
        x = xp.asarray(rng.random(x_shape))
        noise = xp.asarray(rng.standard_normal((n, model.latent_dim)))
        kw = dict(noise=noise, beta=0.7, weight_decay=0.013)
        # the analytic gradients from a model of the dtype under test, with the same numbers
        twin = model if ctx.dtype == np.float64 else build(ctx.dtype)
        for k, p in model.params.items():
            twin.params[k][...] = p.astype(ctx.dtype)
        twin.loss_and_grads(x.astype(ctx.dtype), input_grad=True, **kw)
        analytic = {"x": twin.input_grad.copy(),
                    **{k: twin.grads[k].copy() for k in model.params}}

        def f():
            return model.loss(x, **kw).loss

        tensors = {"x": x, **{k: model.params[k] for k in model.params}}
        return [(k, numeric_vs_analytic(f, T, analytic[k], ctx, coords=coords))
                for k, T in tensors.items()]

    return run


def adjoint_check(C, F, k, s, p, hw, n=2):
    """<Conv2d(x), y> == <x, ConvTranspose2d(y)> with shared weights, no bias; and both shapes."""

    def run(ctx):
        xp, dtype, rng, L = ctx.xp, ctx.dtype, ctx.rng, ctx.layers
        conv = L.Conv2d(C, F, k, s, p, dtype=dtype, backend=backend_name(xp), rng=rng)
        tconv = L.ConvTranspose2d(F, C, k, s, p, dtype=dtype, backend=backend_name(xp), rng=rng)
        tconv.params["W"] = conv.params["W"]        # (F, C, kh, kw): same array, both layouts
        expect = tuple(conv_output_size(d, k, s, p) for d in hw)
        back = tuple(conv_transpose_output_size(d, k, s, p) for d in expect)
        # When s does not divide H + 2p - k, ConvTranspose2d maps back onto back < H rows: it is
        # the adjoint cropped to them. Zero x outside that block and the identity holds exactly.
        x = np.zeros((n, C) + hw)
        x[:, :, :back[0], :back[1]] = rng.standard_normal((n, C) + back)
        x = xp.asarray(x, dtype=dtype)
        cx = L.Sequential(conv).forward(x)
        y = xp.asarray(rng.standard_normal(cx.shape), dtype=dtype)
        ty = L.Sequential(tconv).forward(y)
        shape_ok = cx.shape[2:] == expect and ty.shape[2:] == back
        lhs = float((cx * y).sum())
        rhs = float((x[:, :, :back[0], :back[1]] * ty).sum())
        return [("<Cx,y> vs <x,C^T y>", rel_error(lhs, rhs)), ("shapes", 0.0 if shape_ok else 1.0)]

    return run


def conv_configs():
    """(kernel, stride, padding, input HxW, batch) covering kernel 1-5, stride 1-3, padding 0-2,
    non-square inputs and kernels, batch 1 and 2; skipping those with an empty output."""
    out = []
    for k in range(1, 6):
        for s in range(1, 4):
            for p in range(3):
                hw = (7, 9) if (k + s + p) % 2 else (6, 5)
                n = 1 + (k + s) % 2
                ho = [conv_output_size(d, k, s, p) for d in hw]
                if min(ho) < 1 or min(conv_transpose_output_size(d, k, s, p) for d in ho) < 1:
                    continue
                out.append((k, s, p, hw, n))
    out.append(((2, 3), 2, 1, (6, 8), 2))         # a non-square kernel
    return out


# (kernel, stride, padding, input HxW, batch) of the stacks below: ConvVAE's 4x4/2/1, a stride-1
# kernel, a non-square kernel, a stride that does not divide H + 2p - k.
STACK_CONFIGS = [(4, 2, 1, (8, 6), 2), (3, 1, 1, (5, 7), 3), ((2, 3), 2, 1, (6, 8), 2),
                 (5, 3, 2, (7, 9), 1)]


def all_checks():
    checks = []
    for k, s, p, hw, n in conv_configs():
        kh, kw = (k, k) if isinstance(k, int) else k
        cfg = f"k={kh}x{kw} s={s} p={p} x=({n},3,{hw[0]},{hw[1]})"
        checks.append(Check("Conv2d", cfg, layer_check(
            lambda L, k=k, s=s, p=p, **kw: L.Conv2d(3, 4, k, s, p, **kw), (n, 3) + hw)))
        ho = [conv_output_size(d, kh if i == 0 else kw, s, p) for i, d in enumerate(hw)]
        tcfg = f"k={kh}x{kw} s={s} p={p} x=({n},4,{ho[0]},{ho[1]})"
        checks.append(Check("ConvTranspose2d", tcfg, layer_check(
            lambda L, k=k, s=s, p=p, **kw: L.ConvTranspose2d(4, 3, k, s, p, **kw), (n, 4, *ho))))
        if isinstance(k, int):
            checks.append(Check("adjoint", cfg, adjoint_check(3, 4, k, s, p, hw, n)))
    # Stacks as the models build them, where the fast tier keeps images batch-last between
    # layers: convolution into transposed convolution, convolution into Flatten and Dense (an
    # encoder), Dense into Reshape and a transposed convolution (a decoder).
    for k, s, p, hw, n in STACK_CONFIGS:
        kh, kw = (k, k) if isinstance(k, int) else k
        ho = [conv_output_size(d, kh if i == 0 else kw, s, p) for i, d in enumerate(hw)]
        cfg = f"k={kh}x{kw} s={s} p={p}"
        checks.append(Check("Sequential", f"Conv-Tanh-ConvT {cfg} x=({n},3,{hw[0]},{hw[1]})",
                            layer_check(lambda L, k=k, s=s, p=p, **kw: L.Sequential(
                                L.Conv2d(3, 4, k, s, p, **kw), L.Tanh(),
                                L.ConvTranspose2d(4, 3, k, s, p, **kw)), (n, 3) + hw)))
        checks.append(Check("Sequential", f"Conv-Tanh-Flatten-Dense {cfg}",
                            layer_check(lambda L, k=k, s=s, p=p, ho=ho, **kw: L.Sequential(
                                L.Conv2d(3, 4, k, s, p, **kw), L.Tanh(), L.Flatten(),
                                L.Dense(4 * ho[0] * ho[1], 5, **kw)), (n, 3) + hw)))
        checks.append(Check("Sequential", f"Dense-Tanh-Reshape-ConvT {cfg}",
                            layer_check(lambda L, k=k, s=s, p=p, ho=ho, **kw: L.Sequential(
                                L.Dense(5, 4 * ho[0] * ho[1], **kw), L.Tanh(),
                                L.Reshape(4, *ho), L.ConvTranspose2d(4, 3, k, s, p, **kw)),
                                (n, 5))))
    for n, i, o in [(1, 1, 1), (3, 5, 4), (4, 17, 9)]:
        checks.append(Check("Dense", f"x=({n},{i}) out={o}",
                            layer_check(lambda L, i=i, o=o, **kw: L.Dense(i, o, **kw), (n, i))))
    for act, margin in [("ReLU", True), ("Tanh", False), ("Sigmoid", False)]:
        checks.append(Check(act, "x=(3,4,5)",
                            layer_check(lambda L, act=act, **kw: getattr(L, act)(), (3, 4, 5),
                                        margin)))
    checks.append(Check("Flatten", "x=(2,3,4,5)",
                        layer_check(lambda L, **kw: L.Flatten(), (2, 3, 4, 5))))
    checks.append(Check("Reshape", "x=(2,60)->(3,4,5)",
                        layer_check(lambda L, **kw: L.Reshape(3, 4, 5), (2, 60))))
    checks.append(Check("Sequential", "Conv-Tanh-Flatten-Dense", layer_check(
        lambda L, **kw: L.Sequential(L.Conv2d(2, 3, 3, 2, 1, **kw), L.Tanh(), L.Flatten(),
                                     L.Dense(3 * 4 * 3, 5, **kw)), (2, 2, 7, 6))))
    checks.append(Check("bce_with_logits", "(6,7)", loss_check(
        bce_with_logits, [(6, 7), (6, 7)], ["logits"])))
    checks.append(Check("kl_log_var", "(5,3)", loss_check(
        kl_log_var, [(5, 3), (5, 3)], ["mu", "log_var"])))
    checks.append(Check("kl_log_sigma", "(5,3)", loss_check(
        kl_log_sigma, [(5, 3), (5, 3)], ["mu", "log_sigma"])))
    checks.append(Check("l2_penalty", "weight_decay=0.37", l2_check))
    for name, spec in MODELS.items():           # every model of the registry, at its defaults
        n = 3 if spec.flatten else 2
        checks.append(Check(spec.cls.__name__, f"--model {name}, x={spec.input_shape(n)}",
                            model_check(name, n)))
    return checks


def run_check(check, backend="numpy", dtype=np.float64, seed=0, impl="auto"):
    """-> (rows [(tensor, error)], worst error, passed, redrawn), computed in tier `impl`, every
    random number drawn from `seed`; redrawn counts the coordinates and directions drawn again
    because they straddled a kink."""
    xp = get_backend(backend)
    ctx = Context(xp, np.dtype(dtype), np.random.default_rng(seed), resolve_impl(impl, xp))
    rows = check.run(ctx)
    worst = max(e for _, e in rows)
    return rows, worst, worst < TOLERANCE[np.dtype(dtype)], ctx.redrawn


# --------------------------------------------------------------------------------------------
# `minivae gradcheck`


def add_arguments(parser):
    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="where to run the checks (default: numpy)")
    parser.add_argument("--impl", choices=IMPLS, default="auto",
                        help=f"the engine's tier to check: {', '.join(IMPLS[1:])}, or auto (the "
                             f"tier the models use on the backend; the default)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of the analytic gradients (finite differences are float64)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="draw every check's data and coordinates from seed S (default 0)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="one row per tensor instead of one per check")
    parser.add_argument("--filter", default="", metavar="TEXT",
                        help="only checks whose name or configuration contains TEXT (e.g. "
                             "Conv2d, or '--model conv' for one model of the registry)")


def run_cli(args):
    """Print the table of the checks args select; returns the exit status (ValueError when
    --filter selects none)."""
    xp = get_backend(args.backend)
    impl = resolve_impl(args.impl, xp)
    dtype = np.dtype(args.dtype)
    checks = [c for c in all_checks() if args.filter.lower() in c.name.lower()
              or args.filter.lower() in c.config.lower()]
    if not checks:
        names = sorted({c.name for c in all_checks()})
        raise ValueError(f"--filter {args.filter!r} matches no check; the checks are "
                         f"{', '.join(names)}")
    print(f"gradient check on {backend_name(xp)}, {impl} tier, analytic gradients in {dtype}, "
          f"tolerance {TOLERANCE[dtype]:.0e}, seed {args.seed}, {len(checks)} "
          f"check{'s' * (len(checks) != 1)}")
    print(f"{'check':<16} {'configuration':<36} {'max rel error':>13}  result")
    failed, worst_all, redrawn, t0 = 0, 0.0, 0, time.perf_counter()
    for check in checks:
        rows, worst, ok, kinks = run_check(check, backend_name(xp), dtype, args.seed, impl)
        failed += not ok
        worst_all = max(worst_all, worst)
        redrawn += kinks
        note = f"  ({kinks} redrawn at a kink)" if kinks else ""
        print(f"{check.name:<16} {check.config:<36} {worst:>13.2e}  "
              f"{'pass' if ok else 'FAIL'}{note}")
        if args.verbose:
            for tensor, err in rows:
                print(f"{'':<16} {'  ' + tensor:<36} {err:>13.2e}")
    print(f"{len(checks) - failed} passed, {failed} failed; worst relative error {worst_all:.2e}; "
          f"{redrawn} coordinates or directions redrawn at a kink; "
          f"{time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
