"""Reference statistics of a dataset, computed once and cached by content.

The reference code caches `<dataset>_inception_moments.npz` in the working
directory keyed by the dataset *name* only, so switching target data silently
reuses stale statistics (pitfall P10). Here a cache file is named by a hash
of the dataset *content* (sha256 of the uint8 image bytes, shape and labels)
and of the feature extractor's identity (network + weights sha256), and the
file records both again so that a copied or renamed file is still caught:

    CACHE_DIR/reference_<key>.npz   mu [d], sigma [d, d] (float64),
                                    features [n, d] (float32, optional: KMMD,
                                    per-class metrics) with their labels [n],
                                    dataset_sha256, extractor_identity
"""

import dataclasses
import hashlib
import pathlib
from typing import Optional

import numpy as np

from cgt_jax.evaluation import features as features_lib
from cgt_jax.evaluation import metrics
from cgt_jax.runtime import atomic_dir

# Bump when preprocessing or the file layout changes: old files stop matching.
CACHE_VERSION = 2  # 2: labels beside the features


class StatsMismatchError(ValueError):
  """Reference statistics do not fit the features they are compared with."""


@dataclasses.dataclass
class ReferenceStats:
  """Feature statistics of a real dataset.

  Attributes:
    mu: `[d]` float64 mean. sigma: `[d, d]` float64 covariance.
    features: `[n, d]` float32 raw features (for KMMD) or None.
    num_samples: n. dataset_sha256 / extractor_identity: what they describe.
    labels: `[n]` int labels of `features` (per-class metrics), or None.
  """
  mu: np.ndarray
  sigma: np.ndarray
  features: Optional[np.ndarray]
  num_samples: int
  dataset_sha256: str
  extractor_identity: str
  labels: Optional[np.ndarray] = None

  @property
  def dim(self) -> int:
    return self.mu.shape[0]


def dataset_sha256(images: np.ndarray, labels: np.ndarray) -> str:
  """sha256 over uint8 `[n, h, w, 3]` image bytes, their shape and labels."""
  images = np.ascontiguousarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError('reference images must be uint8 [n, height, width, 3], '
                     f'got {images.dtype} {images.shape}')
  labels = np.asarray(labels, '<i8')  # int32 and int64 labels hash alike
  if labels.shape != images.shape[:1]:
    raise ValueError(f'labels have shape {labels.shape}, expected '
                     f'[{len(images)}]')
  digest = hashlib.sha256(repr(images.shape).encode())
  digest.update(memoryview(images.reshape(-1)))
  digest.update(labels.tobytes())
  return digest.hexdigest()


def cache_path(cache_dir, dataset_hash: str,
               extractor_identity: str) -> pathlib.Path:
  key = hashlib.sha256(f'v{CACHE_VERSION}\n{dataset_hash}\n'
                       f'{extractor_identity}'.encode()).hexdigest()
  return pathlib.Path(cache_dir) / f'reference_{key[:32]}.npz'


def save(path, stats: ReferenceStats) -> None:
  """Writes `stats` atomically (temporary file in the same directory)."""
  path = pathlib.Path(path)
  arrays = dict(
      mu=stats.mu,
      sigma=stats.sigma,
      num_samples=stats.num_samples,
      dataset_sha256=stats.dataset_sha256,
      extractor_identity=stats.extractor_identity)
  if stats.features is not None:
    arrays['features'] = stats.features
    arrays['labels'] = stats.labels
  atomic_dir.write_file(path, lambda file: np.savez(file, **arrays))


def load(path) -> ReferenceStats:
  with np.load(path) as data:
    return ReferenceStats(
        mu=data['mu'],
        sigma=data['sigma'],
        features=data['features'] if 'features' in data else None,
        labels=data['labels'] if 'labels' in data else None,
        num_samples=int(data['num_samples']),
        dataset_sha256=str(data['dataset_sha256']),
        extractor_identity=str(data['extractor_identity']))


def compute(images: np.ndarray, labels: np.ndarray,
            extractor: features_lib.Extractor, keep_features: bool,
            **extract_kwargs) -> ReferenceStats:
  """Extracts the features of all images and their statistics (no cache)."""
  out = features_lib.extract(extractor.apply_fn, extractor.variables, images,
                             **extract_kwargs)
  mu, sigma = metrics.feature_statistics(out['features'])
  return ReferenceStats(
      mu=mu,
      sigma=sigma,
      features=out['features'].astype(np.float32) if keep_features else None,
      labels=np.asarray(labels, np.int32) if keep_features else None,
      num_samples=len(images),
      dataset_sha256=dataset_sha256(images, labels),
      extractor_identity=extractor.identity)


def reference_statistics(images: np.ndarray,
                         labels: np.ndarray,
                         extractor: features_lib.Extractor,
                         cache_dir=None,
                         keep_features: bool = True,
                         **extract_kwargs) -> ReferenceStats:
  """Statistics of the real images, from `cache_dir` when already computed.

  Args:
    images: uint8 `[n, h, w, 3]` (all images of the reference set).
    labels: int `[n]`.
    extractor: the feature network.
    cache_dir: where cache files live; None: no caching.
    keep_features: also keep the raw features and their labels (KMMD and
      the per-class metrics need them); a cached file without them is
      recomputed.
    **extract_kwargs: `batch_size`, `mesh`, `progress` of `features.extract`.
  """
  digest = dataset_sha256(images, labels)
  path = None
  if cache_dir is not None:
    path = cache_path(cache_dir, digest, extractor.identity)
    if path.is_file():
      stats = load(path)
      if (stats.dataset_sha256,
          stats.extractor_identity) != (digest, extractor.identity):
        raise StatsMismatchError(
            f'{path} describes dataset {stats.dataset_sha256[:12]} with '
            f'{stats.extractor_identity}, not dataset {digest[:12]} with '
            f'{extractor.identity}: delete the file')
      if stats.features is not None or not keep_features:
        return stats
  stats = compute(images, labels, extractor, keep_features, **extract_kwargs)
  if path is not None:
    save(path, stats)
  return stats


def check_compatible(reference: ReferenceStats, features: np.ndarray,
                     extractor_identity: str) -> None:
  """Raises StatsMismatchError unless `features` `[n, d]` fit `reference`."""
  dim = np.shape(features)[-1]
  if dim != reference.dim:
    raise StatsMismatchError(
        f'reference statistics are {reference.dim}-d '
        f'({reference.extractor_identity}) but the new features are {dim}-d '
        f'({extractor_identity}): compute the reference with the same '
        'extractor')
  if extractor_identity != reference.extractor_identity:
    raise StatsMismatchError(
        f'reference statistics come from {reference.extractor_identity} but '
        f'the new features from {extractor_identity}: the distance would be '
        'meaningless')
