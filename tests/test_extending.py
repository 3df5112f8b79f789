"""An engine builder's change touches one place: a third model is one registry entry, and every
command and check takes it (train, plot, evaluate, report, gradcheck in every tier and the
statistical checks), with no list to update."""

import pytest

from minivae import cli
from minivae.models import MODELS, ConvLayer, ConvVAE, ModelSpec
from minivae.tiers import TIERS

# A conv VAE one layer deeper each way (32 -> 16 -> 8 -> 4 -> 2 and back), narrow: the entry is
# all it takes.
DEEP = ModelSpec(
    ConvVAE, "a conv VAE one layer deeper (a throwaway of the tests)",
    dict(MODELS["conv"].defaults, hidden_dim=24, latent_dim=4), pad=2, flatten=False,
    drop_last=True,
    options=dict(encoder=(ConvLayer(6),) * 4, hidden=(24,),
                 decoder=(ConvLayer(6),) * 3 + (ConvLayer(1, activation=False),)))


@pytest.fixture
def deep(monkeypatch):
    monkeypatch.setitem(MODELS, "deep", DEEP)
    return "deep"


def test_a_registered_model_goes_through_every_command(deep, tmp_path, synthetic_data_dir,
                                                       capsys):
    run = tmp_path / "run"
    data = ["--data-dir", str(synthetic_data_dir), "--no-download", "--backend", "numpy"]
    assert cli.main(["train", "--model", deep, "--limit", "192", "--epochs", "2", "--out",
                     str(run), "--no-progress", "--sample-size", "4", *data]) == 0
    assert "deep VAE on fashion-mnist" in capsys.readouterr().out
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "3",
                     "--no-progress"]) == 0
    assert cli.main(["plot", str(run), *data]) == 0
    assert (run / "manifold.png").is_file() and (run / "traversals.gif").is_file()
    assert cli.main(["evaluate", str(run), "--iw-samples", "4", *data]) == 0
    assert cli.main(["report", str(run), *data]) == 0
    assert (run / "report.html").is_file()
    capsys.readouterr()
    for impl in TIERS:
        assert cli.main(["gradcheck", "--filter", "--model deep", "--impl", impl]) == 0
        out = capsys.readouterr().out
        assert "--model deep" in out and " 0 failed" in out.splitlines()[-1], out


def test_the_statistical_checks_take_a_registered_model(deep, capsys):
    assert cli.main(["gradcheck", "--filter", "--model deep", "--statistical"]) == 0
    table = capsys.readouterr().out.split("statistical checks")[1]
    for check in ("std", "KL", "IWAE<=ELBO", "IWAE in K"):
        assert any(line.startswith(f"deep {check} ") and line.endswith("pass")
                   for line in table.splitlines()), (check, table)
