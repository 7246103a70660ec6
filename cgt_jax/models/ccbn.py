"""Class-conditional BN of the extended generator (source + new classes).

One layer serves the paper's problem (4): global labels 0..N-1 take the
source classes' own BN parameters, labels N..N+M-1 the new classes'
parameters from knowledge propagation (`kp.KnowledgePropagation`). A
continually extended generator (`models.extensions`) also holds the
frozen layers of its earlier extensions, each serving its own labels.

The source parameters come in BigGAN's two forms, both with "1 + gain":

* per-class tables (CIFAR form, `cond_dim == 0`): `gain/embedding` and
  `bias/embedding` `[N, C]`, looked up by label (no spectral norm);
* a shared class embedding plus hierarchical z chunk (ImageNet form,
  `cond_dim > 0`): `gain` and `bias` are SN linears without bias from the
  conditioning vector `[class embedding, z chunk]` (class part first).
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import extensions
from cgt_jax.models import layers


class ClassConditionalBatchNorm(nn.Module):
  """`BN(x) * gain(y) + bias(y)` for global labels y in [0, N + M).

  Attributes:
    num_classes: N, the source classes.
    cond_dim: 0 for per-class tables, else the width of the class embedding
      (the z chunk width is read from the input).
    num_new_classes: M (0: a plain BigGAN ccbn).
    new_class_layer: `(features, z_dim) -> module` building the layer that
      gives new classes their `(gain, bias)` (`KPOptions.bn_layers`,
      `FreeVectors.bn_layers`); None when M = 0.
    earlier_layers: `(num_classes, factory)` of each earlier extension in
      label order (labels N.. before the newest M), factories like
      `new_class_layer`; their layers run in eval mode (frozen).
    eps: BN eps. sn_eps: spectral-norm eps of the SN linears.
    weights_init: 'ortho' or 'N02'.
  """
  num_classes: int
  cond_dim: int = 0
  num_new_classes: int = 0
  new_class_layer: Optional[Callable] = None
  earlier_layers: tuple = ()
  eps: float = 1e-5
  sn_eps: float = 1e-8
  weights_init: str = 'N02'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self,
               x,
               labels,
               class_embedding=None,
               z_chunk=None,
               train: bool = False):
    """x `[B, H, W, C]`, labels `[B]` int, class_embedding `[B, cond_dim]`
    (shared form; per-class tables: None, or MineGAN's mixture weights
    `[B, N]` for labels >= N, see `_table_gain_bias`)."""
    firsts = extensions.first_labels(
        self.num_classes, [count for count, _ in self.earlier_layers])
    gain, bias = self._source_gain_bias(
        x.shape[-1],
        labels,
        class_embedding,
        z_chunk,
        train,
        used=True if not self.num_new_classes else jnp.any(
            labels < self.num_classes))
    z_dim = 0 if z_chunk is None else z_chunk.shape[-1]
    class_layers = list(self.earlier_layers)
    if self.num_new_classes:
      class_layers.append((self.num_new_classes, self.new_class_layer))
    for index, ((count, make), first) in enumerate(zip(class_layers, firsts)):
      newest = index == len(class_layers) - 1
      member = labels >= first
      if not newest:
        member &= labels < first + count
      onehot = jax.nn.one_hot(labels - first, count)
      # Earlier extensions are frozen: eval mode, their SN vectors stay.
      class_gain, class_bias = make(x.shape[-1], z_dim)(
          onehot,
          z_chunk,
          train and newest,
          used=jnp.any(member) if newest else False)
      gain = jnp.where(member[:, None], class_gain, gain)
      bias = jnp.where(member[:, None], class_bias, bias)
    frozen_stats = None
    if self.num_new_classes:
      frozen_stats = (extensions.generation(labels, firsts), len(firsts))
    out = layers.normalize_batch(self, x, train, self.eps, frozen_stats)
    out = out * gain[:, None, None, :] + bias[:, None, None, :]
    return out.astype(self.dtype)

  def _source_gain_bias(self, features, labels, class_embedding, z_chunk, train,
                        used):
    """The source classes' `(1 + gain, bias)` `[B, C]` (BigGAN ccbn)."""
    init = layers.weight_init(self.weights_init)
    if not self.cond_dim:
      return self._table_gain_bias(features, labels, class_embedding, init)
    cond = class_embedding
    if z_chunk is not None:
      cond = jnp.concatenate([class_embedding, z_chunk], axis=-1)
    linear = lambda name: layers.SNDense(
        features, use_bias=False, eps=self.sn_eps, kernel_init=init, name=name)
    return (1 + linear('gain')(cond, train, used), linear('bias')(cond, train,
                                                                  used))

  def _table_gain_bias(self, features, labels, mixture, init):
    """Per-class tables: each label's rows; with `mixture` `[B, N]`
    (MineGAN's mined class vectors), labels >= N take the mixture's
    weighted sum of the N source rows instead."""
    source = jnp.clip(labels, 0, self.num_classes - 1)
    gain_bias = []
    for name in ('gain', 'bias'):
      table = nn.Embed(
          self.num_classes, features, embedding_init=init, name=name)
      rows = table(source)
      if mixture is not None:
        mixed = jnp.dot(mixture, table.embedding)
        rows = jnp.where((labels >= self.num_classes)[:, None], mixed, rows)
      gain_bias.append(rows)
    return 1 + gain_bias[0], gain_bias[1]
