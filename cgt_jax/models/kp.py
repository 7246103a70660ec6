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
* Two variants, following the source generator's form (`Variant`):
  `IMAGENET` (shared embedding and hierarchical z): A, P and the z
  projection Z each carry their own spectral norm, the prior has no bias,
  gamma = 1 + SN(P)^T s + (SN(Z)^T z + c) + R^T e; `CIFAR` (per-class BN
  tables): plain linear layers, and the prior has a (random, trainable)
  bias.
* The regularisers sum, over tensors, the MEAN of |.| (similarity weights
  and biases) and of (.)^2 (residuals): `regularizers`.

This module is also the one home of the KP layers' parameter names
(`Part`, `part_of`): the trainable groups, the weight surgery that fills
the prior from the source model (`cgt_jax.transfer.surgery`), the analysis
and the PyTorch key map all ask it.
"""

import dataclasses
import enum
import math
import re
from typing import Any, Optional

import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from cgt_jax.models import extensions
from cgt_jax.models import layers
from cgt_jax.models import new_classes

# Spectral-norm eps of the layers cGANTransfer adds with PyTorch's default
# (similarity and z projection); the prior uses the source model's SN eps.
KP_DEFAULT_SN_EPS = 1e-12
# The module name of the KP layer inside each conditional BN, and the prefix
# of the one similarity pair a generator with shared similarity holds.
MODULE = 'kp'
SHARED_PREFIX = 'kp_'
WHICH = ('gamma', 'beta')


class Part(enum.Enum):
  """The layers of knowledge propagation (each has a gamma and a beta)."""
  SIMILARITY = 'similarity'  # S = A onehot + a, eq. 5
  PRIOR = 'prior'  # P, eq. 6
  Z_PROJECTION = 'z_proj'  # Z z + c (hierarchical z, ImageNet form)
  RESIDUAL = 'residual'  # r, sec. 4.3

  def layer(self, which: str) -> str:
    """The Flax module name of this part for 'gamma' or 'beta'."""
    return f'{self.value}_{which}'


# A part's layer name: '<part>_<which>'.
_PART_LAYER = re.compile(
    rf'({"|".join(p.value for p in Part)})_({"|".join(WHICH)})')


def parse_layer(name: str) -> Optional[tuple]:
  """`(part, which)` of a KP layer name ('prior_gamma'; a shared similarity
  'kp_similarity_beta' too), else None."""
  if name.startswith(SHARED_PREFIX):
    name = name[len(SHARED_PREFIX):]
  match = _PART_LAYER.fullmatch(name)
  return (Part(match.group(1)), match.group(2)) if match else None


def part_of(path: str, module: str = MODULE) -> Optional[Part]:
  """The part a `/`-joined parameter path belongs to, else None.

  A path belongs to a part when it runs through that part's layer inside a
  conditional BN's `module` (`.../kp/prior_gamma/kernel`; BSA's layers use
  the same names under `bsa`) or through the generator's shared similarity
  pair (`kp_similarity_gamma/bias`).
  """
  elements = path.split('/')
  for i, element in enumerate(elements[:-1]):
    shared = module == MODULE and element.startswith(SHARED_PREFIX) and i == 0
    name = element[len(SHARED_PREFIX):] if shared else element
    match = _PART_LAYER.fullmatch(name)
    if match and (shared or (i > 0 and elements[i - 1] == module)):
      return Part(match.group(1))
  return None


def layer_of(path: str, module: str = MODULE) -> Optional[tuple]:
  """`(bn_layer_path, part, which)` of a parameter path inside a conditional
  BN's `module` (`block_0/bn1/kp/prior_gamma/kernel` ->
  ('block_0/bn1', Part.PRIOR, 'gamma')), else None."""
  match = re.fullmatch(rf'(.*)/{module}/{_PART_LAYER.pattern}/\w+', path)
  if not match:
    return None
  return match.group(1), Part(match.group(2)), match.group(3)


@dataclasses.dataclass(frozen=True)
class Variant:
  """How a KP layer's linear layers are built (the source model's form).

  Attributes:
    name: 'cifar' or 'imagenet', for messages and architecture files.
    spectral: spectral norm on the similarity, prior and z projection.
    prior_bias: the prior has a (trainable) bias.
  """
  name: str
  spectral: bool
  prior_bias: bool


CIFAR = Variant('cifar', spectral=False, prior_bias=True)
IMAGENET = Variant('imagenet', spectral=True, prior_bias=False)


def variant_for(shared_dim: int) -> Variant:
  """The authors' variant for a source generator: ImageNet with a shared
  class embedding (and hierarchical z), CIFAR with per-class BN tables."""
  return IMAGENET if shared_dim else CIFAR


@dataclasses.dataclass(frozen=True)
class KPOptions(new_classes.NewClassForm):
  """Architecture switches of knowledge propagation (the paper's Table 2).

  Attributes:
    use_residuals: add the per-class residuals r (paper sec. 4.3); the
      ablation "without residuals" sets this False.
    shared_similarity: one similarity matrix pair (S_gamma, S_beta) shared by
      all BN layers instead of one per layer.
  Whether the prior is updatable or frozen is a training choice, made by
  the trainable-parameter groups (`cgt_jax.transfer.groups`).
  """
  use_residuals: bool = True
  shared_similarity: bool = False

  module = MODULE
  extends_continually = True

  def bn_layers(self,
                num_source: int,
                num_new: int,
                variant: Variant,
                sn_eps: float,
                weights_init: str,
                extension: int = 0):
    """A factory `(features, z_dim) -> KnowledgePropagation` building the
    new-class layer of every conditional BN.

    Called inside the generator's compact `__call__`, so that a shared
    similarity pair is created once, as the generator's child.
    `extension` g > 0 builds earlier extension g's layers
    (`extensions.module_name`), else the newest classes'.
    """
    name = extensions.module_name(MODULE, extension) if extension else MODULE
    similarity = None
    if self.shared_similarity:
      similarity = tuple(
          similarity_layer(num_source, num_new, variant, weights_init,
                           f'{name}_{Part.SIMILARITY.layer(which)}')
          for which in WHICH)

    def make(features, z_dim):
      return KnowledgePropagation(
          features=features,
          num_source_classes=num_source,
          variant=variant,
          z_dim=z_dim,
          sn_eps=sn_eps,
          weights_init=weights_init,
          use_residuals=self.use_residuals,
          similarity=similarity,
          name=name)

    return make


def _linear(features: int, spectral: bool, use_bias: bool, eps: float,
            init: str, fan_in: int, name: str) -> nn.Module:
  """A linear layer: spectrally normalised, or a plain `nn.Dense`, both with
  PyTorch's default bias init (BigGAN re-initialises weights only)."""
  kernel_init = layers.weight_init(init)
  if spectral:
    return layers.SNDense(
        features,
        use_bias=use_bias,
        eps=eps,
        kernel_init=kernel_init,
        name=name)
  return nn.Dense(
      features,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=layers.torch_default_bias_init(fan_in),
      name=name)


def similarity_layer(num_source_classes: int, num_new_classes: int,
                     variant: Variant, init: str, name: str) -> nn.Module:
  """S = A onehot + a: maps a new-class one-hot `[B, M]` to scores `[B, N]`."""
  return _linear(num_source_classes, variant.spectral, True, KP_DEFAULT_SN_EPS,
                 init, num_new_classes, name)


class KnowledgePropagation(nn.Module):
  """Gain and bias `[B, C]` of new classes from the source classes' BN terms.

  Attributes:
    features: C, the channels of the BN layer.
    num_source_classes: N.
    variant: `CIFAR` or `IMAGENET` (see `Variant`).
    z_dim: width of the hierarchical z chunk (0: no z projection).
    sn_eps: SN eps of the prior (the source model's SN eps).
    weights_init: 'ortho' or 'N02', for the similarity and residual weights.
    use_residuals: add the residuals r.
    similarity: `(S_gamma, S_beta)` modules shared across layers, or None
      for this layer's own pair.
  """
  features: int
  num_source_classes: int
  variant: Variant
  z_dim: int = 0
  sn_eps: float = 1e-6
  weights_init: str = 'ortho'
  use_residuals: bool = True
  similarity: Optional[tuple] = None

  @nn.compact
  def __call__(self,
               onehot,
               z_chunk=None,
               train: bool = False,
               used: Any = True):
    """`onehot` `[B, M]` of the new class, `z_chunk` `[B, z_dim]` or None."""
    similarity = self.similarity or tuple(
        similarity_layer(self.num_source_classes, onehot.shape[-1],
                         self.variant, self.weights_init,
                         Part.SIMILARITY.layer(which)) for which in WHICH)
    gain, bias = (self._propagate(which, scores_layer, onehot, z_chunk, train,
                                  used)
                  for which, scores_layer in zip(WHICH, similarity))
    return 1 + gain, bias

  def _propagate(self, which, similarity, onehot, z_chunk, train, used):
    """P^T S(onehot) [+ Z^T z + c] [+ R^T onehot] for 'gamma' or 'beta'."""
    init, spectral = self.weights_init, self.variant.spectral
    prior = _linear(self.features, spectral, self.variant.prior_bias,
                    self.sn_eps, init, self.num_source_classes,
                    Part.PRIOR.layer(which))
    scores = apply_linear(similarity, onehot, train, used)
    out = apply_linear(prior, scores, train, used)
    if self.z_dim:
      projection = z_projection(self.features, self.z_dim, spectral, init,
                                which)
      out = out + apply_linear(projection, z_chunk, train, used)
    if self.use_residuals:
      out = out + residual_layer(self.features, init, which)(onehot)
    return out


def apply_linear(layer: nn.Module, x, train: bool, used: Any):
  """A linear layer on x; only a spectrally normalised one takes the mode
  (its `u` advances in train mode when `used`)."""
  if isinstance(layer, layers.SNDense):
    return layer(x, train, used)
  return layer(x)


def z_projection(features: int, z_dim: int, spectral: bool, init: str,
                 which: str) -> nn.Module:
  """Z z + c: the z-chunk part of the source BN linear, as its own layer."""
  return _linear(features, spectral, True, KP_DEFAULT_SN_EPS, init, z_dim,
                 Part.Z_PROJECTION.layer(which))


def residual_layer(features: int, init: str, which: str) -> nn.Module:
  """r = R onehot: a free vector per new class (no bias, no SN)."""
  return nn.Dense(
      features,
      use_bias=False,
      kernel_init=layers.weight_init(init),
      name=Part.RESIDUAL.layer(which))


# ----------------------------------------------------------------------------
# Regularisers (eq. 7 as the reference computes it)
# ----------------------------------------------------------------------------


def _is_similarity_tensor(path: str) -> bool:
  return part_of(path) is Part.SIMILARITY and path.endswith(
      ('/kernel', '/bias'))


def _is_residual_tensor(path: str) -> bool:
  return part_of(path) is Part.RESIDUAL and path.endswith('/kernel')


def regularizers(params: dict):
  """`(l1, l2)`: sum over tensors of mean|S| and of mean(r^2).

  l1 runs over every similarity kernel AND bias (gamma and beta, all layers),
  l2 over every residual kernel. Each tensor contributes its mean, so the
  per-element weight is lambda / numel, as in the authors' code.
  """
  terms = regularizer_terms(params)
  zero = jnp.float32(0)
  return terms.get('similarity_l1', zero), terms.get('residual_l2', zero)


def regularizer_terms(params: dict) -> dict:
  """`regularizers` as `{'similarity_l1': l1, 'residual_l2': l2}`, with
  only the terms whose tensors the model has (no residuals in the Table 2
  "w/o residuals" ablations, neither term without KP layers)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  similarity = [v for k, v in flat.items() if _is_similarity_tensor(k)]
  residual = [v for k, v in flat.items() if _is_residual_tensor(k)]
  terms = {}
  if similarity:
    terms['similarity_l1'] = sum((jnp.mean(jnp.abs(v)) for v in similarity),
                                 jnp.float32(0))
  if residual:
    terms['residual_l2'] = sum((jnp.mean(jnp.square(v)) for v in residual),
                               jnp.float32(0))
  return terms


def count_parameters(params: dict) -> int:
  """Number of scalars in the knowledge-propagation layers."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return int(sum(math.prod(v.shape) for k, v in flat.items() if part_of(k)))
