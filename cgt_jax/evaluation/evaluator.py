"""Evaluation of a stage's generator while it trains (and at its end).

Generated samples of the stage's classes (uniform labels, fixed z, eval-mode
BN) are compared with the real images of those classes:

* with Inception weights (`config.eval.inception_dir`, from
  tools/convert_inception.py): FID, KMMD and IS;
* offline, with the domain classifier that cgt_jax trains on the real
  images of every known class (source and new): `domain_fd`, `domain_kmmd`
  and `class_accuracy` (the fraction of samples generated for class y that
  the classifier assigns to y, among ALL classes). Never reported as FID.

Per class, on the same features: the intra-class FD (`intra_fid` /
`domain_intra_fd`) and precision, recall, density and coverage, as means
over the classes and per-class lists (`evaluation.evaluate_samples`):
what catches a generator that draws the same image for every z.

Reference statistics and the classifier are cached by dataset content. The
reference images are the stage's training images (the paper's protocol),
or a held-out image folder (`config.eval.reference`); the classifier always
trains on the training images.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax.runtime import cache_dir
from cgt_jax.runtime import parallel
from cgt_jax.training import steps
from cgt_jax.evaluation import domain_classifier
from cgt_jax.evaluation import features
from cgt_jax.evaluation import stats_cache
import cgt_jax.evaluation as evaluation_lib


@dataclasses.dataclass
class StageEvaluator:
  """Callable `g_variables -> metrics dict` for one stage.

  Attributes:
    labels: the generator labels of the samples (the stage's classes).
    scored_labels: the same classes as the feature network knows them (the
      domain classifier's labels; unused by Inception); None for the one
      class of an unconditional model (no class accuracy).
  """
  generator: object
  extractor: features.Extractor
  reference: stats_cache.ReferenceStats
  labels: np.ndarray
  scored_labels: np.ndarray
  z: jax.Array
  batch_size: int
  mesh: object

  def redrawn(self, seed: int) -> 'StageEvaluator':
    """The same evaluator with another draw of its latents (the labels stay):
    what `evaluation.noise` re-evaluates one checkpoint with."""
    return dataclasses.replace(
        self, z=jax.random.normal(jax.random.key(seed), self.z.shape))

  def samples(self, g_variables) -> np.ndarray:
    """uint8 `[n, H, W, 3]` samples in eval mode, generated in batches."""
    g_variables = jax.device_put(
        parallel.local_copy(g_variables, self.mesh),
        parallel.replicated(self.mesh))
    out = []
    for start in range(0, len(self.labels), self.batch_size):
      stop = start + self.batch_size
      z, labels = self.z[start:stop], jnp.asarray(self.labels[start:stop])
      if len(labels) % self.mesh.size == 0:  # sharded like training
        z, labels = jax.device_put((z, labels),
                                   parallel.data_sharding(self.mesh))
      else:
        z, labels = jax.device_put((z, labels), parallel.replicated(self.mesh))
      images = steps.jitted_generate(self.generator, g_variables, z, labels)
      out.append(
          np.asarray(jnp.round((images + 1) * 127.5).clip(0, 255), np.uint8))
    return np.concatenate(out)

  def __call__(self, g_variables) -> dict:
    results = evaluation_lib.evaluate_samples(
        self.samples(g_variables),
        self.scored_labels,
        self.reference,
        self.extractor,
        sample_classes=self.labels,
        batch_size=self.batch_size,
        mesh=self.mesh,
        progress=False)
    per_class = results.pop('class_accuracy_per_class', None)
    metrics = {
        k: v if isinstance(v, list) else float(v) for k, v in results.items()
    }
    if per_class is not None and self.scored_labels is not None:
      classes = np.unique(self.scored_labels)
      metrics['per_class_accuracy'] = [float(per_class[c]) for c in classes]
    return metrics


def _extractor(config, data, cache):
  """Inception with its weights, else the domain classifier trained (or
  loaded from the cache) on every class the run knows."""
  if config.eval.inception_dir:
    return features.inception_extractor(config.eval.inception_dir)
  known = data.known_classes()
  classifier = domain_classifier.load_or_train(
      known.images, known.labels, known.num_classes, cache,
      domain_classifier.TrainConfig(steps=config.eval.classifier_steps))
  return classifier.extractor()


def make(config, generator, dataset, data, mesh) -> StageEvaluator:
  """The evaluator of a stage: `generator`'s samples of the classes of
  `dataset` (one of `data`'s splits, the generator's labels) scored against
  its real images (classifier trained or loaded on first use).

  With several processes every process evaluates alike on its own devices
  (feature extraction gathers its outputs on one host).
  """
  mesh = parallel.local_mesh(mesh)
  cache = pathlib.Path(config.eval.cache_dir or cache_dir.default())
  extractor = _extractor(config, data, cache)
  real = reference_images(config, dataset)
  reference = stats_cache.reference_statistics(
      real.images,
      real.labels,
      extractor,
      cache,
      batch_size=config.eval.batch_size,
      mesh=mesh,
      progress=False)
  n = config.eval.num_samples
  first, end = dataset.label_range
  labels = (first + np.arange(n) % (end - first)).astype(np.int32)
  z = jax.random.normal(jax.random.key(config.seed + 2), (n, generator.dim_z))
  return StageEvaluator(generator, extractor, reference, labels,
                        data.known_labels(dataset, labels), z,
                        config.eval.batch_size, mesh)


def reference_images(config, dataset):
  """The real images the samples of `dataset`'s classes are compared with:
  `dataset` itself, the dataset's test split (`config.eval.reference`
  'test'), or a held-out image folder (the same classes, labelled like
  `dataset`)."""
  root = config.eval.get('reference', '')
  if not root:
    return dataset
  if root == 'test':
    from cgt_jax.data import splits  # pylint: disable=g-import-not-at-top
    return splits.test_split(config.data, dataset)
  from cgt_jax.data import image_folder  # pylint: disable=g-import-not-at-top
  held_out = image_folder.load_image_folder(
      root, dataset.images.shape[1], class_names=dataset.class_names)
  return held_out.relabelled(dataset.label_range[0])


def reference_name(config) -> str:
  """What the metrics compared with, for summaries and tables."""
  root = config.eval.get('reference', '')
  if root == 'test':
    return 'the test split'
  return f'held-out images in {root}' if root else 'the training images'


def best_metric(config) -> tuple:
  """(metric name, 'min' or 'max') that picks the best checkpoint."""
  name = config.eval.best_metric or ('fid' if config.eval.inception_dir else
                                     'domain_fd')
  return name, 'max' if name in ('class_accuracy', 'is') else 'min'
