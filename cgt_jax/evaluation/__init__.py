"""Sample-quality evaluation: FID / KMMD / IS, or a domain classifier offline.

| module | job |
|---|---|
| `inception.py` | Inception-v3 in Flax, `fid` and `torchvision` variants, PyTorch-exact resize |
| `inception_convert.py` | `.pth` (numpy) -> Flax variables, checksums, converted directories |
| `features.py` | `Extractor`; images -> features over all devices |
| `metrics.py` | Frechet distance, KMMD, Inception score, class accuracy (numpy) |
| `stats_cache.py` | reference statistics cached by dataset content + extractor |
| `domain_classifier.py` | small CNN trained on the real data when no Inception weights exist |

`evaluate_samples` below ties them together and names the metrics by their
feature network, so a domain-classifier distance is never called FID.
See docs/EVALUATION.md.
"""

import numpy as np

from cgt_jax.evaluation import features
from cgt_jax.evaluation import metrics
from cgt_jax.evaluation import stats_cache


def evaluate_samples(fake_images,
                     fake_labels,
                     reference: stats_cache.ReferenceStats,
                     extractor: features.Extractor,
                     is_splits: int = 10,
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
    **extract_kwargs: `batch_size`, `mesh`, `progress` of `features.extract`.
  Returns:
    Inception: `{'fid', 'is', 'is_std'}` (+ `'kmmd'` when the reference kept
    its features). Domain classifier: `{'domain_fd', 'class_accuracy',
    'class_accuracy_per_class'}` (+ `'domain_kmmd'`).
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
  return results
