"""The fast tier: the plain engine's arithmetic, laid out and copied so that NumPy runs it faster.

Read the plain tier first (minivae/layers.py, conv.py, optim.py): everything here is a twin of
something there, computes the same numbers up to rounding, and is tested against it over every
geometry the gradient checks use (tests/test_tiers.py). Each piece's docstring names its twin and
what it saves.

    fast/conv.py     batch-last im2col / col2im, conv plans with kept buffers (PhasePlan: space to
                     depth for strided convolutions), the batch-last <-> batch-first copies
    fast/layers.py   the layer set a fast model is built from: batch-last convolutions, Flatten
                     and Reshape, a ReLU against kept zeros (in place inside a stack), a
                     Sequential that converts layouts
    fast/optim.py    Adam over flat vectors of running sums

A model is built in a tier once (minivae.tiers.build_model(..., impl=...): auto = fast on NumPy)
from that tier's layer set, and minivae.tiers.make_adam(model) gives the Adam of its tier. Nothing
in the plain tier asks which tier it runs in.
"""
