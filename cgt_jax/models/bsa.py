"""Free per-class BN vectors: the BSA baseline's new-class layer.

BSA (Noguchi & Harada 2019), in the adversarial class-extending form that
cGANTransfer compares with, learns for each new class free scale and shift
vectors per conditional BN layer: gamma^{y'} = 1 + r_gamma^{y'} and
beta^{y'} = r_beta^{y'}, with nothing propagated from the source classes.
In the ImageNet form (hierarchical z) the source layer's z part is kept as
its own projection, as knowledge propagation keeps it.

The layer is the conditional BN's child `bsa`; its parameters are named
like knowledge propagation's parts (`residual_*`, `z_proj_*`, see
`kp.Part`): a BSA vector is a KP residual without similarity and prior.
"""

import dataclasses
from typing import Any, Optional

from flax import linen as nn

from cgt_jax.models import extensions
from cgt_jax.models import kp
from cgt_jax.models import new_classes

MODULE = 'bsa'


def part_of(path: str) -> Optional[kp.Part]:
  """`kp.Part.RESIDUAL` (a class vector) or `Z_PROJECTION` for a BSA
  parameter path, else None."""
  return kp.part_of(path, MODULE)


@dataclasses.dataclass(frozen=True)
class FreeVectors(new_classes.NewClassForm):
  """The generator's new-class layer form for BSA (no options)."""

  module = MODULE
  extends_continually = True

  def bn_layers(self,
                num_source: int,
                num_new: int,
                variant: kp.Variant,
                sn_eps: float,
                weights_init: str,
                extension: int = 0):
    """A factory `(features, z_dim) -> FreeClassVectors` (see
    `kp.KPOptions.bn_layers`)."""
    del num_source, num_new, sn_eps  # nothing is propagated
    name = extensions.module_name(MODULE, extension) if extension else MODULE

    def make(features, z_dim):
      return FreeClassVectors(
          features=features,
          variant=variant,
          z_dim=z_dim,
          weights_init=weights_init,
          name=name)

    return make


class FreeClassVectors(nn.Module):
  """`(1 + r_gamma^T onehot [+ Z_gamma z], r_beta^T onehot [+ Z_beta z])`.

  Attributes:
    features: C, the channels of the BN layer.
    variant: the source form; decides whether the z projection carries a
      spectral norm (ImageNet) or not.
    z_dim: width of the hierarchical z chunk (0: no z projection).
    weights_init: 'ortho' or 'N02'.
  """
  features: int
  variant: kp.Variant
  z_dim: int = 0
  weights_init: str = 'ortho'

  @nn.compact
  def __call__(self,
               onehot,
               z_chunk=None,
               train: bool = False,
               used: Any = True):
    gain, bias = (
        self._vector(which, onehot, z_chunk, train, used) for which in kp.WHICH)
    return 1 + gain, bias

  def _vector(self, which, onehot, z_chunk, train, used):
    out = 0
    if self.z_dim:
      projection = kp.z_projection(self.features, self.z_dim,
                                   self.variant.spectral, self.weights_init,
                                   which)
      out = kp.apply_linear(projection, z_chunk, train, used)
    return out + kp.residual_layer(self.features, self.weights_init, which)(
        onehot)
