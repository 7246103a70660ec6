"""Class-conditional BN of the extended generator (source + new classes).

One layer serves the paper's problem (4): global labels 0..N-1 take the
source classes' own BN parameters, labels N..N+M-1 the new classes'
parameters from knowledge propagation (`kp_ccbn.KnowledgePropagation`).

The source parameters come in BigGAN's two forms, both with "1 + gain":

* per-class tables (CIFAR form, `cond_dim == 0`): `gain/embedding` and
  `bias/embedding` `[N, C]`, looked up by label (no spectral norm);
* a shared class embedding plus hierarchical z chunk (ImageNet form,
  `cond_dim > 0`): `gain` and `bias` are SN linears without bias from the
  conditioning vector `[class embedding, z chunk]` (class part first).
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import kp_ccbn
from cgt_jax.models import layers


class ClassConditionalBatchNorm(nn.Module):
  """`BN(x) * gain(y) + bias(y)` for global labels y in [0, N + M).

  Attributes:
    num_classes: N, the source classes.
    cond_dim: 0 for per-class tables, else the width of the class embedding
      (the z chunk width is read from the input).
    num_new_classes: M (0: a plain BigGAN ccbn).
    eps: BN eps. sn_eps: spectral-norm eps of the SN linears.
    weights_init: 'ortho' or 'N02'.
    kp_options: knowledge-propagation switches.
    kp_similarity: shared `(S_gamma, S_beta)` modules, if shared.
  """
  num_classes: int
  cond_dim: int = 0
  num_new_classes: int = 0
  eps: float = 1e-5
  sn_eps: float = 1e-8
  weights_init: str = 'N02'
  kp_options: kp_ccbn.KPOptions = kp_ccbn.KPOptions()
  kp_similarity: Optional[tuple] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self,
               x,
               labels,
               class_embedding=None,
               z_chunk=None,
               train: bool = False):
    """x `[B, H, W, C]`, labels `[B]` int, class_embedding `[B, cond_dim]`."""
    is_new = labels >= self.num_classes
    gain, bias = self._source_gain_bias(
        x.shape[-1],
        labels,
        class_embedding,
        z_chunk,
        train,
        used=True if not self.num_new_classes else jnp.any(~is_new))
    if self.num_new_classes:
      onehot = jax.nn.one_hot(labels - self.num_classes, self.num_new_classes)
      new_gain, new_bias = kp_ccbn.KnowledgePropagation(
          features=x.shape[-1],
          num_source_classes=self.num_classes,
          spectral=self.cond_dim > 0,
          z_dim=0 if z_chunk is None else z_chunk.shape[-1],
          sn_eps=self.sn_eps,
          weights_init=self.weights_init,
          use_residuals=self.kp_options.use_residuals,
          propagate=self.kp_options.propagate,
          similarity=self.kp_similarity,
          name='kp')(
              onehot, z_chunk, train, used=jnp.any(is_new))
      gain = jnp.where(is_new[:, None], new_gain, gain)
      bias = jnp.where(is_new[:, None], new_bias, bias)
    out = layers.normalize_batch(self, x, train, self.eps,
                                 ~is_new if self.num_new_classes else None)
    out = out * gain[:, None, None, :] + bias[:, None, None, :]
    return out.astype(self.dtype)

  def _source_gain_bias(self, features, labels, class_embedding, z_chunk, train,
                        used):
    """The source classes' `(1 + gain, bias)` `[B, C]` (BigGAN ccbn)."""
    init = layers.weight_init(self.weights_init)
    if not self.cond_dim:
      source = jnp.clip(labels, 0, self.num_classes - 1)
      table = lambda name: nn.Embed(
          self.num_classes, features, embedding_init=init, name=name)
      return 1 + table('gain')(source), table('bias')(source)
    cond = class_embedding
    if z_chunk is not None:
      cond = jnp.concatenate([class_embedding, z_chunk], axis=-1)
    linear = lambda name: layers.SNDense(
        features, use_bias=False, eps=self.sn_eps, kernel_init=init, name=name)
    return (1 + linear('gain')(cond, train, used), linear('bias')(cond, train,
                                                                  used))
