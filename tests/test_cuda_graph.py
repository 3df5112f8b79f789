"""The training step replayed from a CUDA graph (minivae/gpu/replay.py), on the CuPy stand-in,
which captures and replays under CUDA's rules (tests/standin/cupy/_device.py): the counts of a
replayed step, the eager step's numbers bit for bit (both seeds, a KL warm-up, a partial last
batch, a resume after a kill), and the fallbacks to the eager step."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import minivae_on_standin as minivae

from minivae.models import MODELS
from minivae.tiers import build_model, make_adam


def replayed(cp, name, steps=3, images=None):
    """(ReplayedStep, model, opt, images) for model `name` at its seed batch, captured."""
    from minivae.gpu.replay import ReplayedStep

    spec, batch = MODELS[name], MODELS[name].defaults["batch_size"]
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (batch * steps + 7, 28, 28),
                                                   dtype=np.uint8)
    model = build_model(name, backend="cupy", impl="gpu")
    opt = make_adam(model, lr=1e-3)
    step = ReplayedStep(model, opt, images, spec, batch, 0.01, steps)
    rng = np.random.default_rng(1)
    step.load_epoch(rng.permutation(len(images))[:steps * batch],
                    rng.standard_normal((steps * batch, model.latent_dim)),
                    step.numbers_for([0.25, 0.5, 1.0][:steps], 1))
    step.capture()
    return step, model, opt, images


@pytest.mark.parametrize("name", list(MODELS))
def test_a_replayed_step_is_one_launch_no_read_no_upload(standin, name):
    step, model, opt, _ = replayed(standin, name)
    standin.standin.reset()
    for _ in range(3):
        step.replay()
    assert standin.standin.counts() == {"launches": 3, "reads": 0, "uploads": 0}
    assert opt.t == 3
    terms = step.read_terms(0, 3)
    assert standin.standin.reads == 1 and terms.shape == (3, 3) and np.isfinite(terms).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_replayed_steps_are_the_eager_steps_bit_for_bit(standin, name):
    """Three replays against three eager gpu-tier steps on the same batches, noise, KL weights
    and Adam counts: parameters, moments and the loss sums identical."""
    from minivae.data import to_float

    step, model, opt, images = replayed(standin, name)
    for _ in range(3):
        step.replay()
    spec, batch = MODELS[name], MODELS[name].defaults["batch_size"]
    twin = build_model(name, backend="cupy", impl="gpu")
    twin_opt = make_adam(twin, lr=1e-3)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(images))
    noise = rng.standard_normal((3 * batch, twin.latent_dim)).astype(np.float32)
    sums = []
    for i, beta in enumerate([0.25, 0.5, 1.0]):
        x = to_float(images[order[i * batch:(i + 1) * batch]], standin, np.float32, spec.pad,
                     spec.flatten)
        twin.loss_and_grads(x, noise=standin.asarray(noise[i * batch:(i + 1) * batch]),
                            beta=beta, weight_decay=0.01)
        sums.append(twin.device_terms.get())
        twin_opt.step()
    np.testing.assert_array_equal(step.read_terms(0, 3), np.array(sums))
    for a, b in ((model.flat_params, twin.flat_params), (opt.m_flat, twin_opt.m_flat),
                 (opt.v_flat, twin_opt.v_flat)):
        np.testing.assert_array_equal(a.get(), b.get())


def test_a_capture_that_raises_and_a_replay_that_differs_are_refused(standin, monkeypatch):
    from minivae.gpu import kernels, replay as graph

    monkeypatch.setattr(graph.ReplayedStep, "body", lambda self: float(self.counter[0]))
    with pytest.raises(graph.GraphUnavailable, match="capture failed .*D2H"):
        replayed(standin, "mlp")
    monkeypatch.undo()
    # a replay that advances the counter twice: its second step reads the wrong row
    real = kernels.advance.__wrapped__

    @kernels.fused
    def advance_twice_in_a_graph(counter):
        real(counter)
        real(counter)

    original_capture = graph.ReplayedStep.capture

    def capture(self):
        advance_twice_in_a_graph(self.xp.zeros(1, dtype=np.int64))       # loaded beforehand
        eager_body = self.body

        def body():
            eager_body()
            if self.stream.is_capturing():
                advance_twice_in_a_graph(self.counter)
        self.body = body
        original_capture(self)

    monkeypatch.setattr(graph.ReplayedStep, "capture", capture)
    with pytest.raises(graph.GraphUnavailable, match="off by"):
        replayed(standin, "mlp")


# --------------------------------------------------------------------------------------------
# The program: train --backend cupy with the graph, against --cuda-graph off


def metrics(run):
    with open(Path(run) / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def checkpoint(run, epoch):
    with np.load(Path(run) / "checkpoints" / f"model-{epoch}.npz") as z:
        return {k: z[k] for k in z.files if not k.startswith(("config", "metrics"))}   # seconds


@pytest.mark.parametrize("name, limit", [("mlp", 300), ("conv", 256)])
def test_train_with_the_graph_gives_the_eager_numbers_bit_for_bit(tmp_path, synthetic_data_dir,
                                                                   name, limit):
    """Both seeds, two epochs with a KL warm-up, the MLP with a partial last batch (300 images
    in batches of 128): metrics.csv and every array of every checkpoint identical."""
    common = ["--model", name, "--limit", limit, "--epochs", 2, "--hidden-dim", 32,
              "--kl-warmup", 3, "--data-dir", synthetic_data_dir, "--no-download",
              "--no-progress", "--backend", "cupy", "--impl", "gpu"]
    graph = minivae("train", *common, "--out", tmp_path / "graph")
    assert "replayed from a CUDA graph" in graph.stdout, graph.stdout + graph.stderr
    eager = minivae("train", *common, "--cuda-graph", "off", "--out", tmp_path / "eager")
    assert "CUDA graph" not in eager.stdout + eager.stderr
    assert metrics(tmp_path / "graph") == metrics(tmp_path / "eager")
    for epoch in (1, 2):
        a, b = checkpoint(tmp_path / "graph", epoch), checkpoint(tmp_path / "eager", epoch)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_replayed_run_killed_mid_epoch_resumes_exactly(standin, tmp_path, synthetic_data_dir):
    """A run with the graph stopped by Ctrl-C in its second epoch, resumed, ends where an
    uninterrupted one does."""
    from minivae.config import make_config
    from minivae.train import train

    common = dict(model="conv", limit=320, epochs=3, hidden_dim=32, data_dir=str(
        synthetic_data_dir), download=False, backend="cupy", impl="gpu")
    quiet = dict(progress=False, log=lambda m: None, warn=lambda m: None)
    lines = []
    whole = train(make_config(**common, out=str(tmp_path / "whole")), progress=False,
                  log=lines.append, warn=lines.append)
    assert any("replayed from a CUDA graph" in line for line in lines), lines

    def kill(epoch, step, terms):
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt
    cut = make_config(**common, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut, callback=kill, **quiet)
    resumed = train(cut, resume=True, **quiet)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip
    a, b = checkpoint(tmp_path / "whole", 3), checkpoint(tmp_path / "cut", 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_where_the_graph_cannot_apply_one_line_says_why(tmp_path, synthetic_data_dir):
    common = ["--model", "mlp", "--limit", 256, "--epochs", 1, "--hidden-dim", 16,
              "--data-dir", synthetic_data_dir, "--no-download", "--no-progress"]
    p = minivae("train", *common, "--backend", "numpy", "--cuda-graph", "auto", "--out",
                tmp_path / "np")
    assert "no CUDA graph: it needs --backend cupy" in p.stderr
    p = minivae("train", *common, "--backend", "numpy", "--out", tmp_path / "np2")
    assert "CUDA graph" not in p.stderr                 # not asked for, not on CuPy: nothing
    p = minivae("train", *common, "--backend", "cupy", "--impl", "plain", "--out",
                tmp_path / "plain")
    assert "no CUDA graph: it replays the gpu tier's step" in p.stderr
    assert p.stderr.count("CUDA graph") == 1


@pytest.mark.parametrize("read_every", [0.0, 1e9])
def test_a_nan_stops_a_replayed_run_with_the_last_good_checkpoint_intact(
        standin, tmp_path, synthetic_data_dir, monkeypatch, read_every):
    """A weight turned NaN after step 2 of epoch 2: read after every step, the guard names step
    3 as the eager loop does; read only at the epoch's end, it notices there. Either way
    training stops, epoch 1's checkpoint and metrics stay, nothing of epoch 2 is written."""
    from minivae import run as run_module
    from minivae import train as train_module
    from minivae.checkpoint import Checkpoint
    from minivae.config import make_config
    from minivae.errors import NonFiniteLossError
    from minivae.run import RunFolder

    monkeypatch.setattr(train_module, "READ_EVERY_S", read_every)
    out = tmp_path / "run"
    cfg = make_config(model="conv", limit=320, epochs=3, hidden_dim=16, out=str(out),
                      data_dir=str(synthetic_data_dir), download=False, backend="cupy",
                      impl="gpu")
    built = []
    real_build = run_module.model_for
    monkeypatch.setattr(run_module, "model_for",
                        lambda cfg, xp: built.append(real_build(cfg, xp)) or built[-1])

    def poison(epoch, step, terms):
        if epoch == 2 and step == 2:
            built[-1].params["decoder.0.W"][0, 0] = np.nan

    where = r"epoch 2, step 3" if read_every == 0 else r"epoch 2, step \d"
    with pytest.raises(NonFiniteLossError, match=where + r".*model-1\.npz"):
        train_module.train(cfg, progress=False, log=lambda m: None, warn=lambda m: None,
                           callback=poison)
    assert [e for e, _ in RunFolder(out).checkpoints()] == [1]
    Checkpoint(out / "checkpoints" / "model-1.npz")
    assert not (out / "epoch_2.png").exists()
