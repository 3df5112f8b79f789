"""minivae: variational autoencoders on a from-scratch NumPy/CuPy engine.

    import minivae
    model = minivae.build_model("conv", impl="auto")      # ConvVAE, seed 001's defaults
    opt = minivae.make_adam(model, lr=1e-4)                # the Adam of the model's tier
    terms = model.loss_and_grads(x); opt.step()

    run = minivae.load("output/conv-fashion-mnist")        # a trained run (minivae.trained)
    mu, log_var = run.encode(images); probs = run.decode(mu); pictures = run.sample(16)

README.md's reading guides give the order to read the source in: the engine's plain tier, the
other tiers and their table (minivae.tiers), the checks, then the program.
"""

__version__ = "0.1.0"

from minivae.models import MODELS, ConvVAE, MLPVAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402
from minivae.tiers import build_model, make_adam, make_optimizer  # noqa: E402



def load(run_dir, epoch=None, backend="numpy"):
    """The trained run in run_dir at checkpoint `epoch` (default: the newest that loads), with
    encode, decode, reconstruct and sample: see minivae.trained."""
    from minivae.trained import load as load_trained
    return load_trained(run_dir, epoch, backend)


__all__ = ["MODELS", "ConvVAE", "MLPVAE", "Adam", "build_model", "make_adam", "make_optimizer",
           "load"]
