"""Trainable-parameter groups against the reference's requires_grad lists
(the KP method's transfer stage = their stage BN, fine-tuning = FT)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgt_jax.convert import keymap
from cgt_jax.models import biggan
from cgt_jax.models import kp
from cgt_jax.transfer import groups
from cgt_jax.transfer import methods
from tests import reference_cases as rc

# The reference's stage names -> the KP method's stages.
REFERENCE_STAGES = {'bn': 'transfer', 'ft': 'finetune'}


def kp_groups(stage, update_prior=True):
  method = methods.KnowledgePropagation('kp', '', update_prior=update_prior)
  return method.generator_groups(REFERENCE_STAGES[stage])


def trained_torch_names(params, stage, **kwargs):
  mask = traverse_util.flatten_dict(
      groups.generator_mask(params, kp_groups(stage, **kwargs)))
  return sorted(
      keymap.torch_key('params', path) for path, train in mask.items() if train)


@pytest.mark.parametrize('name', rc.CGT_CASES)
@pytest.mark.parametrize('stage,filename', [('bn', 'trainable_BN.json'),
                                            ('ft', 'trainable_FT.json')])
def test_stage_masks_equal_reference_lists(name, stage, filename):
  case = rc.load(name)
  expected = case.json(filename)
  assert trained_torch_names(case.g_variables['params'], stage) == expected
  toggle = case.meta['toggle']
  flat = traverse_util.flatten_dict(
      groups.generator_mask(case.g_variables['params'], kp_groups(stage)))
  params = traverse_util.flatten_dict(case.g_variables['params'])
  scalars = sum(np.size(params[k]) for k, train in flat.items() if train)
  assert scalars == toggle[f'n_scalars_{stage.upper()}']


def test_frozen_prior_ablation_freezes_exactly_the_prior():
  case = rc.load('cgt128')
  updatable = set(trained_torch_names(case.g_variables['params'], 'bn'))
  frozen = set(
      trained_torch_names(case.g_variables['params'], 'bn', update_prior=False))
  removed = updatable - frozen
  assert frozen < updatable
  assert len(removed) == 20 and all('prev_knowledge' in k for k in removed)


def test_pretrain_trains_every_source_parameter():
  case = rc.load('biggan128')
  mask = groups.generator_mask(case.g_variables['params'], groups.SOURCE)
  assert all(jax.tree_util.tree_leaves(mask))


def ablation_params():
  g = biggan.Generator(
      resolution=32,
      num_classes=10,
      num_new_classes=4,
      ch=16,
      new_classes=kp.KPOptions(use_residuals=False, shared_similarity=True))
  return rc.abstract_variables(g, jnp.zeros((2, 128)), jnp.zeros(
      (2,), jnp.int32))['params']


@pytest.mark.parametrize('source', list(rc.CASES) + ['ablation'])
def test_every_parameter_is_in_exactly_one_group(source):
  params = (
      ablation_params()
      if source == 'ablation' else rc.load(source).g_variables['params'])
  found = {
      groups.group_of(p) for p in traverse_util.flatten_dict(params, sep='/')
  }
  assert found <= groups.SOURCE | groups.KNOWLEDGE_PROPAGATION


def test_unclaimed_parameter_is_an_error():
  params = {'block_0': {'new_layer': {'kernel': np.zeros(3)}}}
  with pytest.raises(
      ValueError, match=r"'block_0/new_layer/kernel' matches no "
      'group'):
    groups.generator_mask(params, groups.KNOWLEDGE_PROPAGATION)
  with pytest.raises(
      ValueError, match=r"unknown generator groups \['priors'\]"):
    groups.generator_mask(
        rc.load('cgt32').g_variables['params'], frozenset({'priors'}))
