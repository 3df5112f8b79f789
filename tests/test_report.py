"""`minivae report RUN`: the page embeds what the checkpoint holds, and in a real browser (headless
Chromium, from Debian's `chromium` package; skipped where it is absent) it loads with no errors
and its JavaScript decoder gives the Python decoder's probabilities."""

import base64
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from minivae import cli
from minivae.checkpoint import Checkpoint
from minivae.evaluate import decode_probs, posterior_means
from minivae.models import MODELS
from minivae.run import load_run

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                        "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data_dir):
    """One short run of each seed model at its seed's sizes, with its report."""
    out = {}
    for name in MODELS:
        run = tmp_path_factory.mktemp(f"report-{name}") / "run"
        assert cli.main(["train", "--model", name, "--limit", "128", "--epochs", "2",
                         "--batch-size", "32", "--out", str(run), "--data-dir",
                         str(synthetic_data_dir), "--no-download", "--no-progress",
                         "--backend", "numpy"]) == 0
        assert cli.main(["report", str(run), "--data-dir", str(synthetic_data_dir),
                         "--no-download", "--backend", "numpy"]) == 0
        out[name] = run
    return out


def page_data(path):
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="minivae-data">(.*?)</script>', text,
                      re.S)
    return json.loads(found.group(1))


def unpack(text, dtype):
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_page_embeds_what_the_checkpoint_holds(runs, name, synthetic_data_dir):
    run = runs[name]
    path = run / "report.html"
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 5e6
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page loads nothing external"
    data = page_data(path)
    ckpt = Checkpoint(run / "checkpoints" / "model-2.npz")
    assert data["epoch"] == 2 and data["metrics"] == ckpt.metrics
    assert data["settings"]["model"] == name
    weights = unpack(data["decoder"]["weights"], "<f4")
    for i, layer in enumerate(data["decoder"]["layers"]):
        for key in ("W", "b"):
            if key in layer:
                saved = ckpt.params[f"decoder.{i}.{key}"].astype(np.float32).ravel()
                np.testing.assert_array_equal(weights[layer[key]:layer[key] + saved.size], saved)
    model, cfg, _ = load_run(run, backend="numpy")
    from minivae import data as data_module
    images, labels = data_module.load_for(cfg.replace(data_dir=str(synthetic_data_dir),
                                                      download=False), "test", cfg.limit)
    means, _ = posterior_means(model, images, cfg)
    idx = data["points"]["testIndex"]
    np.testing.assert_allclose(unpack(data["points"]["means"], "<f4").reshape(len(idx), -1),
                               means[idx], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(unpack(data["points"]["labels"], "u1"), labels[idx])


def test_evaluate_saves_what_the_report_shows(runs, synthetic_data_dir, capsys):
    run = runs["mlp"]
    args = [str(run), "--data-dir", str(synthetic_data_dir), "--no-download", "--backend", "numpy"]
    assert cli.main(["evaluate", *args, "--iw-samples", "3"]) == 0
    saved = json.loads((run / "evaluation.json").read_text())["2"]
    assert saved["iw_samples"] == 3 and saved["neg_log_px"] <= saved["neg_elbo"]
    assert cli.main(["report", *args]) == 0
    assert page_data(run / "report.html")["evaluation"] == saved
    assert cli.main(["plot", *args]) == 0
    assert f"report {run / 'report.html'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["report", "{empty}"], "holds no checkpoints"),
    (["report", "{run}", "--epoch", "7"], "has no checkpoint for epoch 7"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(empty=empty, run=runs["conv"]) for a in argv]
    before = sorted(os.listdir(runs["conv"]))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minivae: error:") and message in err
    assert os.listdir(empty) == [] and sorted(os.listdir(runs["conv"])) == before


def test_an_unwritable_folder_is_one_line(runs, tmp_path, capsys, synthetic_data_dir):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    run = runs["mlp"]
    run.chmod(0o555)
    try:
        assert cli.main(["report", str(run), "--data-dir", str(synthetic_data_dir),
                         "--no-download"]) == 1
    finally:
        run.chmod(0o755)
    assert capsys.readouterr().err.startswith("minivae: error:")


# --------------------------------------------------------------------------------------------
# In a real browser

PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));
const __error = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };
</script>"""
PROBE_TAIL = """<script>
(async () => {
  const out = {errors: window.__errors, decodes: [], ms: 0};
  try {
    await window.minivae.ready;
    const t0 = performance.now();
    for (const z of %s) {
      out.decodes.push(Array.from(await window.minivae.decode(Float32Array.from(z))));
    }
    out.ms = (performance.now() - t0) / Math.max(1, out.decodes.length);
    out.api = [window.minivae.latentDim, window.minivae.height, window.minivae.width];
  } catch (e) { out.errors.push(String(e)); }
  const pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();
</script>"""


def chromium(args, tmp_path):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-quic", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                              "(apt-get install chromium)")
@pytest.mark.parametrize("name", list(MODELS))
def test_the_page_decodes_as_python_does_in_a_real_browser(runs, name, tmp_path):
    run = runs[name]
    model, cfg, _ = load_run(run, backend="numpy")
    rng = np.random.default_rng(5)
    zs = rng.standard_normal((4, model.latent_dim)).astype(np.float32) * 1.5
    page = (run / "report.html").read_text(encoding="utf-8")
    page = page.replace("<head>", "<head>" + PROBE_HEAD, 1)
    page = page.replace("</body>", PROBE_TAIL % json.dumps(zs.tolist()) + "</body>", 1)
    probe = run / "probe.html"
    probe.write_text(page, encoding="utf-8")
    try:
        p = chromium(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()], tmp_path)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', p.stdout, re.S)
    assert found, p.stderr[-2000:]
    out = json.loads(html.unescape(found.group(1)))
    assert out["errors"] == []
    side = 28 + 2 * cfg.spec.pad
    assert out["api"] == [model.latent_dim, side, side]
    want = decode_probs(model, zs).reshape(len(zs), -1)
    got = np.array(out["decodes"])
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) < 1e-5
    shot = chromium(["--window-size=1280,1500", f"--screenshot={tmp_path / 'page.png'}",
                     "--virtual-time-budget=5000", (run / "report.html").as_uri()], tmp_path)
    assert (tmp_path / "page.png").stat().st_size > 10_000, shot.stderr[-2000:]


def test_report_out_and_the_pictures_of_its_epoch(runs, tmp_path, synthetic_data_dir):
    """--out writes the page elsewhere (the run folder untouched) with links back to the run's
    pictures; pictures of another epoch than the page's are named as such, not shown."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["mlp"], run)
    (run / "report.html").unlink()
    data_args = ["--data-dir", str(synthetic_data_dir), "--no-download", "--backend", "numpy"]
    assert cli.main(["plot", str(run), "--epoch", "1", *data_args]) == 0
    assert cli.main(["report", str(run), "--out", str(tmp_path / "pages"), *data_args]) == 0
    assert not (run / "report.html").exists()
    newest = page_data(tmp_path / "pages" / "report.html")
    assert newest["epoch"] == 2 and newest["picturesEpoch"] == 1 and newest["pictures"] == []
    assert cli.main(["report", str(run), "--epoch", "1", "--out",
                     str(tmp_path / "pages" / "epoch1.html"), *data_args]) == 0
    first = page_data(tmp_path / "pages" / "epoch1.html")
    assert first["picturesEpoch"] is None and "../run/manifold.png" in first["pictures"]
    assert all((tmp_path / "pages" / link).is_file() for link in first["pictures"])
    assert first["metrics"][-1]["epoch"] == 1


def test_chart_ticks_are_round_numbers():
    from minivae.report import nice_ticks, svg_chart

    for lo, hi in ((0, 96.66), (0, 0.5494), (0.0, 1e-7), (-3.2, 250.1), (100.5, 100.6), (5, 5)):
        ticks = nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 6, (lo, hi, ticks)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** np.floor(np.log10(step))
        assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5)), (lo, hi, ticks)
    svg = svg_chart([("loss", [(1, 96.66), (2, 80.1), (3, 71.3)], "#000")], "epoch", "nats",
                    "loss")
    labels = re.findall(r'text-anchor="end">([^<]+)</text><line', svg)
    assert labels == ["0", "20", "40", "60", "80", "100"], labels


def test_the_page_takes_a_layer_by_its_exact_class():
    """A tier's twin of a layer is drawn as the layer; a subclass of ReLU that computes
    something else is refused by its name, not drawn as a ReLU."""
    from minivae import layers
    from minivae.errors import TrainError
    from minivae.report import decoder_spec
    from minivae.tiers import build_model

    for impl in ("plain", "fast", "gpu"):
        spec, _ = decoder_spec(build_model("conv", hidden_dim=8, impl=impl))
        assert [s["type"] for s in spec].count("ReLU") == 5

    class LeakyReLU(layers.ReLU):
        def forward(self, x):
            self.y = np.maximum(x, 0.1 * x)
            return self.y

    model = build_model("mlp", hidden_dim=8, impl="plain")
    model.decoder.layers[1] = LeakyReLU()
    with pytest.raises(TrainError, match="no JavaScript twin of LeakyReLU"):
        decoder_spec(model)
