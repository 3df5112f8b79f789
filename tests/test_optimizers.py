"""The three optimizers (minivae/optim.py) against steps computed by hand, and `train
--optimizer`: saved with the run, fixed on --resume, resumed exactly."""

import numpy as np
import pytest

from minivae import optim
from minivae.config import make_config
from minivae.errors import TrainError
from minivae.run import RunFolder
from minivae.tiers import TIERS, build_model, make_optimizer
from minivae.train import train


class Weights:
    """The least a model must offer an optimizer: params and grads by name."""

    def __init__(self):
        self.params = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[3.0]])}
        self.grads = {}


GRADS = [{"a": np.array([0.5, -1.0, 0.0]), "b": np.array([[2.0]])},
         {"a": np.array([-0.25, 0.5, 4.0]), "b": np.array([[-1.0]])}]


def two_steps(opt_cls, **kw):
    model = Weights()
    opt = opt_cls(model, **kw)
    for g in GRADS:
        model.grads = g
        opt.step()
    return model.params, opt


def test_sgd_is_p_minus_lr_g():
    params, opt = two_steps(optim.SGD, lr=0.1)
    np.testing.assert_allclose(params["a"], [1.0 - 0.05 + 0.025, -2.0 + 0.1 - 0.05,
                                             0.5 - 0.0 - 0.4])
    np.testing.assert_allclose(params["b"], [[3.0 - 0.2 + 0.1]])
    assert opt.state_dict() == {"t": 2, "lr": 0.1}


def test_momentum_keeps_a_velocity():
    params, opt = two_steps(optim.Momentum, lr=0.1, momentum=0.9)
    v1 = -0.1 * GRADS[0]["a"]
    v2 = 0.9 * v1 - 0.1 * GRADS[1]["a"]
    np.testing.assert_allclose(params["a"], np.array([1.0, -2.0, 0.5]) + v1 + v2)
    vb1 = -0.1 * 2.0
    np.testing.assert_allclose(params["b"], [[3.0 + vb1 + (0.9 * vb1 + 0.1)]])
    np.testing.assert_allclose(opt.state_dict()["v.a"], v2)


def test_adam_two_steps_by_hand():
    params, _ = two_steps(optim.Adam, lr=0.01)
    p = np.array([1.0, -2.0, 0.5])
    m = v = np.zeros(3)
    for t, g in enumerate((GRADS[0]["a"], GRADS[1]["a"]), 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(params["a"], p, rtol=1e-12)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_tier_gets_each_optimizer(name):
    """A tier without a twin of an optimizer gets the plain class (as for layers); its state
    loads into a fresh one and continues exactly."""
    for tier in TIERS:
        model = build_model("mlp", hidden_dim=8, impl=tier, dtype=np.float64)
        opt = make_optimizer(model, name, lr=1e-3)
        twin = TIERS[tier].optimizers.get(name)
        assert type(opt) is (twin or optim.OPTIMIZERS[name])
        x = np.random.default_rng(0).random((4, 784))
        model.loss_and_grads(x, noise=np.zeros((4, 2)))
        opt.step()
        again = make_optimizer(model, name, lr=0.5)
        again.load_state_dict(opt.state_dict())
        assert again.lr == 1e-3 and again.t == 1
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, "rmsprop")


def tiny(out, data_dir, **kw):
    return make_config("mlp", **dict(dict(dataset="fashion-mnist", epochs=2, limit=256,
                                          batch_size=64, hidden_dim=16, sample_size=4,
                                          backend="numpy", out=str(out), data_dir=str(data_dir),
                                          download=False), **kw))


def quietly(cfg, **kw):
    return train(cfg, progress=False, log=lambda m: None, warn=lambda m: None, **kw)


@pytest.mark.parametrize("name", ["sgd", "momentum"])
def test_train_with_an_optimizer_resumes_exactly(tmp_path, synthetic_data_dir, name):
    whole = quietly(tiny(tmp_path / "whole", synthetic_data_dir, epochs=3, optimizer=name,
                         lr=0.01))
    assert whole[-1]["train_loss"] < whole[0]["train_loss"]

    class Stop(Exception):
        pass

    def stop(epoch, step, terms):
        if epoch == 2 and step == 2:
            raise Stop
    cut = tiny(tmp_path / "cut", synthetic_data_dir, epochs=3, optimizer=name, lr=0.01)
    with pytest.raises(Stop):
        quietly(cut, callback=stop)
    resumed = quietly(cut, resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip
    folder = RunFolder(tmp_path / "cut")
    assert folder.read_config()["optimizer"] == name
    with pytest.raises(TrainError, match=f"trained with --optimizer {name}, not --optimizer adam"):
        quietly(tiny(tmp_path / "cut", synthetic_data_dir, epochs=4, optimizer="adam",
                     lr=0.01), resume=True)
