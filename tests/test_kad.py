"""The kernel distance (KAD): unbiased MMD² with a Gaussian kernel, against the Fréchet distance's bias."""

import numpy as np
import pytest

from housebox.evaluate.music import frechet_distance, kernel_distance


def gaussian(rng, n, shift=0.0, dims=6):
    return rng.normal(size=(n, dims)) + shift


def test_same_distribution_scores_about_zero_and_a_shift_grows_it():
    rng = np.random.default_rng(0)
    reference = gaussian(rng, 300)
    same = kernel_distance(gaussian(rng, 300), reference)
    shifted = [kernel_distance(gaussian(rng, 300, shift), reference) for shift in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.01
    assert 0.01 < shifted[0] < shifted[1] < shifted[2]


def test_symmetric_for_a_given_scale_and_unequal_sizes():
    rng = np.random.default_rng(1)
    a, b = gaussian(rng, 40), gaussian(rng, 70, shift=0.3)
    scale = np.concatenate([a, b]).std(axis=0)
    assert kernel_distance(a, b, scale) == pytest.approx(kernel_distance(b, a, scale), abs=1e-12)
    assert kernel_distance(a, b, scale) > 0.01


def test_features_are_standardised_by_the_reference():
    """Units do not matter: one feature in thousands weighs as much as the others."""
    rng = np.random.default_rng(2)
    a, b = gaussian(rng, 50, shift=0.5), gaussian(rng, 60)
    units = np.array([1000.0, 1, 1, 0.001, 1, 1])
    assert kernel_distance(a * units, b * units) == pytest.approx(kernel_distance(a, b), rel=1e-9)


def test_unbiased_on_small_sets_where_frechet_is_not():
    """Over many draws of 20 vectors a side from one distribution the kernel distance averages about 0;
    the Fréchet distance of the same draws averages more than the true distance of a real 0.5 shift."""
    rng = np.random.default_rng(3)
    draws = [(gaussian(rng, 20), gaussian(rng, 20)) for _ in range(200)]
    kad = np.array([kernel_distance(a, b) for a, b in draws])
    frechet = np.mean([frechet_distance(a, b) for a, b in draws])
    kad_shifted = np.mean([kernel_distance(a + 0.5, b) for a, b in draws])
    assert abs(kad.mean()) < 0.1 * kad_shifted
    assert abs(kad.mean()) < 4 * kad.std() / np.sqrt(len(kad))
    assert frechet > 0.5**2 * 6  # the Fréchet distance between N(0, I) and N(0.5, I) in 6 dimensions


def test_needs_two_vectors_a_side():
    with pytest.raises(ValueError, match="at least two"):
        kernel_distance(np.zeros((1, 3)), np.ones((5, 3)))
