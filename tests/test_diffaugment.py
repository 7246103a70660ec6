"""DiffAugment (`training.diffaugment`): each operation against a hand
computation for the same draws, gradients through it, and exact resume of
a run that uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_jax.models import model_io
from cgt_jax.training import diffaugment
from cgt_jax.training import loop
from cgt_jax.transfer import stages
from tests.test_train import flat
from tests.test_train import interrupt_at
from tests.test_train import tiny_config

KEY = jax.random.key(3)


def _images(batch=4, size=8):
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def test_color_is_brightness_then_saturation_then_contrast():
  x = _images()
  draws = np.asarray(jax.random.uniform(KEY, (3, 4, 1, 1, 1)))
  expected = x + (draws[0] - 0.5)
  mean = expected.mean(axis=3, keepdims=True)
  expected = (expected - mean) * (2 * draws[1]) + mean
  mean = expected.mean(axis=(1, 2, 3), keepdims=True)
  expected = (expected - mean) * (draws[2] + 0.5) + mean
  np.testing.assert_allclose(
      diffaugment.color(x, KEY), expected, rtol=1e-5, atol=1e-6)


def test_translation_shifts_by_at_most_an_eighth_and_fills_zeros():
  x = _images(batch=16, size=16)
  key_y, key_x = jax.random.split(KEY)
  dy = np.asarray(jax.random.randint(key_y, (16,), -2, 3))
  dx = np.asarray(jax.random.randint(key_x, (16,), -2, 3))
  expected = np.zeros_like(x)
  for b in range(16):
    for i in range(16):
      for j in range(16):
        if 0 <= i + dy[b] < 16 and 0 <= j + dx[b] < 16:
          expected[b, i, j] = x[b, i + dy[b], j + dx[b]]
  got = np.asarray(diffaugment.translation(x, KEY))
  np.testing.assert_array_equal(got, expected)
  assert set(np.abs(dy)) | set(np.abs(dx)) <= {0, 1, 2}  # 16 / 8 = 2
  assert (got == 0).any()  # some sample was shifted: zeros came in


def test_cutout_zeroes_one_square_of_half_the_side():
  x = _images(batch=8, size=8) + 2  # no pixel is 0 before the cutout
  key_y, key_x = jax.random.split(KEY)
  centre_y = np.asarray(jax.random.randint(key_y, (8,), 0, 9))
  centre_x = np.asarray(jax.random.randint(key_x, (8,), 0, 9))
  expected = x.copy()
  for b in range(8):
    top, left = centre_y[b] - 2, centre_x[b] - 2
    expected[b, max(top, 0):max(top + 4, 0), max(left, 0):max(left + 4, 0)] = 0
  got = np.asarray(diffaugment.cutout(x, KEY))
  np.testing.assert_array_equal(got, expected)
  assert ((got == 0).sum(axis=(1, 2, 3)) <= 4 * 4 * 3).all()


def test_gradients_flow_through_every_operation():
  policy = diffaugment.Policy.parse('color,translation,cutout')
  x = jnp.asarray(_images())
  grad = jax.grad(lambda images: jnp.sum(policy(images, KEY)**2))(x)
  assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
  # Without colour (whose means couple every pixel), pixels cut out or
  # shifted away get no gradient, the others do.
  spatial = diffaugment.Policy.parse('translation,cutout')
  grad = jax.grad(lambda images: jnp.sum(spatial(images, KEY)**2))(x)
  assert 0 < (np.asarray(grad) != 0).mean() < 1


def test_policy_parsing():
  assert diffaugment.Policy.parse('') is None
  assert diffaugment.Policy.parse('color, cutout').operations == ('color',
                                                                  'cutout')
  config = tiny_config()
  config.augment = 'color,flip'
  with pytest.raises(
      stages.ConfigError, match=r"unknown operations \['flip'\]"):
    stages.resolve(config)


def test_a_run_with_diffaugment_resumes_exactly_and_differs_from_one_without(
    tmp_path, monkeypatch, random_source):
  config = tiny_config(transfer=3)
  config.stages = ('transfer',)
  config.source_checkpoint = str(random_source)
  config.augment = 'color,translation,cutout'
  whole = loop.train_and_evaluate(config, tmp_path / 'whole')
  with monkeypatch.context() as patch:
    interrupt_at(patch, 1)
    with pytest.raises(loop.Preempted):
      loop.train_and_evaluate(config, tmp_path / 'resumed')
  resumed = loop.train_and_evaluate(config, tmp_path / 'resumed')
  expected = flat(model_io.load(whole)[2])
  actual = flat(model_io.load(resumed)[2])
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)
  config.augment = ''
  plain = flat(
      model_io.load(loop.train_and_evaluate(config, tmp_path / 'plain'))[2])
  assert any(not np.array_equal(plain[k], v) for k, v in expected.items())
