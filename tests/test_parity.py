"""Numerical parity with the authors' PyTorch code on the four fixture cases.

Tolerance: 1e-4 relative to each array's scale (float32 rounding of the
reference itself is ~1e-6, fixtures README sec. 9).
"""

import numpy as np
import pytest

from cgt_jax.training import losses
from cgt_jax.convert import keymap
from cgt_jax.models import kp
from tests import reference_cases as rc

TOLERANCE = 1e-4
MUTABLE = ['batch_stats', 'sn']


def assert_close(actual, expected, tolerance=TOLERANCE):
  error = rc.max_relative_error(actual, expected)
  assert error < tolerance, f'relative error {error:.2e}'


def train_forward(case):
  return case.generator.apply(
      case.g_variables, case.z, case.y, train=True, mutable=MUTABLE)


@pytest.fixture(params=rc.CASES)
def case(request):
  return rc.load(request.param)


def test_generator_eval(case):
  images = case.generator.apply(case.g_variables, case.z, case.y)
  assert_close(rc.nchw(images), case.io['g_eval'])


def test_generator_train(case):
  images, _ = train_forward(case)
  assert_close(rc.nchw(images), case.io['g_train'])


def test_generator_state_after_train_forward(case):
  _, state = train_forward(case)
  after = keymap.to_state_dict({**case.g_variables, **state})
  expected = case.state_dict('G_after_train_forward.pth')
  compared = 0
  for key, value in expected.items():
    if key.endswith('.sv0'):  # logging only, not part of the forward
      continue
    np.testing.assert_allclose(
        after[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    compared += 1
  # Every u vector and running statistic of the reference was compared.
  assert compared == sum(1 for k in expected if not k.endswith('.sv0'))


def test_generator_eval_after_train_uses_new_state(case):
  _, state = train_forward(case)
  images = case.generator.apply({**case.g_variables, **state}, case.z, case.y)
  assert_close(rc.nchw(images)[:1], case.io['g_eval_after_train0'])


@pytest.mark.parametrize('name', ['biggan128', 'cgt128'])
def test_attention_probes(name):
  case = rc.load(name)
  g_vars = rc.with_attention_gamma(case.g_variables, 0.5)
  images = case.generator.apply(g_vars, case.z, case.y)
  assert_close(rc.nchw(images)[:1], case.io['g_eval_gamma0'])
  d_vars = rc.with_attention_gamma(case.d_variables, 0.5)
  logits = case.discriminator.apply(d_vars, case.x_real, case.y_d)
  assert_close(logits, case.io['d_eval_gamma'])


def test_discriminator_train_and_eval(case):
  d = case.discriminator
  logits, state = d.apply(
      case.d_variables, case.x_real, case.y_d, train=True, mutable=['sn'])
  assert_close(logits, case.io['d_out'])
  assert_close(
      d.apply(case.d_variables, case.x_real, case.y_d), case.io['d_eval'])
  after_vars = {**case.d_variables, **state}
  assert_close(
      d.apply(after_vars, case.x_real, case.y_d), case.io['d_eval_after_train'])
  after = keymap.to_state_dict(after_vars)
  for key, value in case.state_dict('D_after_train_forward.pth').items():
    if not key.endswith('.sv0'):
      np.testing.assert_allclose(
          after[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_discriminator_on_fakes(case):
  d = case.discriminator
  fakes_train = case.io['g_train'].transpose(0, 2, 3, 1)
  fakes_eval = case.io['g_eval'].transpose(0, 2, 3, 1)
  logits, _ = d.apply(
      case.d_variables, fakes_train, case.y, train=True, mutable=['sn'])
  assert_close(logits, case.io['d_fake_train'])
  assert_close(
      d.apply(case.d_variables, fakes_eval, case.y), case.io['d_fake_eval'])


@pytest.mark.parametrize('name', rc.CGT_CASES)
def test_regularisers_and_generator_loss(name):
  case = rc.load(name)
  reg = case.json('reg.json')
  l1, l2 = kp.regularizers(case.g_variables['params'])
  assert_close(l1, reg['comb_l1']['value_float64_recomputed'], 1e-5)
  assert_close(l2, reg['res_l2']['value_float64_recomputed'], 1e-5)
  scales = reg['g_total_loss']['lambdas']
  for mode, train in (('train_modes', True), ('eval_modes', False)):
    images = case.generator.apply(
        case.g_variables,
        case.z,
        case.y,
        train=train,
        mutable=MUTABLE if train else False)
    images = images[0] if train else images
    d_fake = case.discriminator.apply(
        case.d_variables,
        images,
        case.y,
        train=train,
        mutable=['sn'] if train else False)
    d_fake = d_fake[0] if train else d_fake
    loss = losses.KnowledgePropagationLosses(scales['comb_l1_scale'],
                                             scales['res_l2_scale'])
    total, terms = loss.generator(d_fake, case.g_variables['params'])
    assert_close(terms['g_hinge'], reg['g_hinge'][mode])
    assert_close(total, reg['g_total_loss'][mode])
