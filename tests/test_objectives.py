"""Distances of the learning objective: the range-aware teacher target of pixel models."""

import torch

from s4s.learning.objectives import make_distance, range_aware, range_target


def test_range_target_is_the_nearest_value_that_displays_as_the_teacher():
    x = torch.tensor([[0.3, 1.4, 0.7, -1.6, -0.2, 2.0]])
    y = torch.tensor([[0.1, 1.2, 1.5, -1.1, -1.3, 0.5]])
    # inside: the teacher; teacher above 1: max(x, 1); teacher below -1: min(x, -1)
    assert torch.equal(range_target(x, y, -1.0, 1.0), torch.tensor([[0.1, 1.4, 1.0, -1.6, -1.0, 0.5]]))


def test_range_aware_l2_bounds_the_clamped_error_and_equals_it_inside_the_range():
    gen = torch.Generator().manual_seed(0)
    x, y = 2 * torch.randn(64, 3, 8, 8, generator=gen), 2 * torch.randn(64, 3, 8, 8, generator=gen)
    aware = range_aware(make_distance("l2"), (-1.0, 1.0))
    clamped = (x.clamp(-1, 1) - y.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    assert bool((aware(x, y) >= clamped - 1e-6).all())
    inside = x.clamp(-1, 1)  # a student in range: exactly the clamped error
    torch.testing.assert_close(aware(inside, y), (inside - y.clamp(-1, 1)).pow(2).flatten(1).mean(1))
    # a student outside the range while the teacher is inside pays its raw distance, more than the clamped one
    out, ref = torch.full((1, 4), 1.8), torch.full((1, 4), 0.5)
    torch.testing.assert_close(aware(out, ref), torch.tensor([1.3 ** 2]))


def test_range_aware_gradient_ignores_values_beyond_the_same_edge():
    x = torch.tensor([[1.5, 0.2, -1.4, 1.2]], requires_grad=True)
    y = torch.tensor([[1.9, 0.0, 0.0, 3.0]])
    range_aware(make_distance("l2"), (-1.0, 1.0))(x, y).sum().backward()
    # past the same edge as the teacher (values 0 and 3): nothing to learn; elsewhere 2 (x - target) / 4
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.1, -0.7, 0.0]]))
