"""The independent MNIST perceptual network and the `perceptual` loss."""

import pytest
import torch

from s4s.cli import main
from s4s.data import load_mnist
from s4s.bundled.classifier import load_mnist_classifier
from s4s.bundled.perceptual import MnistPerceptualNet, load_mnist_perceptual
from s4s.learning.objectives import make_distance


def _lpips_by_hand(net: MnistPerceptualNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS with unit weights, written layer by layer: sum_l mean_hw ||h^_l(x) - h^_l(y)||^2."""
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for hx, hy in zip(net.activations(x), net.activations(y)):
        nx = hx.double() / (hx.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = hy.double() / (hy.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
    return total


def test_perceptual_loss_is_the_lpips_formula():
    torch.manual_seed(0)
    net = MnistPerceptualNet().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 1, 28, 28, generator=gen) * 2 - 1, torch.rand(5, 1, 28, 28, generator=gen) * 2 - 1
    d = make_distance("perceptual", net.features)(x, y)
    torch.testing.assert_close(d.double(), _lpips_by_hand(net, x, y), rtol=1e-4, atol=1e-6)
    assert float(make_distance("perceptual", net.features)(x, x).abs().max()) == 0.0
    with pytest.raises(ValueError, match="perceptual feature network"):
        make_distance("perceptual")


def test_range_aware_targets_leave_the_perceptual_loss_unchanged():
    """The network clamps its inputs to [-1, 1], and a range-aware target clamps to the teacher's value."""
    from s4s.learning.objectives import range_aware

    net = MnistPerceptualNet().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    x, y = 1.5 * torch.randn(4, 1, 28, 28, generator=gen), 1.5 * torch.randn(4, 1, 28, 28, generator=gen)
    plain = make_distance("perceptual", net.features)
    assert torch.equal(range_aware(plain, (-1.0, 1.0))(x, y), plain(x, y))


def test_shipped_perceptual_network_and_fd_classifier_classify_mnist_test():
    data = load_mnist()
    x, labels = data.test_images, data.test_labels
    perceptual, classifier = load_mnist_perceptual(), load_mnist_classifier()
    with torch.no_grad():
        acc_p = (perceptual(x).argmax(1) == labels).float().mean().item()
        acc_c = (classifier(x).argmax(1) == labels).float().mean().item()
    assert acc_p >= 0.98 and acc_c >= 0.99


def test_cli_perceptual_loss_needs_a_model_that_declares_its_data(tmp_path, caplog):
    from test_eval import _tiny_model_folder

    folder = _tiny_model_folder(tmp_path / "rgb", channels=3, size=16, classes=0)
    rc = main(["learn", "--model", str(folder), "--nfe", "2", "--loss", "perceptual", "--out", str(tmp_path / "s.json")])
    assert rc == 2 and "declares none" in caplog.text
    rc = main(["learn", "--model", str(folder), "--data", "mnist", "--nfe", "2", "--out", str(tmp_path / "s.json")])
    assert rc == 2 and "whose networks take (1, 28, 28) images" in caplog.text


def test_auto_loss_is_perceptual_only_for_models_that_declare_mnist(tmp_path):
    from test_eval import _tiny_model_folder

    from s4s.learning.model_losses import resolve_loss
    from s4s.models import load_model

    mnist = load_model(None)
    loss, fn = resolve_loss(mnist, "auto")
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert loss == "perceptual" and torch.equal(fn(x), load_mnist_perceptual().features(x))
    assert resolve_loss(mnist, "l1") == ("l1", None)
    rgb = load_model(_tiny_model_folder(tmp_path / "rgb", channels=3, size=16, classes=0))
    assert resolve_loss(rgb, None) == ("l2", None)
    with pytest.raises(ValueError, match="declares none"):
        resolve_loss(rgb, "perceptual")
    # a 1x28x28 model that is not declared MNIST learns with l2 (the shape alone picks nothing) ...
    gray = _tiny_model_folder(tmp_path / "gray")
    assert resolve_loss(load_model(gray), "auto") == ("l2", None)
    # ... and with the MNIST network once it declares MNIST data
    declared, declared_fn = resolve_loss(load_model(gray, data="mnist"), "auto")
    assert declared == "perceptual" and torch.equal(declared_fn(x), load_mnist_perceptual().features(x))
