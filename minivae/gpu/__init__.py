"""The gpu tier: the plain engine's arithmetic in few kernel launches and one host read a step.

Read the plain tier first (minivae/layers.py, conv.py, models.py, optim.py): everything here is a
twin of something there, computes the same numbers up to rounding, and is tested against it over
every geometry the gradient checks use (tests/test_tiers.py), on NumPy and on the CuPy stand-in
(tests/standin), which counts kernel launches and host reads. It is written in CuPy's Python API
only (`cupy.fuse`, `take`, `cupyx.scatter_add`, matmul with `out=`), so every line runs on the
stand-in; on NumPy it runs too, each fused function being its plain Python body.

    gpu/kernels.py   the fused elementwise kernels: bias + activation, activations' backward,
                     BCE-with-logits with its gradient, the heads with the reparametrisation and
                     the KL, the L2 penalty, Adam
    gpu/conv.py      im2col as one gather and col2im as one scatter-add, through kept indices
    gpu/layers.py    the layer set: products without their bias, fused activations, a
                     Sequential that pairs them, gradients written in place
    gpu/models.py    FlatVAE: the objective in fused kernels, one read a step, parameters and
                     gradients in flat buffers
    gpu/optim.py     Adam as one kernel over the flat buffers

On a GPU a small model's step is bound by kernel launches and host reads, not arithmetic: the
tier is designed for those counts (BENCHMARKS.md has them per step, beside PyTorch's).
"""
