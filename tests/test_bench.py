"""`minivae bench`: FLOP counting, the report (text and JSON), its flags and errors."""

import json

import pytest

from minivae import bench
from minivae.cli import main
from minivae.layers import Conv2d, ConvTranspose2d, Dense, Sequential
from minivae.models import MODELS, ConvVAE, MLPVAE

QUICK = ["--steps", "2", "--warmup", "1", "--gemm-size", "128"]


def test_dense_flops_by_hand():
    layer = Dense(784, 500)
    out = bench._layer_out_shape(layer, (128, 784))
    assert out == (128, 500)
    fwd, bwd = bench.layer_flops(layer, (128, 784), out)
    assert fwd == 2 * 128 * 784 * 500                  # y = x W: one MAC per (n, i, o)
    assert bwd == 2 * fwd                              # dW = x^T dy and dx = dy W^T
    assert bench.layer_flops(layer, (128, 784), out, input_grad=False) == (fwd, fwd)


def test_conv_flops_by_hand():
    # 3 -> 8 channels, 3x5 kernel, stride 2, padding 1 on 10x12: Ho = (10+2-3)//2+1 = 5,
    # Wo = (12+2-5)//2+1 = 5; every output pixel of every filter is a C*kh*kw = 45-term sum.
    layer = Conv2d(3, 8, (3, 5), stride=2, padding=1)
    out = bench._layer_out_shape(layer, (4, 3, 10, 12))
    assert out == (4, 8, 5, 5)
    fwd, bwd = bench.layer_flops(layer, (4, 3, 10, 12), out)
    assert fwd == 2 * (4 * 8 * 5 * 5) * (3 * 3 * 5)
    assert bwd == 2 * fwd
    # The transposed conv scatters each *input* pixel through all Cin*Cout*kh*kw weights.
    t = ConvTranspose2d(8, 3, (3, 5), stride=2, padding=1)
    tout = bench._layer_out_shape(t, (4, 8, 5, 5))
    assert tout == (4, 3, 9, 11)                       # (5-1)*2 - 2 + 3, (5-1)*2 - 2 + 5
    assert bench.layer_flops(t, (4, 8, 5, 5), tout) == (fwd, 2 * fwd)


def test_model_flops_walks_every_weighted_layer():
    m = MLPVAE()
    f = bench.model_flops(m, (128, 784))
    macs = 128 * (784 * 500 + 2 * 500 * 2 + 2 * 500 + 500 * 784)
    # backward: weight gradients everywhere, input gradients everywhere but the first layer
    assert f["forward"] == 2 * macs
    assert f["backward"] == 2 * (2 * macs - 128 * 784 * 500)
    assert [r["name"] for r in f["layers"]] == ["encoder.0", "mu", "log_sigma", "decoder.0",
                                                "decoder.2"]
    c = bench.model_flops(ConvVAE(), (64, 1, 32, 32))
    assert len(c["layers"]) == len({k.rsplit(".", 1)[0] for k in ConvVAE().params})
    first = c["layers"][0]
    assert first["out_shape"] == [64, 32, 16, 16]
    assert first["backward"] == first["forward"]       # no input gradient for the data
    assert c["layers"][-1]["out_shape"] == [64, 1, 32, 32]


def test_model_flops_rejects_unknown_weighted_layers():
    class Mystery(Dense):
        pass

    m = MLPVAE()
    m.decoder = Sequential(Mystery(2, 3))
    # a subclass of Dense is counted as a Dense only if it says so; we refuse to guess
    with pytest.raises(ValueError, match="Mystery"):
        bench.model_flops(m, (4, 784))


def test_bench_json_both_models(capsys):
    assert main(["bench", "--json"] + QUICK) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in report["results"]] == list(MODELS)
    for r, batch, steps_per_epoch in zip(report["results"], (128, 64), (469, 937)):
        assert r["batch_size"] == batch and r["steps"] == 2 and r["median_ms"] > 0
        # 60000 training images: mlp keeps the partial batch, conv drops it
        assert r["steps_per_epoch"] == steps_per_epoch
        assert r["epoch_s"] == pytest.approx(steps_per_epoch * r["median_ms"] / 1e3)
        assert r["images_per_s"] == pytest.approx(batch / (r["median_ms"] / 1e3))
        assert r["matmul_gflops"] > 0
        assert r["floor_ms"] == pytest.approx(r["flops"] / (r["matmul_gflops"] * 1e6))
        assert r["x_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"])
        assert r["peak_rss"] >= r["rss_after_imports"] > 0
        assert r["workload_rss"] == r["peak_rss"] - r["rss_after_imports"]


def test_bench_impl_and_threads_reach_the_timing_process(capsys):
    for impl in ("plain", "fast"):
        assert main(["bench", "--model", "mlp", "--impl", impl, "--threads", "1",
                     "--batch-size", "8", "--json"] + QUICK) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["threads"] == 1 and report["results"][0]["impl"] == impl


def test_bench_text(capsys):
    assert main(["bench", "--model", "mlp", "--batch-size", "8"] + QUICK) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "s/epoch" in out and "conv" not in out
    assert "steps per epoch x median ms/step" in out


def test_workload_lays_out_batches_as_training_does():
    assert bench.Workload("mlp", batch_size=4).x.shape == (4, 784)
    assert bench.Workload("conv", batch_size=4).x.shape == (4, 1, 32, 32)


def test_bench_bad_flags_are_one_line_errors(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert main(["bench", "--model", "resnet"]) == 2
    assert main(["bench", "--impl", "turbo"]) == 2
    assert main(["bench", "--no-torch"]) == 2       # the PyTorch comparison is in benchmarks/
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_bench_cupy_without_gpu_is_a_clear_error(capsys):
    from minivae.backend import cupy_status

    if cupy_status()[0] is not None:
        pytest.skip("a GPU is usable here")
    assert main(["bench", "--backend", "cupy"] + QUICK) == 1
    assert "cupy" in capsys.readouterr().err
