"""Sample-quality metrics on extracted features: FD, KMMD, IS, class accuracy,
intra-class FD and precision / recall / density / coverage.

Pure numpy/scipy in float64, on host. The formulas are those of the
cGANTransfer evaluation (BigGAN-PyTorch `inception_utils.py`), so numbers
from the same features agree with the reference:

* Frechet distance: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)).
* KMMD (GAN-Metrics, as copied into cGANTransfer): Gaussian-kernel MMD with
  the bandwidth tied to the real features' spread (see `kmmd`).
* Inception score: exp(E_x KL(p(y|x) || p(y))) per split, mean and std.
* Intra-class FD: the Frechet distance of each class's samples to that
  class's real images, and its mean over classes (Miyato & Koyama 2018's
  intra-FID on any features).
* Precision and recall (Kynkaanniemi et al. 2019), density and coverage
  (Naeem et al. 2020) with k-nearest-neighbour balls, per class. Pooled FD
  cannot see a generator that draws one image per class; recall and
  coverage fall to about 0 for it (docs/EVALUATION.md).
"""

import math
import warnings
from typing import Tuple

import numpy as np
import scipy.linalg
import scipy.special

# Added to both covariances when sqrtm(S1 S2) is not finite (reference value).
SQRTM_EPS = 1e-6


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
  """Mean `[dim]` and covariance `[dim, dim]` (float64) of `[n, dim]` features.

  The covariance is `np.cov(rowvar=False)` (unbiased, n - 1), as the reference.
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f'features must be [n, dim], got shape {features.shape}')
  n, dim = features.shape
  if n < 2:
    raise ValueError('need at least 2 feature vectors for a covariance; got '
                     f'{n}')
  if n < dim:
    warnings.warn(f'{n} samples of {dim}-d features: the covariance is '
                  f'singular (rank <= {n - 1}), so Frechet distances are '
                  'dominated by the sample size; use more samples')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _check_moments(mu1, sigma1, mu2, sigma2):
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  dim = mu1.shape[0]
  for name, value, want in (('mu2', mu2, (dim,)),
                            ('sigma1', sigma1, (dim, dim)), ('sigma2', sigma2,
                                                             (dim, dim))):
    if value.shape != want:
      raise ValueError(f'{name} has shape {value.shape}; with mu1 of shape '
                       f'{mu1.shape} it must be {want}')
  return (a.astype(np.float64) for a in (mu1, sigma1, mu2, sigma2))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

  The matrix square root is scipy's `sqrtm` (a maintained, well-tested
  Schur-based implementation, and what the reference calls). As in the
  reference: if sqrtm(S1 S2) is not finite, SQRTM_EPS * I is added to both
  covariances; the real part is kept (imaginary parts are round-off for
  PSD inputs; a large one is reported as a warning).
  """
  mu1, sigma1, mu2, sigma2 = _check_moments(mu1, sigma1, mu2, sigma2)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    largest = np.abs(np.diagonal(covmean).imag).max()
    if largest > 1e-3:  # the reference raises here; a warning keeps runs alive
      warnings.warn(f'sqrtm(S1 S2) has an imaginary diagonal part of '
                    f'{largest:.3g}: covariances are not PSD enough')
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
               2 * np.trace(covmean))


def _mean_gaussian_kernel(x: np.ndarray, y: np.ndarray, gamma: float,
                          block_size: int) -> float:
  """mean_ij exp(-gamma ||x_i - y_j||^2) over `[n, d]` x `[m, d]`, in blocks.

  Peak memory is a few `block_size^2` float64 arrays, not n * m.
  """
  sq_x, sq_y = (x * x).sum(1), (y * y).sum(1)
  total = 0.0
  for i in range(0, len(x), block_size):
    x_block = x[i:i + block_size]
    for j in range(0, len(y), block_size):
      dist = (
          sq_x[i:i + block_size, None] + sq_y[None, j:j + block_size] -
          2 * x_block @ y[j:j + block_size].T)
      # Squared distances are >= 0; the expansion can round a hair below.
      total += np.exp(-gamma * np.maximum(dist, 0)).sum()
  return total / (len(x) * len(y))


def kmmd(real_features,
         fake_features,
         sigma: float = 1.0,
         block_size: int = 2048) -> float:
  """Kernel MMD of `[n, d]` real vs `[m, d]` fake features (GAN-Metrics).

  M = squared Euclidean distances; bandwidth rule: scale = mean of M over
  all real-real pairs (diagonal included), kernel k = exp(-M / (2 sigma^2
  scale)), so sigma is relative to the real set's spread and the metric is
  invariant to scaling the features. KMMD = sqrt(mean K_xx + mean K_yy -
  2 mean K_xy), the biased V-statistic (diagonals included), as the
  reference. Computed in float64 blocks (25k x 25k pairs need no 5 GB).
  """
  x = np.asarray(real_features, np.float64)
  y = np.asarray(fake_features, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not (len(x) and
                                                                    len(y)):
    raise ValueError('kmmd needs non-empty [n, d] and [m, d] features, got '
                     f'{x.shape} and {y.shape}')
  # Distances do not change under a common shift; centring on the real mean
  # keeps ||a||^2 + ||b||^2 - 2ab well conditioned and gives the mean
  # real-real squared distance in closed form: 2 mean ||x||^2.
  center = x.mean(axis=0)
  x, y = x - center, y - center
  scale = 2 * (x * x).sum(1).mean()
  if scale == 0:
    raise ValueError('all real features are identical: the KMMD bandwidth '
                     '(mean real-real distance) is 0')
  gamma = 1 / (2 * sigma**2 * scale)
  k_xx = _mean_gaussian_kernel(x, x, gamma, block_size)
  k_yy = _mean_gaussian_kernel(y, y, gamma, block_size)
  k_xy = _mean_gaussian_kernel(x, y, gamma, block_size)
  # Round-off can leave a tiny negative value where the reference would
  # fail in math.sqrt; the MMD^2 V-statistic itself is >= 0.
  return math.sqrt(max(k_xx + k_yy - 2 * k_xy, 0.0))


def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
  """Mean and std over `splits` of exp(mean_x KL(p(y|x) || p(y))).

  `logits` `[n, classes]`; p(y|x) = softmax(logits), p(y) = the split's mean
  of p(y|x). As the reference, each split has n // splits samples and the
  remainder is left out.
  """
  logits = np.asarray(logits, np.float64)
  per_split = len(logits) // splits
  if logits.ndim != 2 or per_split == 0:
    raise ValueError(f'need [n, classes] logits with n >= splits={splits}; '
                     f'got shape {logits.shape}')
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for k in range(splits):
    part = log_p[k * per_split:(k + 1) * per_split]
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    kl = (p * (part - log_marginal)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def class_accuracy(predicted, labels,
                   num_classes: int) -> Tuple[float, np.ndarray]:
  """Overall and per-class accuracy of predicted labels.

  `predicted`, `labels`: int `[n]` (labels = the classes the samples were
  generated for). Returns `(accuracy, per_class [num_classes])`; per_class[y]
  is the fraction of samples of class y classified as y, NaN without any.
  """
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  if predicted.shape != labels.shape or predicted.ndim != 1 or not len(labels):
    raise ValueError('predicted and labels must be non-empty [n] arrays, got '
                     f'{predicted.shape} and {labels.shape}')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels span {labels.min()}..{labels.max()}, outside '
                     f'0..{num_classes - 1}')
  correct = predicted == labels
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels, weights=correct, minlength=num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = hits / counts
  return float(correct.mean()), per_class


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """`[n, m]` squared Euclidean distances (float64, clipped at 0)."""
  dist = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
  return np.maximum(dist, 0)


def _kth_neighbour_radii(x: np.ndarray, k: int, block_size: int) -> np.ndarray:
  """Squared distance of each row of `x` to its k-th nearest other row."""
  radii = np.empty(len(x))
  for i in range(0, len(x), block_size):
    dist = _squared_distances(x[i:i + block_size], x)
    # Column 0 of the sorted row is the point itself (distance 0).
    radii[i:i + block_size] = np.partition(dist, k, axis=1)[:, k]
  return radii


def prdc(real_features,
         fake_features,
         k: int = 5,
         block_size: int = 2048) -> dict:
  """Precision, recall, density and coverage of fake vs real features.

  With B(x, r) the ball around x reaching its k-th nearest neighbour in its
  own set: precision = the fraction of fakes inside some real ball; recall =
  the fraction of reals inside some fake ball; density = the mean number of
  real balls holding a fake, / k (about 1 for matching distributions, above
  1 where fakes crowd dense regions); coverage = the fraction of real balls
  holding at least one fake. Written here rather than taken from the `prdc`
  package, which holds all n x m distances at once: these run in blocks.
  """
  x = np.asarray(real_features, np.float64)
  y = np.asarray(fake_features, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'prdc needs [n, d] and [m, d] features, got {x.shape} '
                     f'and {y.shape}')
  if len(x) <= k or len(y) <= k:
    raise ValueError(f'prdc with k={k} needs more than {k} real and fake '
                     f'features, got {len(x)} and {len(y)}')
  real_radii = _kth_neighbour_radii(x, k, block_size)
  fake_radii = _kth_neighbour_radii(y, k, block_size)
  in_real_balls = np.zeros(len(y))  # per fake: real balls holding it
  covered = np.zeros(len(x), bool)
  recalled = np.zeros(len(x), bool)
  for i in range(0, len(x), block_size):
    dist = _squared_distances(x[i:i + block_size], y)  # [reals, fakes]
    inside = dist <= real_radii[i:i + block_size, None]
    in_real_balls += inside.sum(0)
    covered[i:i + block_size] = inside.any(1)
    recalled[i:i + block_size] = (dist <= fake_radii[None, :]).any(1)
  return {
      'precision': float((in_real_balls > 0).mean()),
      'recall': float(recalled.mean()),
      'density': float(in_real_balls.mean() / k),
      'coverage': float(covered.mean()),
  }


def per_class(metric, real_features, real_labels, fake_features,
              fake_labels) -> dict:
  """`{class: metric(real of class, fake of class)}` for every class that
  has samples (real and fake labels in one label space)."""
  real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
  real, fake = np.asarray(real_features), np.asarray(fake_features)
  missing = sorted(
      int(c) for c in set(np.unique(fake_labels)) - set(np.unique(real_labels)))
  if missing:
    raise ValueError(f'samples of classes {missing} have no real images to '
                     'compare with')
  return {
      int(c): metric(real[real_labels == c], fake[fake_labels == c])
      for c in np.unique(fake_labels)
  }


def intra_class_fd(real_features, fake_features) -> float:
  """The Frechet distance of one class's samples to its real images.

  With fewer samples than feature dimensions the covariances are singular
  and the value mostly measures the sample size (compare runs with equal
  samples per class); `feature_statistics` would warn for every class, so
  the warning is left to the pooled FD.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    mu1, sigma1 = feature_statistics(real_features)
    mu2, sigma2 = feature_statistics(fake_features)
  return frechet_distance(mu2, sigma2, mu1, sigma1)
