"""Evaluation of a stage's generator while it trains (and at its end).

Generated samples of the stage's classes (uniform labels, fixed z, eval-mode
BN) are compared with the real images of those classes:

* with Inception weights (`config.eval.inception_dir`, from
  tools/convert_inception.py): FID, KMMD and IS;
* offline, with the domain classifier that cgt_jax trains on the real
  images of every known class (source and new): `domain_fd`, `domain_kmmd`
  and `class_accuracy` (the fraction of samples generated for class y that
  the classifier assigns to y, among ALL classes). Never reported as FID.

Reference statistics and the classifier are cached by dataset content.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgt_jax import parallel
from cgt_jax import steps
from cgt_jax.evaluation import domain_classifier
from cgt_jax.evaluation import features
from cgt_jax.evaluation import stats_cache
import cgt_jax.evaluation as evaluation_lib


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path.home() / '.cache' / 'cgt_jax'


@dataclasses.dataclass
class StageEvaluator:
  """Callable `g_variables -> metrics dict` for one stage."""
  generator: object
  extractor: features.Extractor
  reference: stats_cache.ReferenceStats
  labels: np.ndarray  # global labels of the samples
  label_shift: int  # global label -> classifier label
  z: jax.Array
  batch_size: int
  mesh: object

  def samples(self, g_variables) -> np.ndarray:
    """uint8 `[n, H, W, 3]` samples in eval mode, generated in batches."""
    generate = _jitted_generator(self.generator)
    g_variables = jax.device_put(g_variables, parallel.replicated(self.mesh))
    out = []
    for start in range(0, len(self.labels), self.batch_size):
      stop = start + self.batch_size
      z, labels = self.z[start:stop], jnp.asarray(self.labels[start:stop])
      if len(labels) % self.mesh.size == 0:  # sharded like training
        z, labels = jax.device_put((z, labels),
                                   parallel.data_sharding(self.mesh))
      else:
        z, labels = jax.device_put((z, labels), parallel.replicated(self.mesh))
      images = generate(g_variables, z, labels)
      out.append(
          np.asarray(jnp.round((images + 1) * 127.5).clip(0, 255), np.uint8))
    return np.concatenate(out)

  def __call__(self, g_variables) -> dict:
    results = evaluation_lib.evaluate_samples(
        self.samples(g_variables),
        self.labels - self.label_shift,
        self.reference,
        self.extractor,
        batch_size=self.batch_size,
        mesh=self.mesh,
        progress=False)
    per_class = results.pop('class_accuracy_per_class', None)
    metrics = {k: float(v) for k, v in results.items()}
    if per_class is not None:
      classes = np.unique(self.labels - self.label_shift)
      metrics['per_class_accuracy'] = [float(per_class[c]) for c in classes]
    return metrics


_GENERATORS = {}


def _jitted_generator(generator):
  if generator not in _GENERATORS:
    _GENERATORS[generator] = jax.jit(
        lambda v, z, y: steps.generate(generator, v, z, y))
  return _GENERATORS[generator]


def classifier_data(data, target_offset: int):
  """Real images of every known class in global labels (source first)."""
  parts = [(data.target.images, data.target.labels + target_offset)]
  if data.source is not None:
    parts.insert(0, (data.source.images, data.source.labels))
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
  return images, labels


def make(config, stage, models, data, mesh) -> StageEvaluator:
  """The evaluator of `stage` (classifier trained/loaded on first use)."""
  cache = pathlib.Path(config.eval.cache_dir or default_cache_dir())
  offset = models.label_offset
  stage_data = data.source if stage == 'pretrain' else data.target
  num_classes = stage_data.num_classes
  if config.eval.inception_dir:
    extractor = features.inception_extractor(config.eval.inception_dir)
    shift = offset
  else:
    # The classifier's labels: source classes (when their images are
    # loaded) first, then the new classes.
    target_offset = 0 if data.source is None else data.source.num_classes
    images, labels = classifier_data(data, target_offset)
    # Generator label -> classifier label: the new classes sit at `offset`
    # in the generator (0 for a scratch model) and at `target_offset` here.
    shift = 0 if stage == 'pretrain' else offset - target_offset
    classifier = domain_classifier.load_or_train(
        images, labels,
        int(labels.max()) + 1, cache,
        domain_classifier.TrainConfig(steps=config.eval.classifier_steps))
    extractor = classifier.extractor()
  reference = stats_cache.reference_statistics(
      stage_data.images,
      stage_data.labels,
      extractor,
      cache,
      batch_size=config.eval.batch_size,
      mesh=mesh,
      progress=False)
  n = config.eval.num_samples
  sample_labels = offset + np.arange(n) % num_classes
  z = jax.random.normal(
      jax.random.key(config.seed + 2), (n, models.generator.dim_z))
  return StageEvaluator(models.generator, extractor, reference,
                        sample_labels.astype(np.int32), shift, z,
                        config.eval.batch_size, mesh)


def best_metric(config) -> tuple:
  """(metric name, 'min' or 'max') that picks the best checkpoint."""
  name = config.eval.best_metric or ('fid' if config.eval.inception_dir else
                                     'domain_fd')
  return name, 'max' if name in ('class_accuracy', 'is') else 'min'
