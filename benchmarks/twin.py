"""Any minivae model in PyTorch, built by walking its layers: the benchmarks' twin.

`torch_twin(model)` gives an nn.Module with the same layers, names and current parameters as a
minivae VAE, computing the same objective; tests/test_torch_parity.py checks it against twins
written out from the seeds. torch is imported only by these functions (minivae never imports it).
"""

import numpy as np

from minivae.backend import to_host


def torch_available():
    """True when PyTorch can be imported here."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def torch_name(name):
    """minivae parameter name -> the twin's: 'encoder.0.W' -> 'encoder.0.weight', '.b' -> '.bias'"""
    prefix, key = name.rsplit(".", 1)
    return prefix + "." + {"W": "weight", "b": "bias"}[key]


def torch_module(layer):
    """The PyTorch module of one minivae layer (a Sequential becomes nn.Sequential)."""
    from torch import nn

    kind = type(layer).__name__
    if hasattr(layer, "layers"):
        return nn.Sequential(*[torch_module(sub) for sub in layer.layers])
    if kind == "Dense":
        return nn.Linear(layer.in_features, layer.out_features)
    if kind == "Conv2d":
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         stride=layer.stride, padding=layer.padding)
    if kind == "ConvTranspose2d":
        return nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  stride=layer.stride, padding=layer.padding)
    simple = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "Reshape":
        return nn.Unflatten(1, tuple(layer.shape))
    raise ValueError(f"torch_twin: no PyTorch equivalent for {kind}")


def torch_twin(model, device="cpu"):
    """The same VAE in PyTorch: same layers, same names, minivae's current parameters copied in.

    Returns an nn.Module whose forward(x, eps, beta, weight_decay) gives (loss, recon, kl, reg)
    as tensors, computed exactly as minivae's objective (see models.py): z = mu + eps * sigma with
    log sigma = c * (scale head), c = model.sigma_exponent; recon = summed BCE-with-logits / N;
    kl = sum (exp(v) + mu^2 - 1 - v) / 2 / N with v = log sigma^2; reg = lambda * sum p^2 over
    model.regularized.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch_module(model.encoder)
            self.mu = torch_module(model.mu)
            self.scale_name = model.scale_name
            setattr(self, model.scale_name, torch_module(model.scale))
            self.decoder = torch_module(model.decoder)
            self.c = float(model.sigma_exponent)
            self.regularized = [torch_name(k) for k in model.regularized]

        def forward(self, x, eps, beta=1.0, weight_decay=0.01):
            n = x.shape[0]
            h = self.encoder(x)
            mu, s = self.mu(h), getattr(self, self.scale_name)(h)
            logits = self.decoder(mu + eps * torch.exp(self.c * s))
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
            v = (2 * self.c) * s
            kl = 0.5 * (torch.exp(v) + mu * mu - 1 - v).sum() / n
            named = dict(self.named_parameters())
            reg = weight_decay * sum((named[k] * named[k]).sum() for k in self.regularized)
            return recon + beta * kl + reg, recon, kl, reg

    twin = TorchVAE()
    copy_params_to_torch(model, twin)
    return twin.to(device)


def copy_params_to_torch(model, twin):
    """Copy minivae's parameters into the twin, in minivae's dtype (Dense W is torch's weight.T)."""
    import torch
    from torch import nn

    dtype = None
    for name, p in model.params.items():
        tname = torch_name(name)
        owner = twin.get_submodule(tname.rsplit(".", 1)[0])
        value = to_host(p)
        if isinstance(owner, nn.Linear) and tname.endswith(".weight"):
            value = value.T
        tp = twin.get_parameter(tname)
        if tuple(tp.shape) != value.shape:
            raise ValueError(f"{name}: shape {value.shape} vs torch {tuple(tp.shape)}")
        dtype = getattr(torch, str(value.dtype))
        tp.data = torch.from_numpy(np.ascontiguousarray(value)).to(dtype).clone()
    return twin
