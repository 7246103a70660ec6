r"""Knowledge-propagation conditional BN (cGANTransfer, Shahbazi et al. 2021).

The paper conditions BigGAN through class-conditional BN (its eq. 2):

    f'_l = gamma_l^y * (f_l - mu_l) / sigma_l + beta_l^y .

A new class y' in {N+1, ..., N+M} gets its scale and shift as a layer-wise
linear combination of the N source classes' ones (eq. 5), where the combined
source parameters are a trainable copy, the "updatable prior" that the new
classes share (eq. 6), plus residuals (sec. 4.3):

    gamma_l^{y'} = [gamma^_l^1 ... gamma^_l^N] S_{gamma_l}^{y'} + r_{gamma_l}^{y'}
    beta_l^{y'}  = [beta^_l^1  ... beta^_l^N ] S_{beta_l}^{y'}  + r_{beta_l}^{y'}

trained with (eq. 7)

    L = L_g + lambda_r sum_l sum_y' (|r_gamma|^2 + |r_beta|^2)
            + lambda_s sum_l sum_y' (|S_gamma|_1 + |S_beta|_1).

This module implements the equations exactly as the authors' code does, which
is more specific than the paper (see reference notes, section 2):

* S^{y'} = A e_{y'} + a: a linear layer on the one-hot of the new class, so
  the bias `a` is shared by all new classes; no softmax, no normalisation.
* The prior is the matrix of per-source-class BN contributions
  P [N, C] (row k = class k's offset), so gamma = 1 + S^T P (+ z term) + r
  keeps BigGAN's "1 + gain" convention.
* ImageNet variant (source G with shared embedding and hierarchical z): A, P
  and the z projection Z each carry their own spectral norm, and
  gamma = 1 + SN(P)^T s + (SN(Z)^T z + c) + R^T e.
* CIFAR variant (per-class BN tables): plain linear layers, and the prior
  has a (random, trainable) bias.
* The regularisers sum, over tensors, the MEAN of |.| (similarity weights
  and biases) and of (.)^2 (residuals): `kp_regularizers`.

`propagate_source_knowledge` is the authors' `load_previous_knowledge`: it
fills the prior (and Z) from the source generator's BN parameters.
"""

import dataclasses
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from cgt_jax.models import layers
from cgt_jax.models import variables

# Spectral-norm eps of the layers cGANTransfer adds with PyTorch's default
# (similarity and z projection); the prior uses the source model's SN eps.
KP_DEFAULT_SN_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class KPOptions:
  """Architecture switches of the knowledge-propagation layer.

  Attributes:
    use_residuals: add the per-class residuals r (paper sec. 4.3); the
      ablation "without residuals" sets this False.
    shared_similarity: one similarity matrix pair (S_gamma, S_beta) shared by
      all BN layers instead of one per layer (Table 2 ablation).
    propagate: False drops the similarity and the prior, leaving each new
      class free per-layer vectors (the residuals) plus the z projection:
      the BSA baseline, "cGANTransfer without knowledge propagation"
      (cgt_jax/methods.py).
  Whether the prior is updatable or frozen is a training choice, made by
  the trainable-parameter rules (`cgt_jax.trainable`).
  """
  use_residuals: bool = True
  shared_similarity: bool = False
  propagate: bool = True


def similarity_layer(num_source_classes: int,
                     spectral: bool,
                     init: str,
                     name: Optional[str] = None) -> layers.SNDense:
  """S = A onehot + a: maps a new-class one-hot `[B, M]` to scores `[B, N]`."""
  return layers.SNDense(
      num_source_classes,
      use_bias=True,
      eps=KP_DEFAULT_SN_EPS,
      spectral=spectral,
      kernel_init=layers.weight_init(init),
      name=name)


class KnowledgePropagation(nn.Module):
  """Gain and bias `[B, C]` of new classes from the source classes' BN terms.

  Attributes:
    features: C, the channels of the BN layer.
    num_source_classes: N.
    spectral: the ImageNet variant (SN on similarity, prior and z layers).
    z_dim: width of the hierarchical z chunk (0: no z projection).
    sn_eps: SN eps of the prior (the source model's SN eps).
    weights_init: 'ortho' or 'N02', for the similarity and residual weights.
    similarity: `(S_gamma, S_beta)` modules shared across layers, or None
      for this layer's own pair.
  """
  features: int
  num_source_classes: int
  spectral: bool
  z_dim: int = 0
  sn_eps: float = 1e-6
  weights_init: str = 'ortho'
  use_residuals: bool = True
  propagate: bool = True
  similarity: Optional[tuple] = None

  @nn.compact
  def __call__(self,
               onehot,
               z_chunk=None,
               train: bool = False,
               used: Any = True):
    """`onehot` `[B, M]` of the new class, `z_chunk` `[B, z_dim]` or None."""
    if not self.propagate:
      sim_gamma = sim_beta = None
    elif self.similarity is None:
      sim_gamma = similarity_layer(self.num_source_classes, self.spectral,
                                   self.weights_init, 'similarity_gamma')
      sim_beta = similarity_layer(self.num_source_classes, self.spectral,
                                  self.weights_init, 'similarity_beta')
    else:
      sim_gamma, sim_beta = self.similarity
    gain = 1 + self._propagate('gamma', sim_gamma, onehot, z_chunk, train, used)
    bias = self._propagate('beta', sim_beta, onehot, z_chunk, train, used)
    return gain, bias

  def _propagate(self, which, similarity, onehot, z_chunk, train, used):
    """P^T S(onehot) [+ Z^T z + c] [+ R^T onehot] for 'gamma' or 'beta'."""
    out = 0
    if similarity is not None:
      scores = similarity(onehot, train, used)
      prior = layers.SNDense(
          self.features,
          use_bias=not self.spectral,
          eps=self.sn_eps,
          spectral=self.spectral,
          kernel_init=layers.weight_init(self.weights_init),
          name=f'prior_{which}')
      out = prior(scores, train, used)
    if self.z_dim:
      z_proj = layers.SNDense(
          self.features,
          use_bias=True,
          eps=KP_DEFAULT_SN_EPS,
          spectral=self.spectral,
          kernel_init=layers.weight_init(self.weights_init),
          name=f'z_proj_{which}')
      out = out + z_proj(z_chunk, train, used)
    if self.use_residuals:
      residual = layers.SNDense(
          self.features,
          use_bias=False,
          spectral=False,
          kernel_init=layers.weight_init(self.weights_init),
          name=f'residual_{which}')
      out = out + residual(onehot)
    return out


# ----------------------------------------------------------------------------
# Initialising the prior from the source generator (load_previous_knowledge)
# ----------------------------------------------------------------------------


def propagate_source_knowledge(params: dict) -> dict:
  """Fills every KP prior (and z projection) from the source BN parameters.

  Per conditional BN layer, for gamma (and alike for beta with `bias`):

  * per-class tables (CIFAR form): `prior_gamma.kernel = gain.embedding`,
    i.e. row k is source class k's gain offset;
  * shared embedding E + SN linear W over [class part, z chunk] (ImageNet
    form): `prior_gamma.kernel = E @ W[:D]` (row k = the class-k part of the
    raw, un-normalised pretrained linear) and `z_proj_gamma.kernel = W[D:]`.

  Args:
    params: the extended generator's `params` (KP layers freshly initialised).
  Returns:
    A new params tree; nothing else is changed.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  shared = flat.get('shared/embedding')
  out = dict(flat)
  for key in flat:
    match = re.fullmatch(r'(.*)/kp/(prior|z_proj)_(gamma|beta)/kernel', key)
    if not match:
      continue
    bn, kind, which = match.groups()
    source = 'gain' if which == 'gamma' else 'bias'
    if shared is None:
      # A copy: sharing one buffer with the source table would break donation.
      out[key] = jnp.array(flat[f'{bn}/{source}/embedding'], copy=True)
      continue
    weight = jnp.asarray(flat[f'{bn}/{source}/kernel'])
    dim = shared.shape[1]
    if kind == 'z_proj':
      out[key] = weight[dim:]
    else:
      out[key] = jnp.matmul(
          jnp.asarray(shared),
          weight[:dim],
          precision=jax.lax.Precision.HIGHEST)
  return traverse_util.unflatten_dict(out, sep='/')


def init_from_source(source_variables: dict, fresh_variables: dict) -> dict:
  """The extended generator's variables, built from a source generator.

  Every variable the source has (weights, BN statistics, SN vectors) is
  copied into the freshly initialised extended generator; the KP layers keep
  their fresh initialisation except the prior and z projection, which
  `propagate_source_knowledge` fills. This is the authors' sequence
  `load_state_dict(source, strict=False); load_previous_knowledge()`. The
  source BN statistics are also kept, frozen, as `source_stats` (the
  source classes' eval-mode statistics; `layers.normalize_batch`).

  Raises:
    ValueError naming the variable if a source variable is missing from the
    extended model or has another shape.
  """
  merged = variables.merge(source_variables, fresh_variables,
                           'extended generator')
  merged['params'] = propagate_source_knowledge(merged['params'])
  if layers.SOURCE_STATS_COLLECTION in fresh_variables:
    # Copies: sharing buffers with batch_stats would break donation.
    merged[layers.SOURCE_STATS_COLLECTION] = jax.tree_util.tree_map(
        lambda x: jnp.array(x, copy=True), merged[layers.STATS_COLLECTION])
  return merged


# ----------------------------------------------------------------------------
# Regularisers (eq. 7 as the reference computes it)
# ----------------------------------------------------------------------------

SIMILARITY_PATTERN = re.compile(r'similarity_(gamma|beta)/(kernel|bias)$')
RESIDUAL_PATTERN = re.compile(r'(^|/)residual_(gamma|beta)/kernel$')


def kp_regularizers(params: dict):
  """`(l1, l2)`: sum over tensors of mean|S| and of mean(r^2).

  l1 runs over every similarity kernel AND bias (gamma and beta, all layers),
  l2 over every residual kernel. Each tensor contributes its mean, so the
  per-element weight is lambda / numel, as in the authors' code.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  l1 = sum((jnp.mean(jnp.abs(v))
            for k, v in flat.items()
            if SIMILARITY_PATTERN.search(k)), jnp.float32(0))
  l2 = sum((jnp.mean(jnp.square(v))
            for k, v in flat.items()
            if RESIDUAL_PATTERN.search(k)), jnp.float32(0))
  return l1, l2


def count_kp_parameters(params: dict) -> int:
  """Number of scalars in the knowledge-propagation layers."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return int(
      sum(
          np.size(v)
          for k, v in flat.items()
          if re.search(r'(^|/)kp(_similarity_(gamma|beta))?/', k)))
