"""The gpu tier: the plain engine's arithmetic in few kernel launches and one host read a step.

Read the plain tier first (minivae/layers.py, conv.py, models.py, optim.py): everything here is a
twin of something there, computes the same numbers up to rounding, and is tested against it over
every geometry the gradient checks use (tests/test_tiers.py), on NumPy and on the CuPy stand-in
(tests/standin), which counts kernel launches and host reads as CuPy makes them and captures
CUDA graphs under CUDA's rules. It is written in CuPy's Python API only (`cupy.fuse`, `take`,
matmul with `out=`, streams and graph capture), so every line runs on the stand-in; on NumPy it
runs too, each fused function being its plain Python body.

    gpu/kernels.py   the fused elementwise kernels: bias + activation, activations' backward,
                     BCE-with-logits with its gradient, the heads with the reparametrisation and
                     the KL, the L2 penalty, Adam, and a replayed step's input picking
    gpu/conv.py      batch-last convolutions as 2-D products: im2col as one gather, col2im as a
                     gather and a sum, through kept indices, from and into either layout
    gpu/layers.py    the layer set: products without their bias, fused activations writing
                     where they are told, a Sequential that pairs them and does the layout
                     changes where they cost nothing, gradients written in place
    gpu/models.py    FlatVAE: the objective in fused kernels, one read a step, parameters and
                     gradients in flat buffers
    gpu/optim.py     Adam as one kernel over the flat buffers
    gpu/replay.py    the training step captured in a CUDA graph and replayed: one launch a step

On a GPU a small model's step is bound by kernel launches and host reads, not arithmetic: the
tier is designed for those counts (BENCHMARKS.md has them per step, beside PyTorch's), and the
graph for the host time that remains.
"""
