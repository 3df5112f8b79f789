"""Picture helpers: grid layout, PNG files, loss curves, scatter, manifold grid, PCA."""

import numpy as np
import pytest
from PIL import Image

from minivae import plots


def test_image_grid_is_row_major():
    imgs = np.stack([np.full((2, 3), i / 10) for i in range(5)])      # 5 images, 2x3 each
    g = plots.image_grid(imgs, ncol=2)
    assert g.shape == (3 * 2, 2 * 3)
    assert g[0, 0] == 0.0 and g[0, 3] == pytest.approx(0.1)             # row 0: images 0, 1
    assert g[2, 0] == pytest.approx(0.2) and g[4, 3] == 0.0             # last cell blank
    assert g[4, 0] == pytest.approx(0.4)


def test_as_square_images_accepts_every_layout():
    flat = np.zeros((4, 784))
    assert plots.as_square_images(flat).shape == (4, 28, 28)
    assert plots.as_square_images(np.zeros((4, 1, 32, 32))).shape == (4, 32, 32)
    with pytest.raises(ValueError):
        plots.as_square_images(np.zeros((4, 783)))


def test_save_png_roundtrip(tmp_path):
    img = np.linspace(-0.5, 1.5, 12).reshape(3, 4)                      # clipped to [0, 1]
    path = plots.save_png(tmp_path / "a.png", img, scale=2)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (8, 6)
        px = np.asarray(im)
    assert px.min() == 0 and px.max() == 255
    assert not list(tmp_path.glob(".*"))                                 # no temp file left


def test_side_by_side_two_rows():
    a, b = np.zeros((8, 28, 28)), np.ones((8, 28, 28))
    g = plots.side_by_side(a, b, pad=2)
    assert g.shape == (28 + 4 + 28, 8 * 28 + 7 * 2)
    assert g[:28, :28].max() == 0 and g[-28:, :28].min() == 1


def test_manifold_points_grid_orientation():
    pts = plots.manifold_points()
    assert pts.shape == (121, 2)
    z = np.linspace(-2, 2, 11)
    assert np.allclose(pts[:11, 0], z) and np.allclose(pts[:11, 1], 2)     # top row: z[1] = 2
    assert np.allclose(pts[::11, 1], z[::-1]) and np.allclose(pts[::11, 0], -2)
    assert sorted(map(tuple, pts)) == sorted((a, b) for a in z for b in z)   # the seed's 121


def test_pca_axes_orthonormal_and_ordered():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((500, 5)) * np.array([5.0, 0.1, 2.0, 0.1, 0.1])
    coords, axes = plots.pca_2d(pts)
    assert np.allclose(axes @ axes.T, np.eye(2), atol=1e-10)
    assert abs(axes[0, 0]) > 0.99 and abs(axes[1, 2]) > 0.99
    assert coords.shape == (500, 2) and coords[:, 0].var() > coords[:, 1].var()


def test_loss_curves_and_scatter(tmp_path):
    rows = [{"epoch": e, "train_loss": 300 - 10 * e, "train_recon": 280 - 10 * e,
             "train_kl": 10, "test_neg_elbo": 295 - 9 * e} for e in (1, 2, 3)]
    plots.loss_curves(tmp_path / "loss.png", rows)
    rng = np.random.default_rng(1)
    plots.latent_scatter(tmp_path / "c.png", rng.standard_normal((200, 2)),
                         rng.integers(0, 10, 200), plots.CLASS_NAMES["fashion-mnist"])
    for name in ("loss.png", "c.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()


def test_a_caption_goes_on_a_white_band_above_the_picture(tmp_path):
    from PIL import Image

    grid = np.linspace(0, 1, 28 * 56).reshape(28, 56)
    plots.save_png(tmp_path / "plain.png", grid)
    plots.save_png(tmp_path / "captioned.png", grid, caption="epoch 3: decodes of 100 draws "
                                                              "from the prior, wrapped to fit")
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    captioned = np.asarray(Image.open(tmp_path / "captioned.png"))
    band = captioned[:-28]
    assert captioned.shape[1] == 56 and len(band) >= 2 * plots.CAPTION_LINE   # wrapped
    np.testing.assert_array_equal(captioned[-28:], plain)
    assert band.max() == 255 and band.min() < 100
