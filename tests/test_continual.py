"""Continual class extension: an extended generator extended again.

* Every class learned before (source and added) renders bitwise the same
  images in eval mode before and after an extension, over two successive
  extensions, for kp and bsa, CIFAR and ImageNet forms, from a plain
  source and from converted cGANTransfer checkpoints.
* The main job extends a transferred model again: the earlier classes are
  bitwise the same after real training steps, the labels follow on.
* Label bookkeeping mistakes are one-line errors naming the fix.
* Parameters grow linearly with each extension.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from cgt_jax.analysis import similarity
from cgt_jax.experiments import continual
from cgt_jax.analysis import visualize
from cgt_jax.models import biggan
from cgt_jax.models import extensions
from cgt_jax.models import minegan
from cgt_jax.models import model_io
from cgt_jax.transfer import groups
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages
from tests import reference_cases as rc
from tests.test_train import SOURCE
from tests.test_train import TARGET
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

METHODS = {
    'kp': methods.KnowledgePropagation('kp', ''),
    'bsa': methods.FreeVectors('bsa', ''),
}
# Two more synthetic classes for the second extension of the tiny config.
LATER = ['blue_disc', 'red_cross']


def _random_source(imagenet: bool) -> methods.Models:
  """A plain BigGAN of 3 classes with random weights (CIFAR or ImageNet
  form: per-class BN tables, or shared embedding and hierarchical z)."""
  generator = biggan.Generator(
      resolution=32,
      num_classes=3,
      ch=2,
      dim_z=16,
      shared_dim=8 if imagenet else 0,
      hier=imagenet)
  discriminator = biggan.Discriminator(resolution=32, num_classes=3, ch=2)
  g_vars, d_vars = methods.fresh_variables(generator, discriminator, 0)
  return methods.Models(generator, discriminator, rc.random_variables(g_vars),
                        d_vars)


def _drawn_fresh_variables(generator, discriminator, seed):
  """Host-drawn random variables for both networks: what
  `methods.fresh_variables` gives, without compiling every extended
  model's `init` (most of this file's time; the values of new layers do
  not matter here)."""
  labels = jnp.full((1,), generator.num_labels - 1, jnp.int32)
  res = discriminator.resolution
  g_vars = rc.abstract_variables(generator, jnp.zeros((1, generator.dim_z)),
                                 labels)
  d_vars = rc.abstract_variables(discriminator, jnp.zeros((1, res, res, 3)),
                                 labels)
  return rc.random_variables(g_vars, seed), rc.random_variables(d_vars, seed)


@pytest.fixture(scope='module', autouse=True)
def drawn_fresh_variables():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(methods, 'fresh_variables', _drawn_fresh_variables)
    yield


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """`name -> model directory` of the cGANTransfer fixtures, converted."""
  tool = rc.load_tool('convert_biggan')
  out = {}
  for name in ('cgt32', 'cgt128'):
    out[name] = tmp_path_factory.mktemp(name) / 'model'
    assert tool.main([
        '--generator',
        str(rc.FIXTURES / name / 'G.pth'), '--discriminator',
        str(rc.FIXTURES / name / 'D.pth'), '--out',
        str(out[name])
    ]) == 0
  return out


def _loaded(directory) -> methods.Models:
  generator, discriminator, variables = model_io.load(directory)
  return methods.Models(generator, discriminator, variables['generator'],
                        variables['discriminator'])


def _extend(models, method, num_new: int) -> methods.Models:
  context = methods.BuildContext(
      num_new=num_new, seed=0, dtype=jnp.float32, fresh=None)
  return method.models(models, context)


def _trained(models, method, seed: int) -> methods.Models:
  """`models` as its transfer stage could leave them: every parameter the
  stage trains, every BN running statistic and the SN vector of every
  layer that trains replaced by random values."""
  rng = np.random.default_rng(seed)
  g = models.g_variables
  params = traverse_util.flatten_dict(g['params'], sep='/')
  mask = traverse_util.flatten_dict(
      groups.generator_mask(g['params'], method.generator_groups('transfer')),
      sep='/')
  frozen_sn = groups.frozen_sn_layers(g, mask)
  noise = lambda v, scale: v + scale * rng.standard_normal(np.shape(v)).astype(
      np.float32)
  changed = {
      'params': {
          k: noise(v, 0.1) if mask[k] else v for k, v in params.items()
      },
      'batch_stats': {
          k: np.abs(noise(v, 0.5)) for k, v in traverse_util.flatten_dict(
              g['batch_stats'], sep='/').items()
      },
      'sn': {
          k: v if k.rsplit('/', 1)[0] in frozen_sn else noise(v, 0.5)
          for k, v in traverse_util.flatten_dict(g['sn'], sep='/').items()
      },
  }
  g = dict(
      g, **{
          c: traverse_util.unflatten_dict(t, sep='/')
          for c, t in changed.items()
      })
  return methods.Models(models.generator, models.discriminator, g,
                        models.d_variables)


@functools.lru_cache(maxsize=None)
def _compiled_forward(generator):
  return jax.jit(generator.apply)


def _render(models, labels, seed=3, jit=True) -> np.ndarray:
  """Eval-mode images of `labels` (one per label, fixed z)."""
  generator = models.generator
  z = jax.random.normal(jax.random.key(seed), (len(labels), generator.dim_z))
  apply = _compiled_forward(generator) if jit else generator.apply
  return np.asarray(apply(models.g_variables, z, jnp.asarray(labels)))


@pytest.mark.parametrize('start, method', [
    ('cifar', 'kp'),
    ('cifar', 'bsa'),
    ('imagenet', 'kp'),
    ('imagenet', 'bsa'),
    ('cgt32', 'bsa'),
    ('cgt128', 'kp'),
])
def test_earlier_classes_render_bitwise_the_same_over_two_extensions(
    start, method, converted):
  """From a plain source (two extensions: source -> +2 -> +3) or from a
  converted cGANTransfer model, itself a first extension (-> +2 -> +3;
  its KP layers then frozen under BSA's, or under the next KP's)."""
  method = METHODS[method]
  if start in converted:
    models = _loaded(converted[start])
  else:
    models = _trained(
        _extend(_random_source(start == 'imagenet'), method, 2), method, 1)
  # The 128 px model is extended once: compiling its forwards is most of
  # this file's time, and the other cases chain two extensions.
  for step, num_new in enumerate((2,) if start == 'cgt128' else (2, 3), 2):
    known = np.arange(models.generator.num_labels)
    before = _render(models, known)
    extended = _extend(models, method, num_new)
    assert extended.generator.first_new_label == len(known)
    assert len(
        extended.generator.extensions) == len(models.generator.extensions) + 1
    np.testing.assert_array_equal(_render(extended, known), before)
    models = _trained(extended, method, step)
    np.testing.assert_array_equal(_render(models, known), before)
    # The newest classes are drawn by their own layers.
    newest = np.arange(len(known), models.generator.num_labels)
    assert not np.array_equal(
        _render(models, newest), _render(models, newest - num_new))


def test_learned_classes_are_rows_of_the_next_prior():
  """CIFAR form: right after an extension, the newest class that takes row
  k of the prior alone (the pseudo-class) draws what class k drew, for an
  added class k as for a source class."""
  method = METHODS['kp']
  first = _trained(_extend(_random_source(False), method, 2), method, 1)
  second = _extend(first, method, 2)
  assert second.generator.first_new_label == 5
  for k in (1, 3, 4):  # a source class, both added classes
    variables = similarity.pseudo_class_variables(second.g_variables, k)
    z = jax.random.normal(jax.random.key(0), (2, 16))
    pseudo = jax.jit(second.generator.apply)(variables, z, jnp.full((2,), 5))
    # Source class k draws with its frozen statistics, the newest classes
    # with the running ones: compare the added classes, drawn alike.
    if k >= 3:
      drawn = jax.jit(first.generator.apply)(first.g_variables, z,
                                             jnp.full((2,), k))
      np.testing.assert_allclose(pseudo, drawn, atol=2e-5)
  scores = similarity.similarity_scores(second.generator, second.g_variables)
  assert all(
      s['gamma'].shape == (2, 5) for s in scores.values())  # 3 source + 2
  figure = visualize.similarity_heatmaps(
      scores, ['new_a', 'new_b'], ['s0', 's1', 's2', 'a0', 'a1'], first_added=3)
  axes = figure.axes[0]
  assert [line.get_xdata()[0] for line in axes.get_lines()] == [2.5]
  styles = [t.get_fontstyle() for t in axes.get_xticklabels()]
  assert styles == ['normal'] * 3 + ['italic'] * 2


@pytest.mark.parametrize('method', sorted(METHODS))
def test_parameters_grow_linearly_with_each_extension(method):
  """bsa adds the same count each time; kp's prior and similarity have a
  row or column per known class: each extension adds an affine function of
  the classes known before it, whose second difference is 0."""
  form = METHODS[method]
  models = _random_source(False)
  counts = [_size(models.g_variables['params'])]
  for _ in range(4):
    models = _extend(models, form, 2)
    counts.append(_size(models.g_variables['params']))
  added = np.diff(counts)
  channels = sum(  # C of every conditional BN (gamma and beta each)
      v.shape[-1]
      for k, v in traverse_util.flatten_dict(
          models.g_variables['params'], sep='/').items()
      if k.endswith('/gain/embedding'))
  if method == 'bsa':
    np.testing.assert_array_equal(added, 2 * (2 * channels))  # r per class
    return
  # Per BN layer and per gamma/beta, for K known and M = 2 new classes:
  # similarity M K + K, prior K C + C (CIFAR bias), residual M C.
  known = 3 + 2 * np.arange(4)
  layers = sum(1 for k in traverse_util.flatten_dict(
      models.g_variables['params'], sep='/') if k.endswith('/gain/embedding'))
  expected = 2 * (layers * (3 * known) + known * channels + 3 * channels)
  np.testing.assert_array_equal(added, expected)
  assert len(set(np.diff(added))) == 1


def _size(params) -> int:
  return sum(np.size(v) for v in jax.tree_util.tree_leaves(params))


# ----------------------------------------------------------------------------
# The main job, and its label bookkeeping
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def extended_once(tmp_path_factory):
  """A saved first extension (kp) of the tiny config's source classes by
  its 2 target classes, as training could leave it, recording its class
  names."""
  config = tiny_config()
  method = METHODS['kp']
  source = stages.fresh_models(config, len(SOURCE))
  models = _trained(_extend(source, method, len(TARGET)), method, 1)
  return model_io.save(
      tmp_path_factory.mktemp('extended') / 'model',
      model_io.module_arch(models.generator),
      models.g_variables,
      model_io.module_arch(models.discriminator),
      models.d_variables,
      classes=SOURCE + TARGET)


def _second_extension_config(extended_once, **changes):
  config = tiny_config()
  config.stages = ('transfer',)
  config.source_checkpoint = str(extended_once)
  config.data.source_classes = tuple(SOURCE + TARGET)
  config.data.target_classes = tuple(LATER)
  for key, value in changes.items():
    config.data[key] = value
  return config


def test_the_continual_tool_chains_extensions_and_compares(
    random_source, eval_cache, tmp_path):
  """Two extensions of one class each by the main job (two real training
  steps each), then both at once; one evaluator scores every model."""
  config = tiny_config()
  config.source_checkpoint = str(random_source)
  config.data.target_classes = tuple(TARGET)
  config.continual_steps = (1, 1)  # frozen_sn 'auto': 'keep' in step 2
  config.eval.cache_dir = str(eval_cache)
  text = continual.run(config, tmp_path)
  step_1, step_2 = (
      _loaded(tmp_path / f'step_{k}' / 'transfer' / 'model') for k in (1, 2))
  # Real training: every class known before step 2 is bitwise the same
  # ('keep': the frozen layers' SN vectors stay) ...
  known = np.arange(len(SOURCE) + 1)
  np.testing.assert_array_equal(_render(step_2, known), _render(step_1, known))
  # ... and only the newest layers, the running statistics and the newest
  # layers' SN vectors changed.
  before, after = _flat(step_1.g_variables), _flat(step_2.g_variables)
  changed = {
      k for k, v in after.items()
      if k in before and not np.array_equal(v, before[k])
  }
  assert changed and all(
      '/kp/' in k or k.startswith(('batch_stats/', 'sn/')) for k in changed)
  assert not any(
      'extension' in k or k.startswith(('sn/linear', 'sn/block_0/conv'))
      for k in changed)
  arch = model_io.load_architecture(tmp_path / 'step_2' / 'transfer' / 'model')
  assert arch['classes'] == SOURCE + TARGET
  assert [e['num_classes'] for e in arch['generator']['extensions']] == [1]
  summary = json.loads(
      (tmp_path / 'step_2' / 'transfer' / 'summary.json').read_text())
  assert summary['first_label'] == len(SOURCE) + 1
  # The table: each model on the class groups it can draw, one evaluator.
  table, borrowing = text.split('\n\n')
  rows = [line.split(' | ')[:2] for line in table.splitlines()[2:]]
  assert rows == [['| step 1',
                   'step 1 classes'], ['| step 2', 'step 1 classes'],
                  ['| step 2', 'step 2 classes'],
                  ['| step 2', 'all new classes'],
                  ['| one-shot', 'step 1 classes'],
                  ['| one-shot', 'step 2 classes'],
                  ['| one-shot', 'all new classes']]
  # What step 2's class borrows from: its 3 strongest of the 5 known.
  assert borrowing.startswith(f'- {TARGET[1]} borrows most from ')
  assert len(borrowing.split(', ')) == 3
  results = json.loads((tmp_path / 'continual.json').read_text())['results']
  # Bitwise-same samples of step 1's class: the same scores.
  assert results['step 1']['step 1 classes'] == results['step 2'][
      'step 1 classes']
  for picture in ('continual_samples.png', 'continual_similarity.png'):
    assert (tmp_path / picture).stat().st_size > 0


def _flat(variables):
  return traverse_util.flatten_dict(jax.device_get(variables), sep='/')


@pytest.mark.parametrize('changes, message', [
    (dict(source_classes=tuple(SOURCE)),
     r'has 6 classes but the config names 4 source classes: make '
     r'config.data.source_classes match the classes of the model \(4 '
     r'source classes, then the 2 it learned, in label order\)'),
    (dict(source_classes=tuple(SOURCE + TARGET[::-1])),
     r"source_classes\[4\] is 'green_square' but label 4 of .* is "
     r"'red_disc': list the model's classes in label order"),
    (dict(source_classes=(), target_classes=(TARGET[0], LATER[0])),
     r"already has the classes \['red_disc'\]: remove them from "
     r'config.data.target_classes'),
])
def test_class_lists_that_disagree_with_the_model_are_one_line_errors(
    extended_once, changes, message):
  config = _second_extension_config(extended_once, **changes)
  with pytest.raises((stages.ConfigError, ValueError), match=message) as error:
    transfer_spec(config, extended_once)
  assert '\n' not in str(error.value)


def test_only_kp_and_bsa_extend_an_extended_model_again(extended_once):
  config = _second_extension_config(extended_once)
  config.method = 'transfergan'
  with pytest.raises(
      stages.ConfigError,
      match=r'already has 2 new classes: config.method=transfergan starts '
      r'from a plain BigGAN; extend it again with kp or bsa'):
    transfer_spec(config, extended_once)


def test_labels_outside_an_extended_model_are_one_line_errors():
  models = _extend(
      _trained(
          _extend(_random_source(False), METHODS['kp'], 2), METHODS['kp'], 1),
      METHODS['bsa'], 3)
  assert models.generator.num_labels == 8
  with pytest.raises(
      ValueError,
      match=r'label\(s\) \[8\] out of range: this '
      r'model accepts global labels 0..7') as error:
    _render(models, np.array([0, 8]), jit=False)
  assert '\n' not in str(error.value)
  miner = models.generator.clone(new_classes=minegan.Miners())
  with pytest.raises(
      ValueError,
      match='cannot be extended again: continual '
      r'extension takes knowledge propagation \(kp\) or BSA'):
    _render(methods.Models(miner, None, models.g_variables, None), [0])


def test_an_extended_architecture_round_trips_through_its_directory(
    extended_once, tmp_path):
  models = _extend(_loaded(extended_once), METHODS['bsa'], 2)
  arch = model_io.module_arch(models.generator)
  assert arch['extensions'] == [{
      'num_classes': 2,
      'new_classes': {
          'form': 'kp',
          'use_residuals': True,
          'shared_similarity': False
      }
  }]
  rebuilt = model_io.build_generator(json.loads(json.dumps(arch)))
  assert rebuilt == models.generator.clone(dtype=jnp.float32)
  assert extensions.index_of('block_0/bn1/kp_extension_1/prior_gamma/kernel')
  assert extensions.index_of('block_0/bn1/kp/prior_gamma/kernel') is None


def test_frozen_sn_keeps_by_default_only_when_extending_again():
  plain = _random_source(False).generator
  extended = _extend(
      _extend(_random_source(False), METHODS['kp'], 2), METHODS['kp'],
      2).generator
  config = tiny_config()
  assert not stages.keeps_frozen_sn(config, plain)  # 'auto'
  assert stages.keeps_frozen_sn(config, extended)
  config.frozen_sn = 'advance'  # the authors' code
  assert not stages.keeps_frozen_sn(config, extended)
  config.frozen_sn = 'keep'
  assert stages.keeps_frozen_sn(config, plain)
  config.frozen_sn = 'sometimes'
  with pytest.raises(
      stages.ConfigError,
      match=r"config.frozen_sn='sometimes' is not valid: use one of "
      r"\['auto', 'advance', 'keep'\]"):
    stages.resolve(config)


@pytest.mark.parametrize('steps', [(), (1,), (1, 0, 1), (3, 1)])
def test_a_step_split_that_does_not_add_up_is_a_one_line_error(steps):
  config = tiny_config()
  config.continual_steps = steps
  with pytest.raises(
      continual.ContinualError,
      match=r'must be positive class counts that add up to the 2 classes of '
      r'config.data.target_classes, e.g. \(4, 4\)'):
    continual.step_classes(config)
  config.continual_steps = (1, 1)
  assert continual.step_classes(config) == [TARGET[:1], TARGET[1:]]


def test_without_a_source_model_step_1_pretrains_one(random_source):
  config = tiny_config()
  config.stages = ('transfer',)
  config.continual_steps = (1, 1)
  config.method = 'kp_no_l1'  # a variant's switches apply once
  assert continual.resolved(config).transfer.similarity_l1 == 0
  run = continual._run_config(config, SOURCE, TARGET[:1], '')
  assert stages.resolve(run).stages == ('pretrain', 'transfer')
  run = continual._run_config(config, SOURCE, TARGET[:1], str(random_source))
  assert stages.resolve(run).stages == ('transfer',)
  config.transfer.num_steps = 0
  with pytest.raises(stages.ConfigError, match='num_steps=0 must be positive'):
    continual.resolved(config)
