"""Train the bundled MNIST classifier (FD feature network) and write the reference statistics, or
(``--network perceptual``) the independent network behind the ``perceptual`` learning loss.

Writes, under ``--out`` (default: the package's assets folder), for ``--network classifier``:
* ``mnist-classifier/model.safetensors`` - float16 weights of :class:`s4s.bundled.classifier.MnistClassifier`;
* ``mnist-classifier/mnist_test_features.npz`` - mean, covariance and count of the 128-d features of
  the 10k MNIST test images (the FD reference);
* ``mnist-classifier/metrics.json`` - test accuracy and the real-vs-real FD floor (MNIST test vs the
  first 10k of MNIST train).

and for ``--network perceptual`` (:class:`s4s.bundled.perceptual.MnistPerceptualNet`, seed 1 by default so that
it shares neither architecture nor initialisation nor batch order with the FD classifier):
* ``mnist-perceptual/model.safetensors`` and ``mnist-perceptual/metrics.json`` (test accuracy).

Usage: ``python scripts/train_mnist_classifier.py --epochs 4`` and
``python scripts/train_mnist_classifier.py --network perceptual --epochs 4``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from s4s.data import load_mnist
from s4s.bundled import assets_dir
from s4s.bundled.classifier import CLASSIFIER_FILE, REFERENCE_STATS_FILE, MnistClassifier
from s4s.eval.frechet import FeatureStats, frechet_distance
from s4s.bundled.perceptual import PERCEPTUAL_FILE, MnistPerceptualNet

log = logging.getLogger("train_mnist_classifier")


def random_shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (background -1)."""
    padded = F.pad(x, (pad,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[..., dy:dy + 28, dx:dx + 28]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--network", choices=["classifier", "perceptual"], default="classifier")
    p.add_argument("--seed", type=int, default=None, help="default 0 (classifier) / 1 (perceptual)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.seed is None:
        args.seed = 0 if args.network == "classifier" else 1
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    out = args.out or assets_dir()
    data = load_mnist()
    model = MnistClassifier() if args.network == "classifier" else MnistPerceptualNet()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = len(data.train_images) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(data.train_images), generator=gen)
        t0 = time.time()
        for k in range(steps_per_epoch):
            idx = perm[k * args.batch_size:(k + 1) * args.batch_size]
            x = random_shift(data.train_images[idx], gen)
            loss = F.cross_entropy(model(x), data.train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(data.valid_images).argmax(1) == data.valid_labels).float().mean().item()
        log.info("epoch %d: valid accuracy %.4f (%.0f s)", epoch + 1, acc, time.time() - t0)

    model = model.eval()
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    weights = out / (CLASSIFIER_FILE if args.network == "classifier" else PERCEPTUAL_FILE)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights))
    model.load_state_dict({k: v.float() for k, v in state.items()})  # measure what ships (fp16 weights)
    with torch.no_grad():
        test_acc = (model(data.test_images).argmax(1) == data.test_labels).float().mean().item()
    if args.network == "perceptual":
        metrics = {"test_accuracy": test_acc, "epochs": args.epochs, "seed": args.seed,
                   "feature_dim": int(model.features(data.test_images[:1]).shape[1])}
        weights.with_name("metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        log.info("perceptual network: test accuracy %.4f", test_acc)
        return
    with torch.no_grad():
        test_stats = FeatureStats.from_features(model.features(data.test_images))
        train_stats = FeatureStats.from_features(model.features(data.train_images[:10000]))
    test_stats.save(out / REFERENCE_STATS_FILE)
    floor = frechet_distance(train_stats, test_stats)
    metrics = {"test_accuracy": test_acc, "fd_real_vs_real_train10k_vs_test": floor, "epochs": args.epochs,
               "feature_dim": MnistClassifier.num_features}
    (out / CLASSIFIER_FILE).with_name("metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log.info("test accuracy %.4f, real-vs-real FD %.4f", test_acc, floor)


if __name__ == "__main__":
    main()
