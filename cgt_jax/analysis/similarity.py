"""What knowledge propagation learned: similarity scores and pseudo-classes.

Two views of a transferred generator (paper sec. 5.5):

* the similarity scores S^{y'} of every conditional BN layer, for gamma and
  for beta: which source classes new class y' combines, and with which
  weights (eq. 5);
* pseudo-classes (Fig. 8): images drawn with the BN parameters of one row
  of the updated prior alone, "instead of combining them": what source
  class k has become after all new classes trained the prior together.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cgt_jax.training import steps
from cgt_jax.analysis import visualize
from cgt_jax.models import extensions
from cgt_jax.models import kp

SHARED_LAYER = 'shared'  # the name of a generator's one shared pair


def applies_to(generator) -> bool:
  """Whether `generator` has knowledge propagation to analyse (a `kp`
  transfer; BSA's free vectors and MineGAN's miners have no similarity)."""
  return bool(getattr(generator, 'num_new_classes', 0)) and isinstance(
      generator.new_classes, kp.KPOptions)


def _check_transferred(generator):
  if not getattr(generator, 'num_new_classes', 0):
    raise ValueError('this generator has no new classes, hence no knowledge '
                     'propagation to analyse: pass a transferred model '
                     '(WORKDIR/transfer/model or WORKDIR/finetune/model)')


def _similarity_which(name: str):
  """'gamma' or 'beta' for a similarity layer's module name, else None."""
  parsed = kp.parse_layer(name or '')
  return parsed[1] if parsed and parsed[0] is kp.Part.SIMILARITY else None


def _is_similarity(module, method_name) -> bool:
  return method_name == '__call__' and bool(_similarity_which(module.name))


def _layer_order(name: str):
  """'block_10/bn2' sorts after 'block_2/bn1' (numbers, not text)."""
  return [int(n) for n in re.findall(r'\d+', name)]


def similarity_scores(generator, variables) -> dict:
  """Effective scores `{layer: {'gamma': [M, N], 'beta': [M, N]}}`.

  Row m is S^{N+m} = SN(A) e_m + a exactly as the generator computes it in
  eval mode (spectral norm from the stored `u` where the model has it): the
  outputs of the similarity layers are captured from a forward pass of the
  M new-class labels, not recomputed, so they cannot drift from the model.
  Layers are named like the parameters ('block_0/bn1', ...), in network
  order; with shared similarity there is one layer, 'shared'.

  A continually extended generator (`models.extensions`): the rows are its
  newest classes, the N columns every class it knew before them (source
  classes, then the classes earlier extensions added, in label order).
  """
  _check_transferred(generator)
  num_new = generator.num_new_classes
  labels = generator.first_new_label + jnp.arange(num_new)
  z = jnp.zeros((num_new, generator.dim_z))
  forward = jax.jit(
      functools.partial(
          generator.apply,
          capture_intermediates=_is_similarity,
          mutable=['intermediates']))
  _, state = forward(variables, z, labels)
  scores = {}
  flat = traverse_util.flatten_dict(state['intermediates'])
  for path, outputs in flat.items():
    if extensions.index_of('/'.join(path)) is not None:
      continue  # an earlier extension's (continual extension)
    which = _similarity_which(path[-2])
    # A shared pair is called once per BN layer, always with the same result.
    layer = '/'.join(path[:-3]) or SHARED_LAYER
    scores.setdefault(layer, {})[which] = np.asarray(outputs[0])
  if not scores:
    raise ValueError('this generator has no similarity layers (a model '
                     'without knowledge propagation): nothing to analyse')
  return dict(sorted(scores.items(), key=lambda item: _layer_order(item[0])))


def mean_scores(scores: dict) -> np.ndarray:
  """`[M, N]`: the scores averaged over layers and over gamma and beta."""
  return np.mean([s[w] for s in scores.values() for w in ('gamma', 'beta')],
                 axis=0)


def strongest_sources(scores: dict,
                      count: int,
                      relative: bool = False) -> np.ndarray:
  """`[M, count]` source classes with the highest mean score per new class.

  Scores are not normalised (no softmax), so "borrows most from" means the
  largest signed weight. Much of it is common to all new classes (the
  similarity bias `a` is shared); `relative=True` ranks by the score minus
  its mean over the new classes instead: what sets each new class apart.
  """
  mean = mean_scores(scores)
  if relative:
    mean = mean - mean.mean(axis=0)
  return np.argsort(-mean, axis=1, kind='stable')[:, :count]


def pseudo_class_variables(variables: dict,
                           source_class: int,
                           new_class: int = 0) -> dict:
  """Variables in which label N + `new_class` renders pseudo-class k.

  Every similarity layer scores exactly e_k for that new class (kernel entry
  `[new_class, source_class]` = 1, everything else and the bias 0), and the
  KP terms that are not a row of the prior are dropped: the residuals and
  the shared offsets (prior bias, z projection bias). The new class then
  gets gamma = 1 + P_k (+ SN(Z)^T z), the updated base representation of
  source class k. Before training this is source class k itself in the
  CIFAR form; the ImageNet form gives the prior its own spectral norm
  (reference caveat), so there it equals class k up to that rescaling.

  A single non-zero entry keeps spectral norm exact: with `u` = e_k one power
  iteration gives sigma = 1 bitwise, where a zero kernel would give 0 / 0.
  Other labels are left as they were; `variables` is not modified.
  """
  out = dict(variables)
  out['params'] = _map_leaves(
      variables['params'],
      functools.partial(
          _pseudo_class_param, source_class=source_class, new_class=new_class))
  if 'sn' in variables:
    out['sn'] = _map_leaves(
        variables['sn'],
        functools.partial(_pseudo_class_u, source_class=source_class))
  return out


def _map_leaves(tree: dict, fn) -> dict:
  """A new tree with `fn('a/b/name', leaf)` for every leaf."""
  flat = traverse_util.flatten_dict(tree, sep='/')
  mapped = {key: fn(key, leaf) for key, leaf in flat.items()}
  return traverse_util.unflatten_dict(mapped, sep='/')


def _pseudo_class_param(key: str, value, source_class: int, new_class: int):
  """One parameter of `pseudo_class_variables` (others are passed through,
  not copied: a 128 px BigGAN is 280 MB)."""
  part = kp.part_of(key)
  if part is kp.Part.SIMILARITY:
    picked = np.zeros(value.shape, value.dtype)
    if key.endswith('kernel'):
      _check_index('new_class', new_class, value.shape[0])
      _check_index('source_class', source_class, value.shape[1])
      picked[new_class, source_class] = 1
    return picked
  # Dropped: the residuals, and the offsets that are not a row of the prior
  # but shared by all new classes (prior bias, CIFAR form; z projection
  # bias, ImageNet form).
  shared_offset = part in (kp.Part.PRIOR,
                           kp.Part.Z_PROJECTION) and key.endswith('/bias')
  if part is kp.Part.RESIDUAL or shared_offset:
    return np.zeros(value.shape, value.dtype)
  return value


def _pseudo_class_u(key: str, u, source_class: int):
  """The SN vector of a similarity layer: e_k, so that sigma is exactly 1."""
  if kp.part_of(key) is not kp.Part.SIMILARITY:
    return u
  return np.eye(np.shape(u)[0], dtype=np.float32)[source_class]


def _check_index(name: str, index: int, size: int):
  if not 0 <= index < size:
    raise ValueError(f'{name}={index} is out of range: the model has {size} '
                     f'(0..{size - 1})')


def _render_each(generator, variables_and_labels, z) -> np.ndarray:
  """`[K, B, R, R, 3]`: for each `(variables, label)`, the images of `label`
  for z `[B, dim_z]` (eval mode, one compiled forward for all)."""
  render = jax.jit(functools.partial(steps.generate, generator))
  return np.stack([
      np.asarray(render(variables, z, jnp.full((z.shape[0],), label)))
      for variables, label in variables_and_labels
  ])


def class_images(generator, variables: dict, labels, z) -> np.ndarray:
  """`[K, B, R, R, 3]` images of the global `labels` for z `[B, dim_z]`."""
  variables = jax.device_put(variables)
  return _render_each(generator, ((variables, label) for label in labels), z)


def pseudo_class_images(generator,
                        variables: dict,
                        source_classes,
                        z,
                        new_class: int = 0) -> np.ndarray:
  """`[K, B, R, R, 3]` images of the pseudo-classes `source_classes` for z
  `[B, dim_z]` (see `pseudo_class_variables`)."""
  _check_transferred(generator)
  variables = jax.device_put(variables)  # the unchanged weights: sent once
  label = generator.first_new_label + new_class
  return _render_each(generator,
                      ((pseudo_class_variables(variables, k, new_class), label)
                       for k in source_classes), z)


def pseudo_class_grid(generator,
                      variables: dict,
                      source_classes,
                      num_samples: int = 4,
                      seed: int = 0,
                      source_model=None) -> np.ndarray:
  """A uint8 picture, one row per source class k: `num_samples` images of
  class k, then pseudo-class k for the same z (the paper's Fig. 8 next to
  where it started).

  `source_model`: `(generator, variables)` that draws class k, e.g. the
  source BigGAN before transfer; by default the transferred model itself,
  whose BN running statistics have since been gathered on new classes.
  """
  z = jax.random.normal(jax.random.key(seed), (num_samples, generator.dim_z))
  source = class_images(*(source_model or (generator, variables)),
                        source_classes, z)
  pseudo = pseudo_class_images(generator, variables, source_classes, z)
  rows = np.concatenate([source, pseudo], axis=1)
  return visualize.grid(rows.reshape(-1, *rows.shape[2:]), len(rows))
