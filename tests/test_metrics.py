"""Metrics against closed forms and direct formulas; features; stats cache."""

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from cgt_jax import evaluation
from cgt_jax.runtime import parallel
from cgt_jax.evaluation import features
from cgt_jax.evaluation import metrics
from cgt_jax.evaluation import stats_cache


def random_spd(rng, dim):
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.5 * np.eye(dim)


def diagonal_fd(mu1, s1, mu2, s2):
  """Closed form for commuting covariances with eigenvalues s1, s2."""
  return float(((mu1 - mu2)**2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())


# ----------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------


def test_fd_matches_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(diagonal_fd(mu1, s1, mu2, s2), rel=1e-10)


def test_fd_matches_closed_form_for_commuting_covariances():
  rng = np.random.default_rng(1)
  q = scipy.stats.ortho_group.rvs(5, random_state=2)
  s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  got = metrics.frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2,
                                 q @ np.diag(s2) @ q.T)
  assert got == pytest.approx(diagonal_fd(mu1, s1, mu2, s2), rel=1e-9)


def test_fd_of_samples_approaches_fd_of_true_parameters():
  rng = np.random.default_rng(3)
  dim = 6
  mu1 = rng.normal(size=dim)
  mu2 = mu1 + 0.3 * rng.normal(size=dim)
  sigma1, sigma2 = random_spd(rng, dim), random_spd(rng, dim)
  x = rng.multivariate_normal(mu1, sigma1, size=20_000)
  y = rng.multivariate_normal(mu2, sigma2, size=20_000)
  true = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  sampled = metrics.frechet_distance(*metrics.feature_statistics(x),
                                     *metrics.feature_statistics(y))
  # Most of the distance is the covariance (sqrtm) term, not the means.
  assert true > 2 * ((mu1 - mu2)**2).sum()
  # The estimator's spread at n = 20k is ~1% here; 3% is a loose bound.
  assert sampled == pytest.approx(true, rel=0.03)


def test_fd_of_a_set_with_itself_is_zero():
  features = np.random.default_rng(4).normal(size=(500, 64)) * 3 + 1
  mu, sigma = metrics.feature_statistics(features)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fd_adds_eps_when_sqrtm_is_not_finite(monkeypatch):
  real_sqrtm = scipy.linalg.sqrtm
  calls = []

  def flaky_sqrtm(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, 'sqrtm', flaky_sqrtm)
  s1, s2 = np.diag([1.0, 2.0]), np.diag([3.0, 4.0])
  got = metrics.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
  eye = np.eye(2) * metrics.SQRTM_EPS
  np.testing.assert_array_equal(calls[1], (s1 + eye) @ (s2 + eye))
  want = diagonal_fd(
      np.zeros(2),
      np.diag(s1) + 1e-6, np.zeros(2),
      np.diag(s2) + 1e-6) - 4e-6
  assert got == pytest.approx(want, rel=1e-9)


def test_fd_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='sigma2 has shape'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_feature_statistics_errors_and_warnings():
  with pytest.raises(ValueError, match='need at least 2 .* got 1'):
    metrics.feature_statistics(np.zeros((1, 4)))
  with pytest.warns(UserWarning, match='covariance is singular'):
    mu, sigma = metrics.feature_statistics(
        np.random.default_rng(0).normal(size=(3, 5)))
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (5, 5)


def test_feature_statistics_is_unbiased_covariance():
  x = np.random.default_rng(5).normal(size=(50, 3)).astype(np.float32)
  mu, sigma = metrics.feature_statistics(x)
  centred = x.astype(np.float64) - x.mean(0, dtype=np.float64)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
  np.testing.assert_allclose(mu, x.mean(0, dtype=np.float64), rtol=1e-12)


# ----------------------------------------------------------------------------
# KMMD
# ----------------------------------------------------------------------------


def direct_kmmd(x, y, sigma=1.0):
  """The GAN-Metrics formula with full pairwise matrices."""

  def sq_dist(a, b):
    return ((a[:, None, :] - b[None, :, :])**2).sum(-1)

  m_xx, m_xy, m_yy = sq_dist(x, x), sq_dist(x, y), sq_dist(y, y)
  scale = m_xx.mean()
  k = lambda m: np.exp(-m / (scale * 2 * sigma * sigma)).mean()
  return np.sqrt(k(m_xx) + k(m_yy) - 2 * k(m_xy))


@pytest.mark.parametrize('sigma', [1.0, 0.5])
def test_kmmd_matches_direct_formula(sigma):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(300, 5)) + 4  # an offset: centring must not matter
  y = rng.normal(size=(170, 5)) * 1.3 + 4.2
  want = direct_kmmd(x, y, sigma)
  assert want > 0.05
  for block_size in (64, 1000):  # uneven blocks and a single block
    got = metrics.kmmd(x, y, sigma=sigma, block_size=block_size)
    assert got == pytest.approx(want, rel=1e-9)


def test_kmmd_zero_for_identical_sets_and_grows_with_shift():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(200, 8))
  assert metrics.kmmd(x, x, block_size=64) == 0
  values = [metrics.kmmd(x, x + shift) for shift in (0.1, 0.3, 0.6, 1.0, 2.0)]
  assert all(a < b for a, b in zip(values, values[1:])), values


def test_kmmd_bandwidth_follows_the_real_spread():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 0.5
  assert metrics.kmmd(10 * x, 10 * y) == pytest.approx(
      metrics.kmmd(x, y), rel=1e-9)


def test_kmmd_errors():
  with pytest.raises(ValueError, match='identical'):
    metrics.kmmd(np.ones((5, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r'\(5, 3\) and \(5, 2\)'):
    metrics.kmmd(np.ones((5, 3)), np.zeros((5, 2)))


# ----------------------------------------------------------------------------
# Inception score and class accuracy
# ----------------------------------------------------------------------------


def test_inception_score_of_confident_uniform_predictions():
  num_classes = 10
  logits = 100.0 * np.eye(num_classes)[np.arange(1000) % num_classes]
  mean, std = metrics.inception_score(logits, splits=10)
  assert mean == pytest.approx(num_classes, rel=1e-9)
  assert std == pytest.approx(0, abs=1e-9)
  # One class only: p(y|x) = p(y), IS = 1.
  mean, _ = metrics.inception_score(np.tile(logits[:1], (100, 1)), splits=4)
  assert mean == pytest.approx(1, rel=1e-9)


def test_inception_score_matches_reference_formula():
  logits = np.random.default_rng(9).normal(size=(105, 7)) * 2
  splits = 5
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for k in range(splits):  # 21 samples per split, as n // splits
    part = p[k * 21:(k + 1) * 21]
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  mean, std = metrics.inception_score(logits, splits)
  assert (mean, std) == pytest.approx((np.mean(scores), np.std(scores)))
  with pytest.raises(ValueError, match='n >= splits'):
    metrics.inception_score(logits[:3], splits)


def test_class_accuracy_per_class():
  labels = np.array([0, 0, 1, 1, 1, 2])
  predicted = np.array([0, 1, 1, 1, 0, 2])
  accuracy, per_class = metrics.class_accuracy(predicted, labels, 4)
  assert accuracy == pytest.approx(4 / 6)
  np.testing.assert_allclose(per_class, [0.5, 2 / 3, 1.0, np.nan])
  with pytest.raises(ValueError, match='outside 0..1'):
    metrics.class_accuracy(predicted, labels, 2)


# ----------------------------------------------------------------------------
# Feature extraction, reference statistics and evaluate_samples (with a tiny
# linear "network" so that every number can be computed by hand)
# ----------------------------------------------------------------------------


def linear_apply(variables, images):
  """features = mean colour @ w `[b, 4]`, logits = features `[b, 4]`."""
  feats = images.mean(axis=(1, 2)) @ variables['w']
  return {'features': feats, 'logits': feats}


LINEAR_VARIABLES = {'w': np.arange(12, dtype=np.float32).reshape(3, 4) / 10}


def linear_extractor(kind='inception', identity='linear-v1'):
  return features.Extractor(kind, identity, linear_apply, LINEAR_VARIABLES)


def random_images(n, seed=0, size=8):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_extract_pads_shards_and_rechunks():
  images = random_images(13)
  want = (images / 127.5 - 1).mean(axis=(1, 2)) @ LINEAR_VARIABLES['w']
  # batch 4 rounds up to 8 (the 8 test devices); 13 = 8 + 5 padded to 8.
  out = features.extract(linear_apply, LINEAR_VARIABLES, images, batch_size=4)
  assert out['features'].shape == (13, 4)
  np.testing.assert_allclose(out['features'], want, rtol=1e-5, atol=1e-6)
  chunks = iter([images[:3], images[3:10], images[10:11], images[11:]])
  again = features.extract(linear_apply, LINEAR_VARIABLES, chunks, 8)
  np.testing.assert_array_equal(again['features'], out['features'])
  floats = features.extract(linear_apply, LINEAR_VARIABLES,
                            images.astype(np.float32) / 127.5 - 1, 16)
  np.testing.assert_allclose(floats['features'], want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'\[n, height, width, 3\]'):
    features.extract(linear_apply, LINEAR_VARIABLES, images[..., :2], 8)


def test_extract_uses_a_data_sharded_program():
  mesh = parallel.make_mesh()
  fn = features._compiled(linear_apply, mesh)
  assert fn is features._compiled(linear_apply, mesh)  # compiled once
  batch = jax.device_put(random_images(8), parallel.data_sharding(mesh))
  out = fn(LINEAR_VARIABLES, batch)
  assert out['features'].sharding.spec == parallel.data_sharding(mesh).spec
  assert len(out['features'].sharding.device_set) == jax.device_count() == 8


@pytest.fixture
def count_extract(monkeypatch):
  """Counts feature extractions (i.e. reference-statistics computations)."""
  calls = []
  real = features.extract

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(features, 'extract', counting)
  return calls


def test_stats_cache_hits_on_same_content_only(tmp_path, count_extract):
  images, labels = random_images(20), np.arange(20) % 3
  extractor = linear_extractor()
  first = stats_cache.reference_statistics(images, labels, extractor, tmp_path)
  assert len(count_extract) == 1 and first.features.shape == (20, 4)
  # Equal content in new arrays (and int32 labels): a hit.
  again = stats_cache.reference_statistics(images.copy(),
                                           labels.astype(np.int32), extractor,
                                           tmp_path)
  assert len(count_extract) == 1
  np.testing.assert_array_equal(again.sigma, first.sigma)
  assert again.extractor_identity == 'linear-v1'
  # One pixel, one label or the extractor changed: a miss each.
  changed = images.copy()
  changed[7, 3, 2, 1] ^= 1
  stats_cache.reference_statistics(changed, labels, extractor, tmp_path)
  stats_cache.reference_statistics(images, labels[::-1], extractor, tmp_path)
  stats_cache.reference_statistics(images, labels,
                                   linear_extractor(identity='linear-v2'),
                                   tmp_path)
  assert len(count_extract) == 4
  assert len(list(tmp_path.glob('reference_*.npz'))) == 4


def test_stats_cache_recomputes_when_features_are_needed(
    tmp_path, count_extract):
  images, labels = random_images(10), np.zeros(10, int)
  extractor = linear_extractor()
  stats = stats_cache.reference_statistics(
      images, labels, extractor, tmp_path, keep_features=False)
  assert stats.features is None
  stats_cache.reference_statistics(
      images, labels, extractor, tmp_path, keep_features=False)
  assert len(count_extract) == 1
  stats = stats_cache.reference_statistics(images, labels, extractor, tmp_path)
  assert len(count_extract) == 2 and stats.features.shape == (10, 4)


def test_stats_cache_rejects_a_file_of_other_content(tmp_path):
  images, labels = random_images(10), np.zeros(10, int)
  extractor = linear_extractor()
  stats = stats_cache.reference_statistics(images, labels, extractor)
  other = random_images(10, seed=1)
  path = stats_cache.cache_path(tmp_path,
                                stats_cache.dataset_sha256(other, labels),
                                extractor.identity)
  stats_cache.save(path, stats)  # e.g. copied by hand under the wrong name
  with pytest.raises(stats_cache.StatsMismatchError, match='delete the file'):
    stats_cache.reference_statistics(other, labels, extractor, tmp_path)


def test_stats_errors_for_few_samples_and_other_dimensions():
  extractor = linear_extractor()
  with pytest.raises(ValueError, match='need at least 2 .* got 1'):
    stats_cache.reference_statistics(random_images(1), [0], extractor)
  stats = stats_cache.reference_statistics(
      random_images(10), np.zeros(10), extractor)
  with pytest.raises(stats_cache.StatsMismatchError, match='4-d .* 3-d'):
    stats_cache.check_compatible(stats, np.zeros((5, 3)), 'linear-v1')
  with pytest.raises(stats_cache.StatsMismatchError, match='come from'):
    stats_cache.check_compatible(stats, np.zeros((5, 4)), 'other')
  with pytest.raises(ValueError, match='uint8'):
    stats_cache.dataset_sha256(np.zeros((2, 4, 4, 3)), [0, 0])


def test_evaluate_samples_names_metrics_by_extractor():
  images, labels = random_images(40), np.arange(40) % 4
  for kind, names in (('inception', {'fid', 'kmmd', 'is',
                                     'is_std'}), ('domain', {
                                         'domain_fd', 'domain_kmmd',
                                         'class_accuracy',
                                         'class_accuracy_per_class'
                                     })):
    extractor = linear_extractor(kind)
    reference = stats_cache.reference_statistics(images, labels, extractor)
    results = evaluation.evaluate_samples(
        images, labels, reference, extractor, is_splits=4, batch_size=8)
    assert set(results) == names
    fd = results['fid' if kind == 'inception' else 'domain_fd']
    assert abs(fd) < 1e-6  # the reference images themselves
  predicted = (
      (images / 127.5 - 1).mean(axis=(1, 2)) @ LINEAR_VARIABLES['w']).argmax(
          axis=1)
  per_class = [(predicted[labels == c] == c).mean() for c in range(4)]
  np.testing.assert_allclose(results['class_accuracy_per_class'], per_class)
  assert results['class_accuracy'] == pytest.approx(np.mean(per_class))
  assert 0 < results['class_accuracy'] < 1
  shifted = np.clip(images.astype(int) + 40, 0, 255).astype(np.uint8)
  far = evaluation.evaluate_samples(shifted, labels, reference, extractor)
  assert far['domain_fd'] > 0.1 and far['domain_kmmd'] > 0.1


# ----------------------------------------------------------------------------
# Per-class metrics: intra-class FD, precision / recall / density / coverage
# ----------------------------------------------------------------------------


def _brute_force_prdc(real, fake, k):
  """The definitions of Naeem et al. 2020, one pair at a time."""

  def radius(points, i):
    distances = sorted(
        np.linalg.norm(points[i] - points[j]) for j in range(len(points)))
    return distances[k]  # distances[0] is the point itself

  real_radii = [radius(real, i) for i in range(len(real))]
  fake_radii = [radius(fake, j) for j in range(len(fake))]
  inside = np.array(
      [[np.linalg.norm(f - r) <= real_radii[i]
        for i, r in enumerate(real)]
       for f in fake])  # [fakes, reals]
  recalled = [
      any(np.linalg.norm(r - f) <= fake_radii[j]
          for j, f in enumerate(fake))
      for r in real
  ]
  return {
      'precision': inside.any(1).mean(),
      'recall': np.mean(recalled),
      'density': inside.sum() / (k * len(fake)),
      'coverage': inside.any(0).mean(),
  }


def test_prdc_matches_the_definitions_and_blocks_change_nothing():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(40, 3)), rng.normal(0.5, 1.2, (30, 3))
  expected = _brute_force_prdc(real, fake, k=3)
  for block_size in (7, 2048):
    got = metrics.prdc(real, fake, k=3, block_size=block_size)
    assert got == pytest.approx(expected, abs=1e-12)


def test_prdc_of_two_draws_of_one_distribution_is_near_ideal():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
  got = metrics.prdc(real, fake, k=5)
  # Density is 1 in expectation; coverage 1 - 2^-k for equal set sizes.
  assert got['density'] == pytest.approx(1.0, abs=0.15)
  assert got['coverage'] == pytest.approx(1 - 2**-5, abs=0.03)
  assert got['precision'] > 0.8 and got['recall'] > 0.8


def _classes(rng, means, n):
  """`n` points around each of `means` `[classes, dim]` (unit spread)."""
  labels = np.repeat(np.arange(len(means)), n)
  return means[labels] + rng.normal(size=(len(labels), means.shape[1])), labels


def test_a_generator_of_one_image_per_class_is_caught_per_class():
  """With many classes the spread between them dominates the pooled
  statistics, so pooled FD ranks a generator of one image per class above
  a diverse one whose spread is a little off; recall and coverage per
  class expose the collapse."""
  rng = np.random.default_rng(2)
  means = rng.normal(0, 3, (20, 8))
  real, labels = _classes(rng, means, 50)
  collapsed = real[labels * 50]  # each class's first image, for every z
  diverse, _ = _classes(rng, means, 50)
  diverse = diverse.mean(0) + 1.3 * (diverse - diverse.mean(0))

  def pooled_fd(fake):
    return metrics.frechet_distance(*metrics.feature_statistics(fake),
                                    *metrics.feature_statistics(real))

  assert pooled_fd(collapsed) < pooled_fd(diverse)
  caught = metrics.per_class(metrics.prdc, real, labels, collapsed, labels)
  fine = metrics.per_class(metrics.prdc, real, labels, diverse, labels)
  # Only the copied real image itself is recalled: 1 of 50.
  assert max(c['recall'] for c in caught.values()) <= 1 / 50
  assert np.mean([c['coverage'] for c in caught.values()]) < 0.15
  assert np.mean([c['recall'] for c in fine.values()]) > 0.5
  assert np.mean([c['coverage'] for c in fine.values()]) > 0.5
  intra = metrics.per_class(metrics.intra_class_fd, real, labels, collapsed,
                            labels)
  fine_intra = metrics.per_class(metrics.intra_class_fd, real, labels, diverse,
                                 labels)
  assert np.mean(list(intra.values())) > np.mean(list(fine_intra.values()))


def test_per_class_needs_real_images_of_every_sampled_class():
  with pytest.raises(ValueError, match=r'classes \[2\] have no real images'):
    metrics.per_class(metrics.intra_class_fd, np.zeros((4, 2)), [0, 0, 1, 1],
                      np.zeros((2, 2)), [2, 2])


def test_evaluate_samples_adds_per_class_metrics_by_extractor():
  images, labels = random_images(48), np.arange(48) % 2
  for kind, prefix, fd in (('inception', '', 'intra_fid'), ('domain', 'domain_',
                                                            'domain_intra_fd')):
    extractor = linear_extractor(kind)
    reference = stats_cache.reference_statistics(images, labels, extractor)
    results = evaluation.evaluate_samples(
        images,
        labels,
        reference,
        extractor,
        is_splits=4,
        sample_classes=labels,
        batch_size=8)
    assert results[fd] == pytest.approx(0, abs=1e-6)  # the real images
    assert len(results[f'per_class_{fd}']) == 2
    for name in ('precision', 'recall', 'coverage'):
      assert results[prefix + name] == 1.0  # every image is its own match
    assert results[prefix + 'density'] >= 1.0


def test_a_held_out_reference_folder_replaces_the_training_images(tmp_path):
  """config.eval.reference: the same classes from another folder, labelled
  like the stage's dataset (global labels)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top

  from cgt_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from cgt_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  training = datasets.ClassDataset(
      random_images(4), np.array([0, 0, 1, 1], np.int32),
      ['cat', 'dog']).relabelled(6)
  for seed, (name, count) in enumerate((('cat', 3), ('dog', 2))):
    (tmp_path / name).mkdir()
    for i, image in enumerate(random_images(count, seed=seed + 7)):
      PIL.Image.fromarray(image).save(tmp_path / name / f'{i}.png')
  config = ml_collections.ConfigDict({'eval': {'reference': ''}})
  assert evaluator.reference_images(config, training) is training
  assert evaluator.reference_name(config) == 'the training images'
  config.eval.reference = str(tmp_path)
  held_out = evaluator.reference_images(config, training)
  assert held_out.labels.tolist() == [6, 6, 6, 7, 7]
  assert held_out.images.shape == (5, 8, 8, 3)
  assert evaluator.reference_name(config) == f'held-out images in {tmp_path}'


def test_per_class_metrics_of_classes_too_small_are_nan_not_errors():
  """Many classes, few samples (the pretraining stage's 48 classes at 64
  samples): a class with one sample has no covariance and no 5 neighbours."""
  images, labels = random_images(40), np.arange(40) % 2
  extractor = linear_extractor('domain')
  reference = stats_cache.reference_statistics(images, labels, extractor)
  classes = np.array([0] * 7 + [1])  # class 1: a single sample
  results = evaluation.evaluate_samples(
      images[:8], classes, reference, extractor, sample_classes=classes)
  assert np.isfinite(results['per_class_domain_intra_fd'][0])
  assert np.isnan(results['per_class_domain_intra_fd'][1])
  assert results['domain_intra_fd'] == results['per_class_domain_intra_fd'][0]
  assert np.isnan(results['per_class_domain_coverage'][1])
  assert np.isfinite(results['domain_coverage'])


def test_the_test_split_reference_is_another_draw_of_the_same_classes():
  import ml_collections  # pylint: disable=g-import-not-at-top

  from cgt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from cgt_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  names = ['red_disc', 'green_square']
  training = synthetic.make_dataset(3, seed=0, class_names=names).relabelled(6)
  config = ml_collections.ConfigDict({
      'eval': {
          'reference': 'test'
      },
      'data': {
          'name': 'synthetic',
          'synthetic_images_per_class': 3,
          'seed': 0,
          'data_dir': ''
      }
  })
  held_out = evaluator.reference_images(config, training)
  assert held_out.class_names == names
  assert held_out.labels.tolist() == training.labels.tolist()
  assert not np.array_equal(held_out.images, training.images)
  assert evaluator.reference_name(config) == 'the test split'
  config.data.name = 'image_folder'
  with pytest.raises(
      ValueError,
      match='has no test split: set '
      'config.eval.reference to a folder'):
    evaluator.reference_images(config, training)
