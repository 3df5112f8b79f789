"""minivae: variational autoencoders on a from-scratch NumPy/CuPy engine.

Read the source in this order: backend -> layers (with conv) -> losses -> optim -> models ->
data -> train -> cli. Every backward pass carries its derivation next to the code.
"""

__version__ = "0.1.0"
