"""The real-data pools (gsm.data.pool, data=digits | patches): shape, normalisation, nothing downloaded, the
training / held-out split, and the one-line refusals of bad input."""
import socket

import pytest
import torch

from gsm.data.pool import MIN_HELD_OUT, load_digits, load_patches

pytest.importorskip("sklearn")
pytest.importorskip("skimage")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket opened while loading fails the test: the pools ship with their packages."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pool loader opened a network connection")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("load,size", [(load_digits, 1797), (lambda: load_patches("camera"), 4096)])
def test_pools_are_centred_unit_average_variance_and_loaded_offline(load, size, no_network):
    """P × 64 points with mean 0 and tr Σ / d = 1 (module doc), Σ positive-definite once dequantised;
    camera at size = stride = 8 gives (512/8)² = 4096 patches."""
    pool = load()
    assert pool.points.shape == (size, 64) and pool.points.dtype == torch.float64
    assert pool.size == size and pool.dim == 64
    assert float(pool.points.mean(0).abs().max()) < 1e-12
    assert abs(float(torch.trace(pool.covariance)) / 64 - 1) < 1e-12
    assert float(pool.surrogate().eigenvalues.min()) > 0
    assert pool.is_gaussian is False


def test_digits_are_the_sklearn_images_rescaled():
    """Without dequantisation the points are the sklearn grey levels, centred and scaled by one number: the
    correlation with the raw images is 1 pixel by pixel, and the three always-blank pixels are 0."""
    from sklearn.datasets import load_digits as raw
    u = torch.as_tensor(raw().data, dtype=torch.float64)
    x = load_digits(dequantize=False).points
    c = (u - u.mean(0)).pow(2).mean(0).sum().div(64).sqrt()
    assert torch.allclose(x * c, u - u.mean(0), atol=1e-12)
    assert int((x.abs().max(0).values == 0).sum()) == 3


def test_patches_are_the_image_tiles():
    """Patch 1 (row 0, second tile) is pixels [0:8, 8:16] of the image, up to the pool's affine normalisation."""
    import skimage.data
    img = torch.as_tensor(skimage.data.camera(), dtype=torch.float64) / 255
    u = img.unfold(0, 8, 8).unfold(1, 8, 8).reshape(-1, 64)
    x = load_patches("camera", dequantize=False).points
    assert torch.allclose(u[1], img[0:8, 8:16].reshape(-1))
    c = (u - u.mean(0)).pow(2).mean(0).sum().div(64).sqrt()
    assert torch.allclose(x * c, u - u.mean(0), atol=1e-12)


def test_split_draws_training_sets_without_replacement_and_fresh_samples_from_the_rest():
    pool = load_digits()
    split = pool.split(3, 1000, generator=torch.Generator().manual_seed(0))
    assert split.train.shape == (3, 1000, 64) and split.held_out == 797
    t, t2 = split.fresh(300, parts=2, generator=torch.Generator().manual_seed(1))
    assert t.shape == t2.shape == (3, 300, 64)
    for r in range(3):
        train, held = set(split.train_index[r].tolist()), set(split.held_index[r].tolist())
        assert len(train) == 1000 and not train & held and len(train | held) == pool.size
    assert split.fresh(10_000, parts=2)[0].shape == (3, 797 // 2, 64)      # at most half the held-out rest each
    idx = split.select(torch.tensor([True, False, True])).held_index
    assert torch.equal(idx, split.held_index[[0, 2]])


@pytest.mark.parametrize("call,line", [
    (lambda: load_digits().check_n(1797), f"data.n must be an integer in [2, {1797 - MIN_HELD_OUT}]"),
    (lambda: load_digits().split(2, 5000), "data.n must be an integer in [2, 1793]"),
    (lambda: load_patches("astronaut"), "data.image must be one of camera | coins"),
    (lambda: load_patches(stride=0), "data.stride must be an integer >= 1, got 0"),
    (lambda: load_digits(dequantize="yes"), "data.dequantize must be one of true | false, got yes"),
])
def test_bad_input_is_refused_in_one_line(call, line):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
