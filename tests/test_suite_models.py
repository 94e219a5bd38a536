"""The committed generalization-suite models (benchmarks/suite/, scripts/train_suite_model.py) load as
their cards say, and the data generators draw what the script documents."""

import json
import sys
from pathlib import Path

import pytest
import torch

import s4s

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from train_suite_model import SUITE, shapes, textures  # noqa: E402

COMMITTED = sorted(p.name for p in (ROOT / "benchmarks" / "suite").iterdir() if p.is_dir())


def test_every_suite_model_is_committed():
    assert set(COMMITTED) == set(SUITE)


@pytest.mark.parametrize("name", COMMITTED)
def test_a_suite_model_loads_as_its_spec_says(name):
    spec, folder = SUITE[name], ROOT / "benchmarks" / "suite" / name
    info = json.loads((folder / "training.json").read_text())
    assert info["prediction"] == spec["prediction"] and (folder / "README.md").is_file()
    model = s4s.load_model(folder)
    assert model.sample_shape == (spec["channels"], spec["size"], spec["size"]) and model.num_classes == spec["classes"]
    assert model.data is None and model.data_range == (-1.0, 1.0) and model.denoiser.clip_range is None
    assert isinstance(model.schedule, s4s.Flow) == (spec["prediction"] == "flow_prediction")
    x = model.schedule.prior_noise((2, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = model.denoiser(x, model.schedule.t_max * 0.5, model.labels(2, guided=False))
    assert d.shape == x.shape and bool(torch.isfinite(d).all())


def test_the_generators_draw_images_in_range():
    g = torch.Generator().manual_seed(0)
    img, kind = shapes(64, 16, g)
    assert img.shape == (64, 3, 16, 16) and set(kind.tolist()) == {0, 1, 2}
    assert img.min() >= -1 and img.max() <= 1
    # a shape image has exactly two colours: background and shape
    assert all(len(torch.unique(im.reshape(3, -1), dim=1).T) == 2 for im in img[:8])
    tex = textures(8, 32, 3, g)
    assert tex.shape == (8, 3, 32, 32) and tex.min() >= -1 and tex.max() <= 1 and tex.std() > 0.1
