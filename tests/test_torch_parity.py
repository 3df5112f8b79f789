"""minivae against PyTorch, in float64: our layers and models mean what PyTorch's mean.

Each seed model gets a PyTorch twin written out here from the seed's description (not derived
from minivae), minivae's parameters are copied in (Dense W is (in, out) = torch weight.T; Conv2d
W (out, in, kh, kw) and ConvTranspose2d W (in, out, kh, kw) are PyTorch's layouts as they are),
both see the same x and the same noise, and the loss terms and every parameter gradient must agree
to ~1e-10 relative. Single layers are checked against torch.nn.functional, and Adam against
torch.optim.Adam. PyTorch is optional: without it this whole file is skipped.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

from minivae.layers import Conv2d, ConvTranspose2d, Dense  # noqa: E402
from minivae.models import MODELS, ConvVAE, MLPVAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402
from minivae.tiers import build_model  # noqa: E402

RTOL = 1e-10


def rel(a, b):
    """max |a - b| / max |b|: the relative error of a whole tensor."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-300, float(np.max(np.abs(b)))))


def t64(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# The twins, written from the seeds


class Unflatten(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class TwinMLP(nn.Module):
    """Seed 000: 784 -> 500 tanh -> mu, log sigma (2); decoder 2 -> 500 tanh -> 784 logits.
    KL in log sigma; L2 penalty on the decoder only (biases included)."""

    scale_name = "log_sigma"

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 500), nn.Tanh())
        self.mu = nn.Linear(500, 2)
        self.log_sigma = nn.Linear(500, 2)
        self.decoder = nn.Sequential(nn.Linear(2, 500), nn.Tanh(), nn.Linear(500, 784))

    def forward(self, x, eps, lam):
        n = x.shape[0]
        h = self.encoder(x)
        mu, log_sigma = self.mu(h), self.log_sigma(h)
        logits = self.decoder(mu + eps * torch.exp(log_sigma))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
        kl = 0.5 * torch.sum(torch.exp(2 * log_sigma) + mu ** 2 - 1 - 2 * log_sigma) / n
        reg = lam * sum(torch.sum(p ** 2) for p in self.decoder.parameters())
        return recon, kl, reg


class TwinConv(nn.Module):
    """Seed 001 on 32x32: 3 x Conv(4, s2, p1, 32) relu, flatten, 512 -> 256 relu -> 256 relu,
    shared by mu and log var (10); decoder mirrors it with ConvTranspose. KL in log var; L2 on
    every parameter once."""

    scale_name = "log_var"

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(512, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU())
        self.mu = nn.Linear(256, 10)
        self.log_var = nn.Linear(256, 10)
        self.decoder = nn.Sequential(
            nn.Linear(10, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 512), nn.ReLU(),
            Unflatten(32, 4, 4),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1))

    def forward(self, x, eps, lam):
        n = x.shape[0]
        h = self.encoder(x)
        mu, log_var = self.mu(h), self.log_var(h)
        logits = self.decoder(mu + eps * torch.exp(0.5 * log_var))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
        kl = 0.5 * torch.sum(torch.exp(log_var) + mu ** 2 - log_var - 1) / n
        reg = lam * sum(torch.sum(p ** 2) for p in self.parameters())
        return recon, kl, reg


def torch_key(name):
    prefix, key = name.rsplit(".", 1)
    return prefix + "." + {"W": "weight", "b": "bias"}[key]


def load_into(twin, model):
    """Copy minivae's parameters into the twin (float64); every twin parameter must be covered."""
    named = dict(twin.named_parameters())
    assert sorted(torch_key(k) for k in model.params) == sorted(named), \
        "minivae and the twin disagree on the parameter names"
    with torch.no_grad():
        for name, p in model.params.items():
            key = torch_key(name)
            value = np.asarray(p, dtype=np.float64)
            if isinstance(twin.get_submodule(key.rsplit(".", 1)[0]), nn.Linear) and \
                    key.endswith("weight"):
                value = value.T                 # Dense W (in, out) is Linear.weight (out, in)
            assert tuple(named[key].shape) == value.shape, name
            named[key].copy_(t64(value))
    return named


def as_torch_layout(twin, key, grad):
    if isinstance(twin.get_submodule(key.rsplit(".", 1)[0]), nn.Linear) and key.endswith("weight"):
        return grad.T
    return grad


# The seeds, by their registry names, against twins written out from the seeds' descriptions.
SEED_TWINS = {"mlp": (MLPVAE, TwinMLP, (16, 784)), "conv": (ConvVAE, TwinConv, (6, 1, 32, 32))}
CASES = list(SEED_TWINS.values())
IDS = list(SEED_TWINS)


@pytest.mark.parametrize("cls, twin_cls, shape", CASES, ids=IDS)
@pytest.mark.parametrize("beta, lam", [(1.0, 0.01), (0.5, 0.3)])
def test_model_loss_and_every_gradient_match_torch(cls, twin_cls, shape, beta, lam):
    model = cls(seed=3, dtype=np.float64)
    rng = np.random.default_rng(7)
    # Spread the weights a little so ReLUs and tanh see both regimes and no gradient is ~0.
    for name, p in model.params.items():
        model.params[name] = p + 0.05 * rng.standard_normal(p.shape)
    x = rng.random(shape)
    eps = rng.standard_normal((shape[0], model.latent_dim))

    terms = model.loss_and_grads(x, noise=eps, beta=beta, weight_decay=lam)

    twin = twin_cls().double()
    named = load_into(twin, model)
    recon, kl, reg = twin(t64(x), t64(eps), lam)
    loss = recon + beta * kl + reg
    loss.backward()

    assert terms.recon == pytest.approx(recon.item(), rel=RTOL)
    assert terms.kl == pytest.approx(kl.item(), rel=RTOL)
    assert terms.reg == pytest.approx(reg.item(), rel=RTOL)
    assert terms.loss == pytest.approx(loss.item(), rel=RTOL)
    for name in model.params:
        key = torch_key(name)
        ours = np.asarray(model.grads[name])
        theirs = as_torch_layout(twin, key, named[key].grad.numpy())
        assert ours.shape == theirs.shape, name
        assert rel(ours, theirs) < RTOL, f"{name}: relative error {rel(ours, theirs):.2e}"

    # encode returns log sigma^2 for both models
    mu, log_var = model.encode(x)
    with torch.no_grad():
        h = twin.encoder(t64(x))
        t_mu, t_scale = twin.mu(h), getattr(twin, twin.scale_name)(h)
    t_log_var = 2 * t_scale if twin.scale_name == "log_sigma" else t_scale
    assert rel(mu, t_mu.numpy()) < RTOL
    assert rel(log_var, t_log_var.numpy()) < RTOL


@pytest.mark.parametrize("cls, twin_cls, shape", CASES, ids=IDS)
def test_adam_steps_match_torch(cls, twin_cls, shape):
    """Three Adam steps on the real objective land on torch.optim.Adam's parameters."""
    model = cls(seed=5, dtype=np.float64)
    rng = np.random.default_rng(11)
    x = rng.random(shape)
    twin = twin_cls().double()
    named = load_into(twin, model)
    opt = Adam(model, lr=1e-3)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for _ in range(3):
        eps = rng.standard_normal((shape[0], model.latent_dim))
        model.loss_and_grads(x, noise=eps, beta=1.0, weight_decay=0.01)
        opt.step()
        topt.zero_grad()
        recon, kl, reg = twin(t64(x), t64(eps), 0.01)
        (recon + kl + reg).backward()
        topt.step()
    for name in model.params:
        key = torch_key(name)
        theirs = as_torch_layout(twin, key, named[key].detach().numpy())
        assert rel(model.params[name], theirs) < 1e-9, name


def test_bench_twin_is_the_same_model():
    """The benchmark's twin (built by walking minivae's layers) computes the seed's objective."""
    from benchmarks.twin import torch_twin

    for cls, twin_cls, shape in CASES:
        model = cls(seed=1, dtype=np.float64)
        rng = np.random.default_rng(2)
        x, eps = rng.random(shape), rng.standard_normal((shape[0], model.latent_dim))
        reference = twin_cls().double()
        load_into(reference, model)
        generic = torch_twin(model)
        r = [t.item() for t in reference(t64(x), t64(eps), 0.01)]
        g = [t.item() for t in generic(t64(x), t64(eps), 1.0, 0.01)[1:]]
        assert g == pytest.approx(r, rel=1e-12)
        assert str(next(generic.parameters()).dtype) == "torch.float64"


# --------------------------------------------------------------------------------------------
# Single layers against torch.nn.functional


def check_layer(layer, x, torch_forward):
    """Forward and backward (dx, dW, db) of a minivae layer against a torch function of
    (x, W, b) under a random upstream gradient."""
    rng = np.random.default_rng(0)
    y = layer.forward(x)
    tx = t64(x).requires_grad_()
    tW = t64(layer.params["W"]).requires_grad_()
    tb = t64(layer.params["b"]).requires_grad_()
    ty = torch_forward(tx, tW, tb)
    assert y.shape == tuple(ty.shape)
    assert rel(y, ty.detach().numpy()) < RTOL
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    ty.backward(t64(dy))
    assert rel(dx, tx.grad.numpy()) < RTOL
    assert rel(layer.grads["W"], tW.grad.numpy()) < RTOL
    assert rel(layer.grads["b"], tb.grad.numpy()) < RTOL


CONV_CONFIGS = [
    # (N, C_in, H, W, C_out, kernel, stride, padding)
    (2, 3, 9, 7, 4, 3, 1, 0),
    (2, 3, 9, 7, 4, 3, 1, 1),
    (3, 2, 11, 8, 5, (3, 2), 2, 1),
    (2, 4, 10, 13, 3, (2, 5), 3, 2),
    (1, 1, 32, 32, 32, 4, 2, 1),          # the seed's first layer
    (2, 32, 8, 8, 32, 4, 2, 1),           # the seed's later layers
    (2, 2, 6, 5, 3, 1, 1, 0),             # 1x1
    (2, 3, 7, 9, 2, (4, 3), 2, 0),
]


@pytest.mark.parametrize("N, C, H, W, F_, k, s, p", CONV_CONFIGS)
def test_conv2d_matches_torch(N, C, H, W, F_, k, s, p):
    layer = Conv2d(C, F_, k, stride=s, padding=p, dtype=np.float64, rng=1)
    layer.params["b"] = np.random.default_rng(2).standard_normal(F_)
    x = np.random.default_rng(3).standard_normal((N, C, H, W))
    check_layer(layer, x, lambda x, w, b: F.conv2d(x, w, b, stride=s, padding=p))


@pytest.mark.parametrize("N, C, H, W, F_, k, s, p", CONV_CONFIGS)
def test_conv_transpose2d_matches_torch(N, C, H, W, F_, k, s, p):
    kh, kw = (k, k) if isinstance(k, int) else k
    if (H - 1) * s - 2 * p + kh < 1 or (W - 1) * s - 2 * p + kw < 1:
        pytest.skip("empty output")
    layer = ConvTranspose2d(C, F_, k, stride=s, padding=p, dtype=np.float64, rng=1)
    layer.params["b"] = np.random.default_rng(2).standard_normal(F_)
    x = np.random.default_rng(3).standard_normal((N, C, H, W))
    check_layer(layer, x, lambda x, w, b: F.conv_transpose2d(x, w, b, stride=s, padding=p))


def test_dense_matches_torch():
    layer = Dense(7, 5, dtype=np.float64, rng=1)
    layer.params["b"] = np.random.default_rng(2).standard_normal(5)
    x = np.random.default_rng(3).standard_normal((4, 7))
    # Our W is (in, out); F.linear wants (out, in).
    check_layer(layer, x, lambda x, w, b: F.linear(x, w.T, b))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_matches_its_torch_twin(name):
    """Every model of the registry (a new entry too) against the twin built by walking its
    layers (benchmarks/twin.py): the loss terms and every gradient, in float64."""
    from benchmarks.twin import torch_name, torch_twin

    assert set(SEED_TWINS) <= set(MODELS)
    model = build_model(name, seed=1, dtype=np.float64, impl="plain", hidden_dim=16)
    rng = np.random.default_rng(4)
    x = rng.random(MODELS[name].input_shape(3))
    eps = rng.standard_normal((3, model.latent_dim))
    terms = model.loss_and_grads(x, noise=eps, beta=0.7, weight_decay=0.02)
    twin = torch_twin(model)
    loss, *parts = twin(t64(x), t64(eps), 0.7, 0.02)
    loss.backward()
    assert [t.item() for t in (loss, *parts)] == pytest.approx(list(terms), rel=1e-10)
    theirs = dict(twin.named_parameters())
    for key, grad in model.grads.items():
        tkey = torch_name(key)
        mine = as_torch_layout(twin, tkey, grad)
        assert rel(mine, theirs[tkey].grad.numpy()) < 1e-9, key
