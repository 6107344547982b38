import math

import pytest

from training.schedule import cosine_schedule_with_warmup, total_training_steps


def test_warmup_is_linear_from_zero():
    assert cosine_schedule_with_warmup(0, 1e-3, 100, 1000) == 0.0
    assert cosine_schedule_with_warmup(25, 1e-3, 100, 1000) == pytest.approx(2.5e-4)
    assert cosine_schedule_with_warmup(100, 1e-3, 100, 1000) == pytest.approx(1e-3)


def test_cosine_reaches_min_ratio_at_the_end():
    # halfway through the decay, cos(pi/2) = 0 -> midpoint between base and base*min_ratio
    assert cosine_schedule_with_warmup(550, 1.0, 100, 1000, min_ratio=0.1) == pytest.approx(0.55)
    assert cosine_schedule_with_warmup(1000, 1.0, 100, 1000, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine_schedule_with_warmup(325, 2.0, 100, 1000) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_min_ratio_one_keeps_lr_constant_after_warmup():
    assert all(cosine_schedule_with_warmup(s, 3e-4, 10, 500, min_ratio=1.0) == pytest.approx(3e-4) for s in range(10, 500, 37))


def test_total_steps_is_epochs_times_examples_over_batch():
    assert total_training_steps(epochs=10, total_groups=1000, mean_puzzle_examples=1.0, global_batch_size=100) == 100
    assert total_training_steps(epochs=3, total_groups=400, mean_puzzle_examples=2.5, global_batch_size=768) == 3
