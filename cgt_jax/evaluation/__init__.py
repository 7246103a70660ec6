"""Sample-quality evaluation: FID / KMMD / IS, or a domain classifier offline.

| module | job |
|---|---|
| `inception.py` | Inception-v3 in Flax, `fid` and `torchvision` variants, PyTorch-exact resize |
| `inception_convert.py` | `.pth` (numpy) -> Flax variables, checksums, converted directories |
| `features.py` | `Extractor`; images -> features over all devices |
| `metrics.py` | FD, KMMD, IS, class accuracy, intra-class FD, PRDC (numpy) |
| `stats_cache.py` | reference statistics cached by dataset content + extractor |
| `domain_classifier.py` | small CNN trained on the real data when no Inception weights exist |

`evaluate_samples` below ties them together and names the metrics by their
feature network, so a domain-classifier distance is never called FID.
See docs/EVALUATION.md.
"""

import math

import numpy as np

from cgt_jax.evaluation import features
from cgt_jax.evaluation import metrics
from cgt_jax.evaluation import stats_cache


def evaluate_samples(fake_images,
                     fake_labels,
                     reference: stats_cache.ReferenceStats,
                     extractor: features.Extractor,
                     is_splits: int = 10,
                     sample_classes=None,
                     **extract_kwargs) -> dict:
  """Metrics of generated images against reference statistics.

  Args:
    fake_images: uint8 or [-1, 1] float `[n, h, w, 3]` (or an iterable of
      batches) from the generator.
    fake_labels: int `[n]`, the classes the images were generated for, in
      the label space of the reference dataset (0..K-1); None: classes the
      classifier does not know (an unconditional model), no accuracy.
    reference: statistics of the real data from the same extractor.
    extractor: an Inception (`kind='inception'`) or domain classifier.
    is_splits: Inception-score splits.
    sample_classes: int `[n]`, the classes of the samples in the labels of
      the reference (`reference.labels`): adds the per-class metrics.
    **extract_kwargs: `batch_size`, `mesh`, `progress` of `features.extract`.
  Returns:
    Inception: `{'fid', 'is', 'is_std'}` (+ `'kmmd'` when the reference kept
    its features). Domain classifier: `{'domain_fd', 'class_accuracy',
    'class_accuracy_per_class'}` (+ `'domain_kmmd'`). With `sample_classes`
    (and reference features): `intra_fid` / `domain_intra_fd` (mean over
    classes) and `precision`, `recall`, `density`, `coverage` (means over
    classes; `domain_` before each with the classifier), and per-class lists
    `per_class_<name>` in class order.
  """
  out = features.extract(extractor.apply_fn, extractor.variables, fake_images,
                         **extract_kwargs)
  fake = out['features']
  stats_cache.check_compatible(reference, fake, extractor.identity)
  mu, sigma = metrics.feature_statistics(fake)
  prefix = '' if extractor.kind == 'inception' else 'domain_'
  fd_name = 'fid' if extractor.kind == 'inception' else 'domain_fd'
  results = {
      fd_name:
          metrics.frechet_distance(mu, sigma, reference.mu, reference.sigma)
  }
  if reference.features is not None:
    results[prefix + 'kmmd'] = metrics.kmmd(reference.features, fake)
  if extractor.kind == 'inception':
    results['is'], results['is_std'] = metrics.inception_score(
        out['logits'], is_splits)
  elif fake_labels is not None:
    logits = out['logits']
    accuracy, per_class = metrics.class_accuracy(
        logits.argmax(axis=1), np.asarray(fake_labels), logits.shape[1])
    results['class_accuracy'] = accuracy
    results['class_accuracy_per_class'] = per_class
  if sample_classes is not None and reference.labels is not None:
    results.update(
        _per_class_metrics(reference, fake, sample_classes, prefix,
                           'intra_fid' if not prefix else 'domain_intra_fd'))
  return results


PRDC = ('precision', 'recall', 'density', 'coverage')


def _mean_of_finite(values) -> float:
  """The mean over the classes that had enough images (NaN: none had)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if len(finite) else math.nan


def _intra_fd_or_nan(real, fake) -> float:
  """`metrics.intra_class_fd`, or NaN for a class with fewer than 2 real
  images or samples (no covariance: many classes, few samples)."""
  if min(len(real), len(fake)) < 2:
    return math.nan
  return metrics.intra_class_fd(real, fake)


def _prdc_or_nan(real, fake) -> dict:
  """`metrics.prdc`, or NaNs when a class has too few real images or
  samples for its k = 5 neighbours (few-shot classes of fewer than 6)."""
  k = 5
  if min(len(real), len(fake)) <= k:
    return dict.fromkeys(PRDC, math.nan)
  return metrics.prdc(real, fake, k=k)


def _per_class_metrics(reference, fake, sample_classes, prefix: str,
                       fd_name: str) -> dict:
  """Intra-class FD and precision/recall/density/coverage, class by class:
  their means and per-class lists."""
  args = (reference.features, reference.labels, fake, sample_classes)
  fds = metrics.per_class(_intra_fd_or_nan, *args)
  prdcs = metrics.per_class(_prdc_or_nan, *args)
  classes = sorted(fds)
  results = {
      fd_name: _mean_of_finite([fds[c] for c in classes]),
      f'per_class_{fd_name}': [fds[c] for c in classes],
  }
  for name in PRDC:
    values = [prdcs[c][name] for c in classes]
    results[prefix + name] = _mean_of_finite(values)
    results[f'per_class_{prefix}{name}'] = values
  return results
