"""Baselines and ablations: which parameters each method trains (against
hand-written lists), that the frozen ones stay bit-identical, where the new
classes start, and the one-command comparison."""

import copy
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from cgt_jax.data import pipeline
from cgt_jax.evaluation import comparison
from cgt_jax.evaluation import evaluator
from cgt_jax.experiments import compare
from cgt_jax.models import biggan
from cgt_jax.models import bsa
from cgt_jax.models import kp
from cgt_jax.models import layers
from cgt_jax.models import model_io
from cgt_jax.training import losses
from cgt_jax.training import state as state_lib
from cgt_jax.training import steps
from cgt_jax.transfer import methods
from cgt_jax.transfer import stages
from cgt_jax.transfer import surgery
from tests import reference_cases as rc
from tests.test_train import abstract_transfer_spec
from tests.test_train import tiny_config
from tests.test_train import transfer_spec

NUM_SOURCE, NUM_NEW = 4, 2
# The tiny 32 px generator: 3 blocks, 2 conditional BN layers each.
BN_LAYERS = [f'block_{i}/bn{j}' for i in range(3) for j in (1, 2)]
SIMILARITY = ('similarity_gamma/kernel', 'similarity_gamma/bias',
              'similarity_beta/kernel', 'similarity_beta/bias')
PRIOR = ('prior_gamma/kernel', 'prior_gamma/bias', 'prior_beta/kernel',
         'prior_beta/bias')
RESIDUAL = ('residual_gamma/kernel', 'residual_beta/kernel')
EVERYTHING = 'every parameter'


def per_layer(*names, module='kp'):
  return {f'{bn}/{module}/{name}' for bn in BN_LAYERS for name in names}


# What trains in G during the transfer stage, written out by hand.
EXPECTED_G = {
    'scratch': EVERYTHING,
    'transfergan': EVERYTHING,
    'freezed': EVERYTHING,
    'bsa': per_layer(*RESIDUAL, module='bsa'),
    'kp': per_layer(*SIMILARITY, *PRIOR, *RESIDUAL),
    'kp_frozen_prior_no_res': per_layer(*SIMILARITY),
    'kp_frozen_prior': per_layer(*SIMILARITY, *RESIDUAL),
    'kp_no_res': per_layer(*SIMILARITY, *PRIOR),
    'kp_shared_w_no_res': per_layer(*PRIOR) | {f'kp_{s}' for s in SIMILARITY},
    'kp_no_reg': per_layer(*SIMILARITY, *PRIOR, *RESIDUAL),
    'kp_no_l1': per_layer(*SIMILARITY, *PRIOR, *RESIDUAL),
    'kp_no_l2': per_layer(*SIMILARITY, *PRIOR, *RESIDUAL),
}
# Each method's transfer-stage losses: the KP variants add eq. 7's terms
# with (lambda_s, lambda_r); the baselines have no regulariser at all.
EXPECTED_LOSSES = {
    'kp': losses.KnowledgePropagationLosses(0.01, 0.01),
    'kp_no_reg': losses.KnowledgePropagationLosses(0.0, 0.0),
    'kp_no_l1': losses.KnowledgePropagationLosses(0.0, 0.01),
    'kp_no_l2': losses.KnowledgePropagationLosses(0.01, 0.0),
    'bsa': losses.Hinge(),
    'transfergan': losses.Hinge(),
    'scratch': losses.Hinge(),
}
FREEZED_FROZEN_D = ('block_0/', 'block_1/')  # method_options.frozen_d_blocks=2


@pytest.fixture(scope='module')
def source_dir(random_source):
  """A saved random 4-class source model (G and D)."""
  return random_source


def method_config(method, **options):
  config = tiny_config()
  config.method = method
  for key, value in options.items():
    config.method_options[key] = value
  return config


# The tests that only read a method's transfer stage run on one test worker,
# which builds each stage once.
_READS_SPECS = pytest.mark.xdist_group('method-specs')


@functools.lru_cache(maxsize=None)
def _transfer(method, source_dir, options):
  return transfer_spec(method_config(method, **dict(options)), source_dir)


def transfer(method, source_dir, **options):
  """`(plan, data, StageSpec)` of `method`'s transfer stage, built once per
  test process (the tests only read it)."""
  return _transfer(method, source_dir, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def structure(method, source_dir):
  """`method`'s transfer-stage spec with variable shapes only
  (`abstract_transfer_spec`): for the tests that read what trains."""
  return abstract_transfer_spec(method_config(method), source_dir)[2]


def trained_paths(mask):
  flat = traverse_util.flatten_dict(mask, sep='/')
  return {path for path, trains in flat.items() if trains}, set(flat)


@_READS_SPECS
@pytest.mark.parametrize('method', sorted(EXPECTED_G))
def test_trained_generator_parameters_match_the_written_list(
    method, source_dir):
  spec = structure(method, source_dir)
  trained, every = trained_paths(spec.g_trainable)
  expected = every if EXPECTED_G[method] == EVERYTHING else EXPECTED_G[method]
  assert trained == expected
  d_trained, d_every = trained_paths(spec.d_trainable)
  d_frozen = {
      p for p in d_every
      if method == 'freezed' and p.startswith(FREEZED_FROZEN_D)
  }
  assert d_frozen or method != 'freezed'
  assert d_trained == d_every - d_frozen
  if method in EXPECTED_LOSSES:
    assert spec.setup.losses == EXPECTED_LOSSES[method]


@_READS_SPECS
def test_each_method_starts_from_the_right_model(source_dir):
  scratch = structure('scratch', source_dir)
  assert scratch.generator.num_classes == NUM_NEW
  assert scratch.label_range == (0, NUM_NEW)
  extended = structure('transfergan', source_dir)
  assert extended.generator.num_classes == NUM_SOURCE + NUM_NEW
  assert extended.generator.num_new_classes == 0
  assert extended.label_range == (NUM_SOURCE, NUM_SOURCE + NUM_NEW)
  free = structure('bsa', source_dir)
  assert isinstance(free.generator.new_classes, bsa.FreeVectors)
  assert not any(
      'similarity' in p or 'prior' in p
      for p in traverse_util.flatten_dict(free.g_variables['params'], sep='/'))
  for spec in (extended, free):
    assert spec.discriminator.num_new_classes == NUM_NEW


# Source-class tables get no gradient from new-class batches.
_SOURCE_ONLY = re.compile(r'(^embed|/gain|/bias)/embedding$')


# scratch trains everything, as transfergan does: its masks are covered above.
@pytest.mark.parametrize('method,stage',
                         [('transfergan', 'transfer'), ('freezed', 'transfer'),
                          ('bsa', 'transfer'), ('kp', 'transfer'),
                          ('kp_frozen_prior_no_res', 'transfer'),
                          ('kp_finetune', 'finetune')])
def test_frozen_parameters_stay_bit_identical(method, stage, source_dir):
  config = method_config(method)
  config[stage].g_lr = config[stage].d_lr = 1e-3
  plan, data, spec = transfer_spec(config, source_dir)
  models = methods.Models(spec.generator, spec.discriminator, spec.g_variables,
                          spec.d_variables)
  # Fine-tuning starts from the transferred model (here untrained).
  g_mask, d_mask, setup = stages.training_setup(stage, plan, models,
                                                spec.label_range)
  state = state_lib.create(setup, models.g_variables, models.d_variables, 0)
  before = jax.device_get((state.g_params, state.d_params))
  sampler = pipeline.BatchSampler(data.target, setup.real_per_step, 0)
  step_fn = steps.make_train_step(setup)
  for step in range(2):
    images, labels = sampler.batch(step)  # the generator's labels
    state, _ = step_fn(
        state, {
            'image': jnp.asarray(images / 127.5 - 1, jnp.float32),
            'label': jnp.asarray(labels)
        })
  after = jax.device_get((state.g_params, state.d_params))
  frozen = 0
  for mask, old, new in zip((g_mask, d_mask), before, after):
    old = traverse_util.flatten_dict(old, sep='/')
    new = traverse_util.flatten_dict(new, sep='/')
    for path, trains in traverse_util.flatten_dict(mask, sep='/').items():
      if not trains:
        frozen += 1
        np.testing.assert_array_equal(new[path], old[path], err_msg=path)
      elif not (_SOURCE_ONLY.search(path) and stage == 'finetune' or
                path == 'embed/embedding'):
        assert not np.array_equal(new[path], old[path]), path
  assert bool(frozen) == (method != 'transfergan')  # it trains everything


@_READS_SPECS
def test_new_class_rows_start_at_the_source_mean(source_dir):
  _, _, models = transfer('transfergan', source_dir)
  _, _, source = model_io.load(source_dir)
  old = traverse_util.flatten_dict(source['generator']['params'], sep='/')
  new = traverse_util.flatten_dict(models.g_variables['params'], sep='/')
  tables = [k for k in old if k.endswith('/gain/embedding')]
  assert len(tables) == len(BN_LAYERS)
  for key in tables:
    np.testing.assert_array_equal(new[key][:NUM_SOURCE], old[key])
    np.testing.assert_allclose(
        new[key][NUM_SOURCE:],
        np.broadcast_to(old[key].mean(0), (NUM_NEW, old[key].shape[1])),
        rtol=1e-6)
  _, _, fresh = transfer('transfergan', source_dir, new_class_init='fresh')
  key = tables[0]
  fresh_rows = traverse_util.flatten_dict(
      fresh.g_variables['params'], sep='/')[key][NUM_SOURCE:]
  assert not np.allclose(fresh_rows, old[key].mean(0))


@_READS_SPECS
def test_bsa_mean_start_draws_what_a_mean_class_row_draws(source_dir):
  """BSA (free class vectors at the source mean) and a plain BigGAN whose
  new rows are the mean of the source rows are the same generator for the
  new classes at the start."""
  _, _, free = transfer('bsa', source_dir)
  _, _, extended = transfer('transfergan', source_dir)
  z = jax.random.normal(jax.random.key(1), (4, free.generator.dim_z))
  labels = jnp.array([4, 5, 4, 5])
  images_bsa = steps.generate(free.generator, free.g_variables, z, labels)
  images_ext = steps.generate(extended.generator, extended.g_variables, z,
                              labels)
  np.testing.assert_allclose(images_bsa, images_ext, atol=2e-6)
  _, _, identity = transfer('bsa', source_dir, bsa_start='identity')
  residuals = [
      v for k, v in traverse_util.flatten_dict(
          identity.g_variables['params'], sep='/').items() if 'residual' in k
  ]
  assert residuals and not any(np.any(r) for r in residuals)


def test_bsa_mean_start_in_the_imagenet_form_applies_the_spectral_norm():
  """Shared embedding + hierarchical z: the residual is the mean class part
  of the SN linear, E_k W_class / sigma(W), sigma as eval mode computes it."""
  source = biggan.Generator(
      resolution=32, num_classes=3, ch=4, dim_z=20, shared_dim=8, hier=True)
  z, labels = jnp.zeros((2, 20)), jnp.array([0, 1])
  variables = rc.random_variables(rc.abstract_variables(source, z, labels))
  extended = source.clone(num_new_classes=2, new_classes=bsa.FreeVectors())
  fresh = rc.random_variables(rc.abstract_variables(extended, z, labels), 1)
  started = surgery.start_bsa_vectors(
      surgery.init_from_source(variables, fresh), 'mean', source.sn_eps)
  # The source layer's class offset for the mean embedding and a zero z
  # chunk, through the Flax layer itself (eval mode: stored u).
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  kernel = params['block_0/bn1/gain/kernel']
  mean_e = params['shared/embedding'].mean(0)
  cond = jnp.concatenate([mean_e, jnp.zeros(kernel.shape[0] - 8)])
  expected = layers.SNDense(
      kernel.shape[1], use_bias=False, eps=source.sn_eps).apply(
          {
              'params': {
                  'kernel': kernel
              },
              'sn': {
                  'u': variables['sn']['block_0']['bn1']['gain']['u']
              }
          }, cond[None])[0]
  got = traverse_util.flatten_dict(
      started['params'], sep='/')['block_0/bn1/bsa/residual_gamma/kernel']
  np.testing.assert_allclose(
      got, np.broadcast_to(expected, got.shape), rtol=1e-5, atol=1e-7)


def test_resolve_applies_switches_and_overrides_once():
  config = tiny_config()
  config.method = 'kp_frozen_prior_no_res'
  config.method_overrides.kp = {'g_lr': 1e-3}
  plan = stages.resolve(config)
  resolved = plan.config
  assert resolved.transfer.update_prior is False
  assert resolved.model.use_residuals is False
  assert resolved.transfer.g_lr == 1e-3  # the base method's override
  assert config.model.use_residuals is True  # the input is not changed
  assert stages.resolve(resolved).config.to_dict() == resolved.to_dict()
  # The method object carries the switches; nothing re-reads the config.
  assert plan.method == methods.KnowledgePropagation(
      'kp', methods.summary('kp'), kp.KPOptions(use_residuals=False), False)
  config.method = 'kp_finetune'
  assert stages.resolve(config).stages == ('pretrain', 'transfer', 'finetune')
  config.method = 'scratch'
  assert stages.resolve(config).stages == ('transfer',)
  config.method = 'transfergan'  # trains all of G: no fine-tuning stage
  config.stages = ('pretrain', 'transfer', 'finetune')
  assert stages.resolve(config).stages == ('pretrain', 'transfer')
  # With a source model, the run trains from transfer on.
  config.source_checkpoint = '/some/model'
  assert stages.resolve(config).stages == ('transfer',)


@pytest.mark.parametrize('change,message', [
    ({
        'method': 'bogus'
    }, "config.method='bogus' is not a method"),
    ({
        'method': 'freezed',
        'frozen_d_blocks': 5
    }, 'has 4 blocks'),
    ({
        'new_class_init': 'zeros'
    }, 'new_class_init'),
])
def test_bad_method_settings_are_explained(change, message):
  config = tiny_config()
  for key, value in change.items():
    if key in config.method_options:
      config.method_options[key] = value
    else:
      config[key] = value
  with pytest.raises(stages.ConfigError, match=message):
    stages.resolve(config)


def test_method_names_expand_groups_and_reject_unknown_names():
  assert methods.names_of('baselines') == list(methods.METHODS)
  assert methods.names_of('kp,table2')[0] == 'kp'
  assert len(methods.names_of('table2')) == 8
  with pytest.raises(methods.MethodError, match="unknown \\['kpp'\\]"):
    methods.names_of('kp,kpp')
  assert methods.continues_from('kp_finetune') == 'kp'
  assert methods.continues_from('kp_no_l1') is None


@_READS_SPECS
def test_scratch_samples_are_scored_as_the_new_classes(source_dir, eval_cache):
  """A scratch model labels the new classes 0..M-1; the 6-way classifier
  (source classes first) knows them as 4..5."""
  plan, data, spec = transfer('scratch', source_dir)
  config = copy.deepcopy(plan.config)
  config.eval.cache_dir = str(eval_cache)
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  scorer = evaluator.make(config, spec.generator, spec.dataset, data, mesh)
  assert set(scorer.labels) == {0, 1}
  assert set(scorer.scored_labels) == {4, 5}


def test_compare_runs_methods_on_one_source_and_writes_the_table(
    tmp_path, eval_cache):
  config = tiny_config()
  config.eval.final = True
  config.eval.cache_dir = str(eval_cache)
  config.eval.classifier_with_source = True
  config.transfer.eval_every = config.finetune.eval_every = 0  # final only
  config.method_options.hypermod.alignment_steps = 3
  text = compare.compare_methods(config, tmp_path,
                                 ['bsa', 'kp_finetune', 'hypermod'])
  table_lines = [line for line in text.splitlines() if line.startswith('|')]
  rows = [line.split(' | ')[0].lstrip('| ') for line in table_lines[2:]]
  assert text.endswith('Metrics against the training images of the new '
                       'classes. DiffAugment: off.')
  assert rows == ['bsa', 'kp_finetune', 'hypermod']
  report = json.loads((tmp_path / 'comparison.json').read_text())
  by_name = {row['method']: row for row in report['rows']}
  # Hyper-Modulation transfers an unconditional source, pretrained once
  # beside the conditional one; the table says which row used which.
  assert {
      name: row['source'] for name, row in by_name.items()
  } == {
      'bsa': 'conditional',
      'kp_finetune': 'conditional',
      'hypermod': 'unconditional'
  }
  assert set(report['sources']) == {'conditional', 'unconditional'}
  hypermod_config = json.loads(
      (tmp_path / 'hypermod' / 'config.json').read_text())
  assert hypermod_config['source_checkpoint'].startswith(
      str(tmp_path / 'source_unconditional'))
  assert not hypermod_config['model']['conditional']
  alignment = json.loads((tmp_path / 'hypermod' / 'transfer' /
                          'self_alignment' / 'summary.json').read_text())
  assert alignment['steps'] == 3
  assert alignment['l1_last'] < alignment['l1_first']
  assert by_name['hypermod']['class_accuracy_at_best'] is not None
  # kp_finetune ran kp first (2 + 2 iterations) from the same source.
  assert (tmp_path / 'kp' / 'transfer' / 'summary.json').exists()
  assert by_name['kp_finetune']['best_step'] <= 4
  assert by_name['bsa']['trainable_g'] < by_name['kp_finetune']['trainable_g']
  for run in ('bsa', 'kp', 'kp_finetune'):
    run_config = json.loads((tmp_path / run / 'config.json').read_text())
    assert run_config['source_checkpoint'].startswith(
        str(tmp_path / ('kp' if run == 'kp_finetune' else 'source')))
  assert (tmp_path / 'comparison.png').exists()
  assert (tmp_path / 'samples.png').exists()
  # One grid per method, stacked, each sample at least 64 px wide.
  samples = Image.open(tmp_path / 'samples.png')
  assert samples.width >= compare.MIN_SAMPLE_PIXELS * config.sample.columns
  assert samples.height > samples.width / 2
  # kp_finetune started from kp's best model and reports its own numbers:
  # its iterations count from kp's best step.
  finetune = json.loads(
      (tmp_path / 'kp_finetune' / 'finetune' / 'summary.json').read_text())
  assert finetune['started_from'] == str(tmp_path / 'kp' / 'transfer' /
                                         'model_best')
  kp_best = json.loads((tmp_path / 'kp' / 'transfer' /
                        'summary.json').read_text())['best_model_step']
  assert by_name['kp_finetune']['best_step'] > kp_best
  # Time to quality, against bsa's best value.
  assert report['time_to_quality']['baseline'] == 'bsa'
  assert by_name['bsa']['times_sooner_than_baseline'] == 1.0
  assert "iterations to bsa's best" in text


def test_time_to_quality_is_the_first_iteration_reaching_the_baseline_best():
  curve = comparison.RunCurve
  runs = [
      curve('bsa', [100, 200, 300, 400], [9.0, 6.0, 5.0, 5.5], 1.0),
      curve('kp', [100, 200, 300, 400], [7.0, 4.9, 4.0, 4.5], 1.0),
      curve('scratch', [100, 200], [20.0, 15.0], 1.0),
  ]
  rows = [{'method': r.name} for r in runs]
  quality = compare.add_time_to_quality(rows, runs, 'domain_fd', 'bsa')
  assert quality == {'baseline': 'bsa', 'target': 5.0}
  assert [r['steps_to_baseline_best'] for r in rows] == [300, 200, None]
  assert rows[1]['times_sooner_than_baseline'] == 1.5
  assert rows[2]['times_sooner_than_baseline'] is None
  # Higher-is-better metrics reach the target from below.
  accuracy = [
      curve('bsa', [1, 2], [0.5, 0.7], 1.0),
      curve('kp', [1], [0.8], 1.0)
  ]
  rows = [{'method': 'bsa'}, {'method': 'kp'}]
  compare.add_time_to_quality(rows, accuracy, 'class_accuracy', 'bsa')
  assert rows[1]['times_sooner_than_baseline'] == 2.0
  assert compare.add_time_to_quality(rows, accuracy[1:], 'class_accuracy',
                                     'bsa') is None


def test_the_comparison_table_flags_a_collapsed_method():
  row = {
      'method': 'm',
      'summary': 's',
      'source': 'conditional',
      'loss': 'hinge',
      'trainable_g': 1,
      'trainable_d': 1,
      'best': 1.0,
      'best_step': 1,
      'final': 1.0,
      'class_accuracy_at_best': 1.0,
      'intra_fd_at_best': 9.0,
      'coverage_at_best': 0.04,
      'wall_seconds': 1
  }
  text = compare.table([{**row, 'recall_at_best': 0.02}], 'domain_fd')
  assert '| 0.02 **collapsed** | 0.04 |' in text
  text = compare.table([{**row, 'recall_at_best': 0.6}], 'domain_fd')
  assert 'collapsed' not in text
