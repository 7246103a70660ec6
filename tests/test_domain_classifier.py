"""Offline domain classifier: learns a simple dataset, caches, names metrics."""

import shutil

import numpy as np
import pytest

from cgt_jax import evaluation
from cgt_jax.evaluation import domain_classifier
from cgt_jax.evaluation import stats_cache

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 210], [200, 200,
                                                                  60]])
CONFIG = domain_classifier.TrainConfig(
    width=8, feature_dim=16, steps=80, batch_size=32, learning_rate=3e-3)


def colour_dataset(n_per_class, seed, size=16):
  """Four flat colours plus strong pixel noise, uint8 `[4n, size, size, 3]`."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(4), n_per_class)
  noise = rng.normal(0, 40, (len(labels), size, size, 3))
  images = np.clip(COLOURS[labels][:, None, None] + noise, 0, 255)
  order = rng.permutation(len(labels))
  return images.astype(np.uint8)[order], labels[order].astype(np.int32)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  cache_dir = tmp_path_factory.mktemp('classifier_cache')
  images, labels = colour_dataset(50, seed=0)
  classifier = domain_classifier.load_or_train(images, labels, 4, cache_dir,
                                               CONFIG)
  return classifier, cache_dir, images, labels


def test_classifier_learns_held_out_colours(trained):
  classifier = trained[0]
  images, labels = colour_dataset(25, seed=1)
  predicted = classifier.logits(images, batch_size=32).argmax(axis=1)
  assert (predicted == labels).mean() > 0.95


def test_features_have_the_configured_dimension(trained):
  classifier, _, images, _ = trained
  feats = classifier.features(images, batch_size=64)
  assert feats.shape == (200, CONFIG.feature_dim) and feats.dtype == np.float32
  # No constant (dead) feature: the covariance has full rank.
  assert np.linalg.matrix_rank(np.cov(feats.T)) == CONFIG.feature_dim
  assert classifier.logits(images[:3]).shape == (3, 4)


def test_cache_is_reused_for_the_same_data_only(trained, monkeypatch):
  classifier, cache_dir, images, labels = trained
  calls = []
  real_train = domain_classifier.train
  monkeypatch.setattr(domain_classifier, 'train',
                      lambda *args: calls.append(1) or real_train(*args))
  again = domain_classifier.load_or_train(images.copy(), labels, 4, cache_dir,
                                          CONFIG)
  assert not calls
  assert again.identity == classifier.identity
  for name in ('conv0', 'logits'):
    np.testing.assert_array_equal(
        again.variables['params'][name]['kernel'],
        classifier.variables['params'][name]['kernel'])
  assert len(list(cache_dir.glob('domain_classifier_*'))) == 1
  changed = images.copy()
  changed[0, 0, 0, 0] ^= 1
  other = domain_classifier.load_or_train(changed, labels, 4, cache_dir, CONFIG)
  assert len(calls) == 1 and other.identity != classifier.identity
  assert len(list(cache_dir.glob('domain_classifier_*'))) == 2


def test_evaluate_samples_reports_domain_metrics(trained):
  classifier, _, images, labels = trained
  extractor = classifier.extractor()
  reference = stats_cache.reference_statistics(images, labels, extractor)
  good, good_labels = colour_dataset(25, seed=2)
  results = evaluation.evaluate_samples(good, good_labels, reference, extractor)
  assert 'fid' not in results and 'kmmd' not in results
  assert results['class_accuracy'] > 0.95
  assert results['class_accuracy_per_class'].shape == (4,)
  # Samples of the wrong classes: same images, shuffled class labels.
  wrong = evaluation.evaluate_samples(good, (good_labels + 1) % 4, reference,
                                      extractor)
  assert wrong['class_accuracy'] < 0.05
  # Noisy grey images are far from every real class.
  noise = np.random.default_rng(3).normal(0, 40, good.shape)
  grey = np.clip(128 + noise, 0, 255).astype(np.uint8)
  bad = evaluation.evaluate_samples(grey, good_labels, reference, extractor)
  assert bad['domain_fd'] > 10 * results['domain_fd']
  assert bad['domain_kmmd'] > 2 * results['domain_kmmd']


def test_unreadable_cache_is_retrained(trained, tmp_path):
  _, _, images, labels = trained
  first = domain_classifier.load_or_train(images, labels, 4, tmp_path, CONFIG)
  (directory,) = tmp_path.glob('domain_classifier_*')
  shutil.rmtree(directory / domain_classifier.VARIABLES_DIR)
  with pytest.warns(UserWarning, match='training the domain classifier again'):
    again = domain_classifier.load_or_train(images, labels, 4, tmp_path, CONFIG)
  assert again.identity == first.identity
  with pytest.raises(ValueError, match='outside 0..2'):
    domain_classifier.load_or_train(images, labels, 3, tmp_path, CONFIG)
