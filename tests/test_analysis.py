"""Similarity scores and pseudo-classes of transferred generators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from matplotlib import figure as mpl_figure

from cgt_jax.analysis import similarity
from cgt_jax.analysis import visualize
from cgt_jax.models import biggan
from cgt_jax.models import kp
from cgt_jax.models import layers
from cgt_jax.transfer import surgery
from tests import reference_cases as rc

N, M = 5, 3  # source and new classes
LAYERS = [f'block_{i}/bn{j}' for i in range(3) for j in (1, 2)]
FORMS = {
    # Per-class BN tables, plain KP layers.
    'cifar': dict(dim_z=8),
    # Shared embedding + hierarchical z: KP layers with spectral norm.
    'imagenet': dict(dim_z=16, shared_dim=8, hier=True, sn_eps=1e-6),
}


def make_generator(form: str, num_new: int = M, **options):
  return biggan.Generator(
      resolution=32,
      num_classes=N,
      num_new_classes=num_new,
      ch=2,
      new_classes=kp.KPOptions(**options),
      **FORMS[form])


def random_model(form: str, **options):
  """A generator with random (untrained-looking) variables everywhere."""
  generator = make_generator(form, **options)
  z = jnp.zeros((2, generator.dim_z))
  abstract = rc.abstract_variables(generator, z, jnp.array([0, N]))
  return generator, rc.random_variables(abstract, seed=1)


def random_source(form: str):
  """A plain BigGAN (no new classes) with random variables."""
  source = make_generator(form, num_new=0)
  z = jnp.zeros((2, source.dim_z))
  return source, rc.random_variables(
      rc.abstract_variables(source, z, jnp.array([0, 1])), seed=2)


def freshly_transferred(form: str, **options):
  """A random source BigGAN extended by `surgery.init_from_source`."""
  _, source_vars = random_source(form)
  generator, fresh = random_model(form, **options)
  return generator, surgery.init_from_source(source_vars, fresh)


def latents(generator, count: int = 4):
  return jax.random.normal(jax.random.key(3), (count, generator.dim_z))


def kp_params(variables, layer: str) -> dict:
  block, bn = layer.split('/')
  return variables['params'][block][bn]['kp']


def test_scores_are_a_onehot_plus_bias_without_spectral_norm():
  generator, variables = random_model('cifar')
  scores = similarity.similarity_scores(generator, variables)
  assert list(scores) == LAYERS
  for layer in LAYERS:
    for which in ('gamma', 'beta'):
      dense = kp_params(variables, layer)[f'similarity_{which}']
      # S^{N+m} = A e_m + a: row m of the kernel plus the bias.
      expected = dense['kernel'] + dense['bias']
      assert scores[layer][which].shape == (M, N)
      np.testing.assert_allclose(scores[layer][which], expected, atol=1e-6)


def test_scores_carry_the_spectral_norm_of_the_imagenet_form():
  generator, variables = random_model('imagenet')
  scores = similarity.similarity_scores(generator, variables)
  assert list(scores) == LAYERS
  for layer in LAYERS:
    block, bn = layer.split('/')
    for which in ('gamma', 'beta'):
      dense = kp_params(variables, layer)[f'similarity_{which}']
      u = variables['sn'][block][bn]['kp'][f'similarity_{which}']['u']
      sigma, _ = layers.power_iteration(
          jnp.asarray(dense['kernel']).T, u, kp.KP_DEFAULT_SN_EPS)
      assert abs(float(sigma) - 1) > 0.1  # so SN visibly matters here
      expected = dense['kernel'] / sigma + dense['bias']
      np.testing.assert_allclose(
          scores[layer][which], expected, rtol=1e-5, atol=1e-6)


def test_shared_similarity_is_one_shared_layer():
  generator, variables = random_model('cifar', shared_similarity=True)
  scores = similarity.similarity_scores(generator, variables)
  assert list(scores) == [similarity.SHARED_LAYER]
  for which in ('gamma', 'beta'):
    dense = variables['params'][f'kp_similarity_{which}']
    np.testing.assert_allclose(
        scores['shared'][which], dense['kernel'] + dense['bias'], atol=1e-6)


def test_strongest_sources_rank_the_mean_score():
  scores = {
      'a': {
          'gamma': np.array([[0., 3, 1], [2, 0, -5]]),
          'beta': np.array([[0., 1, 1], [2, 0, -5]])
      },
      'b': {
          'gamma': np.array([[9., 0, 0], [0, 0, 0]]),
          'beta': np.zeros((2, 3))
      },
  }
  np.testing.assert_array_equal(
      similarity.strongest_sources(scores, 2), [[0, 1], [0, 1]])
  # Relative to the mean over new classes: source 2 sets class 0 apart.
  np.testing.assert_array_equal(
      similarity.strongest_sources(scores, 2, relative=True), [[2, 0], [1, 0]])


@pytest.mark.parametrize('options', [{}, {'shared_similarity': True}])
def test_untrained_pseudo_class_is_the_source_class_cifar(options):
  generator, variables = freshly_transferred('cifar', **options)
  z = latents(generator)
  classes = [0, 4, 2]
  pseudo = similarity.pseudo_class_images(generator, variables, classes, z)
  source = similarity.class_images(generator, variables, classes, z)
  assert pseudo.shape == (3, 4, 32, 32, 3)
  np.testing.assert_allclose(pseudo, source, rtol=0, atol=1e-6)
  # The new class itself (with its random similarity) is something else.
  new = similarity.class_images(generator, variables, [N], z)
  assert np.max(np.abs(new[0] - source[0])) > 1e-3


@pytest.mark.parametrize('form', ['cifar', 'imagenet'])
def test_pseudo_class_scores_are_exactly_one_hot(form):
  """SN included: sigma of the picked kernel is 1 bitwise, not 0 / 0, even
  from stored SN vectors that are 0 (which would make it 0 / 0)."""
  generator, variables = freshly_transferred(form)
  sn = traverse_util.flatten_dict(variables['sn'], sep='/')
  sn = {k: v * ('similarity' not in k) for k, v in sn.items()}
  variables = {**variables, 'sn': traverse_util.unflatten_dict(sn, sep='/')}
  for source_class, new_class in ((3, 0), (0, 2)):
    picked = similarity.pseudo_class_variables(variables, source_class,
                                               new_class)
    scores = similarity.similarity_scores(generator, picked)
    for layer in LAYERS:
      for which in ('gamma', 'beta'):
        np.testing.assert_array_equal(scores[layer][which][new_class],
                                      np.eye(N)[source_class])


@pytest.mark.parametrize('form', ['cifar', 'imagenet'])
def test_pseudo_class_is_prior_row_k_alone(form):
  """Row k of the prior (and the z projection's weights) make the image:
  the similarity, residuals and shared offsets of the model do not."""
  generator, variables = freshly_transferred(form)
  z, k = latents(generator), 3
  expected = similarity.pseudo_class_images(generator, variables, [k], z)
  assert np.all(np.isfinite(expected))

  def changed(pattern, row=None):
    flat = traverse_util.flatten_dict(variables['params'], sep='/')
    for key in [key for key in flat if pattern in key]:
      value = np.array(flat[key])
      if row is None:
        value += 0.5
      else:
        value[row] += 0.5
      flat[key] = value
    moved = dict(variables, params=traverse_util.unflatten_dict(flat, sep='/'))
    images = similarity.pseudo_class_images(generator, moved, [k], z)
    return np.max(np.abs(images - expected))

  assert changed('/kp/similarity_') == 0
  assert changed('/kp/residual_') == 0
  assert changed('/kp/z_proj_gamma/bias') == 0
  assert changed('/kp/prior_gamma/kernel', row=k) > 1e-3
  if form == 'cifar':  # (the ImageNet prior's SN sigma depends on every row)
    assert changed('/kp/prior_gamma/kernel', row=k + 1) == 0


def test_pseudo_class_variables_leave_the_input_alone():
  generator, variables = freshly_transferred('imagenet')
  before = jax.tree_util.tree_map(np.array, variables)
  similarity.pseudo_class_variables(variables, 1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, before)


def test_pseudo_class_rejects_out_of_range_classes():
  _, variables = freshly_transferred('cifar')
  with pytest.raises(ValueError, match=r'source_class=5 is out of range'):
    similarity.pseudo_class_variables(variables, N)
  with pytest.raises(ValueError, match=r'new_class=3 is out of range'):
    similarity.pseudo_class_variables(variables, 0, new_class=M)


def test_analysis_needs_a_transferred_generator():
  generator = make_generator('cifar', num_new=0)
  with pytest.raises(ValueError, match='no new classes'):
    similarity.similarity_scores(generator, {})


def test_pseudo_class_grid_pairs_source_and_pseudo_rows():
  generator, variables = freshly_transferred('cifar')
  source_model = random_source('cifar')
  picture = similarity.pseudo_class_grid(
      generator, variables, [1, 2], num_samples=3, source_model=source_model)
  pad = 2
  # 2 rows (classes) x 6 columns (3 source + 3 pseudo images) of 32 px.
  assert picture.shape == (2 * (32 + pad) + pad, 6 * (32 + pad) + pad, 3)
  assert picture.dtype == np.uint8
  # Untrained CIFAR form: each pseudo-class image is its source image,
  # drawn here by the source model.
  width = 3 * (32 + pad)
  left, right = picture[:, pad:pad + width], picture[:, pad + width:]
  np.testing.assert_array_equal(left, right)


def test_heatmaps_show_every_layer_with_class_names(tmp_path):
  generator, variables = random_model('cifar')
  scores = similarity.similarity_scores(generator, variables)
  new_names = ['red_disc', 'green_square', 'blue_ring']
  source_names = [f'source_{i}' for i in range(N)]
  fig = visualize.similarity_heatmaps(
      scores, new_names, source_names, sources=[4, 1])
  assert isinstance(fig, mpl_figure.Figure)
  heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
  titles = [ax.get_title() for ax in heatmaps]
  assert titles[:2] == ['block_0/bn1: S_gamma', 'block_0/bn1: S_beta']
  assert len(heatmaps) == 2 * len(LAYERS)
  ax = heatmaps[3]  # block_0/bn2, beta
  np.testing.assert_allclose(ax.images[0].get_array(),
                             scores['block_0/bn2']['beta'][:, [4, 1]])
  ticks = lambda labels: [t.get_text() for t in labels]
  assert ticks(ax.get_xticklabels()) == ['source_4', 'source_1']
  assert ticks(ax.get_yticklabels()) == new_names
  fig.savefig(tmp_path / 'heatmaps.png')
  assert (tmp_path / 'heatmaps.png').stat().st_size > 1000
