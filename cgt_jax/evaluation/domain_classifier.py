"""An offline feature network: a small CNN trained on the target dataset.

When no Inception weights are available (no network access), cgt_jax trains
this classifier on the real training images of the dataset (Adam, a few
hundred steps, random horizontal flips) and uses its penultimate layer as
the feature space. Distances in it are *not* FID: they are reported as
`domain_fd` / `domain_kmmd`, together with `class_accuracy` (how often the
classifier assigns a generated image to the class it was generated for).

The trained weights are cached per dataset content and training config:

    CACHE_DIR/domain_classifier_<key>/classifier.json  config, classes, hashes
    CACHE_DIR/domain_classifier_<key>/variables/       orbax StandardCheckpointer
"""

import dataclasses
import functools
import hashlib
import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import linen as nn

from cgt_jax.evaluation import features as features_lib
from cgt_jax.evaluation import stats_cache
from cgt_jax.runtime import atomic_dir

METADATA_FILE = 'classifier.json'
VARIABLES_DIR = 'variables'
# Bump when the architecture or training recipe changes: old caches retire.
VERSION = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Architecture and training recipe (all of it keys the cache)."""
  width: int = 32
  feature_dim: int = 128
  steps: int = 300
  batch_size: int = 64
  learning_rate: float = 1e-3
  seed: int = 0


class DomainClassifier(nn.Module):
  """Four 3x3 conv layers (three with stride 2), global mean, two Dense.

  `__call__(images [b, h, w, 3] in [-1, 1])` returns `(features [b,
  feature_dim], logits [b, num_classes])`; features are the output of the
  penultimate layer. Works at any resolution (global pooling). Swish, not
  ReLU: a dead ReLU unit is a constant feature, which makes the feature
  covariance singular and the Frechet distance's sqrtm unreliable.
  """
  num_classes: int
  width: int = 32
  feature_dim: int = 128

  @nn.compact
  def __call__(self, images: jax.Array):
    x = images
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (4, 2))):
      x = nn.swish(
          nn.Conv(self.width * mult, (3, 3), (stride, stride),
                  name=f'conv{i}')(x))
    x = jnp.mean(x, axis=(1, 2))
    features = nn.swish(nn.Dense(self.feature_dim, name='features')(x))
    return features, nn.Dense(self.num_classes, name='logits')(features)


@functools.lru_cache(maxsize=None)
def apply_fn(num_classes: int, width: int, feature_dim: int):
  """`fn(variables, images in [-1, 1]) -> {'features', 'logits'}` (cached)."""
  model = DomainClassifier(num_classes, width, feature_dim)

  def fn(variables, images):
    feats, logits = model.apply(variables, images)
    return {'features': feats, 'logits': logits}

  return fn


def _train_step(model, tx, batch_size, images, labels, weights, state, rng):
  """One Adam step on a class-balanced random batch (with flips)."""
  params, opt_state = state
  index_rng, flip_rng = jax.random.split(rng)
  index = jax.random.choice(index_rng, len(labels), (batch_size,), p=weights)
  x = features_lib.to_model_range(images[index])
  flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1))
  x = jnp.where(flip, x[:, :, ::-1], x)

  def loss_fn(params):
    _, logits = model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels[index]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), loss


@functools.lru_cache(maxsize=8)
def _compiled_training(num_classes: int, config: TrainConfig):
  """`(init, step, tx)`, jitted once per recipe (repeat runs skip compiling)."""
  model = DomainClassifier(num_classes, config.width, config.feature_dim)
  tx = optax.adam(config.learning_rate)
  step = jax.jit(
      functools.partial(_train_step, model, tx, config.batch_size),
      donate_argnums=3)
  return jax.jit(model.init), step, tx


def train(images: np.ndarray, labels: np.ndarray, num_classes: int,
          config: TrainConfig) -> dict:
  """Trains a DomainClassifier on uint8 `[n, h, w, 3]` images, int `[n]` labels.

  Returns its variables `{'params': ...}` (numpy).
  """
  init, step, tx = _compiled_training(num_classes, config)
  # 'rbg' keys: threefry's bit generator takes XLA:CPU ~0.7 s to compile per
  # initialiser shape; the classifier needs no cross-platform bit equality.
  rng = jax.random.key(config.seed, impl='rbg')
  params = init(rng, jnp.zeros((1,) + images.shape[1:]))['params']
  state = (params, tx.init(params))
  # Class-balanced sampling: few-shot new classes (25 images against 200 of
  # a source class in the demo) would otherwise barely be learnt, and their
  # real images would be classified as the nearest source class.
  counts = np.bincount(labels, minlength=num_classes)
  weights = 1.0 / counts[labels]
  weights = jnp.asarray(weights / weights.sum(), jnp.float32)
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  report_every = max(config.steps // 5, 1)
  for i in range(config.steps):
    state, loss = step(images, labels, weights, state,
                       jax.random.fold_in(rng, i))
    if (i + 1) % report_every == 0:  # a minute or two in the demo
      logging.info('[evaluation] domain classifier step %d/%d: loss %.3f',
                   i + 1, config.steps, float(loss))
  if not np.isfinite(float(loss)):
    raise FloatingPointError('domain classifier training diverged (loss '
                             f'{float(loss)})')
  return {'params': jax.tree_util.tree_map(np.asarray, state[0])}


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
  """A trained domain classifier with its weights and cache identity."""
  num_classes: int
  config: TrainConfig
  variables: dict = dataclasses.field(repr=False)
  identity: str

  def extractor(self) -> features_lib.Extractor:
    fn = apply_fn(self.num_classes, self.config.width, self.config.feature_dim)
    return features_lib.Extractor('domain', self.identity, fn, self.variables)

  def _run(self, images, **extract_kwargs) -> dict:
    extractor = self.extractor()
    return features_lib.extract(extractor.apply_fn, extractor.variables, images,
                                **extract_kwargs)

  def features(self, images, **extract_kwargs) -> np.ndarray:
    """`[b, feature_dim]` penultimate-layer features of uint8/[-1,1] images."""
    return self._run(images, **extract_kwargs)['features']

  def logits(self, images, **extract_kwargs) -> np.ndarray:
    """`[b, num_classes]` logits of uint8 or [-1, 1] images."""
    return self._run(images, **extract_kwargs)['logits']


def cache_key(dataset_hash: str, num_classes: int, config: TrainConfig) -> str:
  recipe = json.dumps(
      dict(
          dataclasses.asdict(config), num_classes=num_classes, version=VERSION),
      sort_keys=True)
  return hashlib.sha256(f'{dataset_hash}\n{recipe}'.encode()).hexdigest()


def _save(directory: pathlib.Path, variables, metadata: dict) -> None:
  staging = atomic_dir.create_staging(directory)
  try:
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / VARIABLES_DIR, variables)
    checkpointer.wait_until_finished()
  except BaseException:
    atomic_dir.discard(staging)
    raise
  atomic_dir.commit(staging, directory)


def _abstract_variables(num_classes: int, config: TrainConfig, shape):
  model = DomainClassifier(num_classes, config.width, config.feature_dim)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape)))


def load_or_train(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cache_dir=None,
    config: TrainConfig = TrainConfig()) -> Classifier:
  """The classifier of this dataset: from `cache_dir`, else trained (+saved).

  `images` uint8 `[n, h, w, 3]` and `labels` int `[n]` are the real training
  images of the dataset; the cache key is their content hash plus `config`.
  """
  labels = np.asarray(labels)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels span {labels.min()}..{labels.max()}, outside '
                     f'0..{num_classes - 1}')
  dataset_hash = stats_cache.dataset_sha256(images, labels)
  key = cache_key(dataset_hash, num_classes, config)
  identity = f'domain-classifier-{key[:32]}'
  directory = None
  if cache_dir is not None:
    directory = pathlib.Path(
        cache_dir).absolute() / f'domain_classifier_{key[:32]}'
    variables = _restore(directory, num_classes, config, images.shape[1:])
    if variables is not None:
      return Classifier(num_classes, config, variables, identity)
  logging.info(
      '[evaluation] training the offline domain classifier (%d classes, %d '
      'images, %d steps)%s', num_classes, len(labels), config.steps,
      f'; cached in {directory} for later runs' if directory else '')
  variables = train(images, labels, num_classes, config)
  if directory is not None:
    metadata = {
        'num_classes': num_classes,
        'config': dataclasses.asdict(config),
        'dataset_sha256': dataset_hash,
        'version': VERSION,
    }
    _save(directory, variables, metadata)
  return Classifier(num_classes, config, variables, identity)


def _restore(directory: pathlib.Path, num_classes: int, config: TrainConfig,
             image_shape):
  """Cached variables, or None when absent or unreadable (then retrained)."""
  if not (directory / METADATA_FILE).is_file():
    return None
  target = _abstract_variables(num_classes, config, image_shape)
  try:
    return ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR, target)
  except (FileNotFoundError, ValueError, KeyError) as error:
    warnings.warn(f'{directory} is unreadable ({type(error).__name__}); '
                  'training the domain classifier again')
    return None
