"""MineGAN's miners (Wang et al., CVPR 2020): a module in front of G.

MineGAN does not change how G renders a class; it learns where in G's
input space the target lives. For each new class k (global label N + k) an
affine miner maps the latent u ~ N(0, I) to G's two inputs,

    z' = A_k u + a_k    (four spectrally normalised linears dim_z -> dim_z)
    c' = B_k u + b_k    (three SN linears dim_z -> dim_z, then dim_z -> C)

with no activations between the layers (the authors' BigGAN miner), and G
renders G(z', c'); source labels (< N) pass through untouched. What c' is
depends on the source form:

* ImageNet form (shared class embedding): c' replaces G's class embedding
  `shared(y)`, C = shared_dim, exactly as in the authors' code.
* CIFAR form (per-class BN tables, no shared embedding): c' is a vector of
  weights over the N source classes, C = N, and every conditional BN takes
  the weighted sum of the source classes' rows, `1 + c'^T G` and
  `c'^T B`, the counterpart of mining the class embedding. A one-hot c'
  is source class k's own BN row. This last layer is a plain linear that
  starts at zero weights and a bias of 1/N: the miner starts at the mean
  of the source classes (as the `mean` start of the other baselines do);
  a spectral norm would both forbid that start (a zero matrix has no
  direction to normalise) and pin the mixture's spread at 1.

The M miners are one batched module (`nn.vmap` over the new classes:
every parameter has a leading axis M); each sample takes its class's map.
The generator runs with its BN running statistics and stored spectral-norm
vectors (the authors' G is in eval mode throughout), so source classes
render as the source model's until the second stage trains G.
"""

import dataclasses
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import layers
from cgt_jax.models import new_classes

MODULE = 'miner'
Z_LAYERS = 4
CLASS_LAYERS = 4


def is_miner_parameter(path: str) -> bool:
  """Whether a `/`-joined generator parameter path is a miner's."""
  return path.split('/', 1)[0] == MODULE


@dataclasses.dataclass(frozen=True)
class Miners(new_classes.NewClassForm):
  """The generator's new-class form for MineGAN (no options): a module in
  front of G, no new BN layers (mined samples use the source ones)."""
  # G keeps its BN running statistics and spectral-norm vectors: the
  # authors run the pretrained G in eval mode in both stages.
  trains_generator_statistics = False

  def front(self, num_source: int, num_new: int, dim_z: int, class_width: int,
            mixture: bool, sn_eps: float, weights_init: str) -> nn.Module:
    """The batched miners of the M new classes."""
    del num_source
    return ClassMiners(
        num_new=num_new,
        dim_z=dim_z,
        class_width=class_width,
        mixture=mixture,
        sn_eps=sn_eps,
        weights_init=weights_init,
        name=MODULE)


class AffineMiner(nn.Module):
  """One new class's miner: `u -> (z', c')`, both affine in u.

  Attributes:
    dim_z: width of u and z'.
    class_width: width of c' (shared_dim, or N in the mixture form).
    mixture: c' weighs the source classes (CIFAR form): the last class
      layer is a plain linear starting at the source classes' mean.
    train: advance the spectral-norm vectors.
  """
  dim_z: int
  class_width: int
  mixture: bool
  sn_eps: float
  weights_init: str
  train: bool = False

  @nn.compact
  def __call__(self, u):
    z = u
    for i in range(Z_LAYERS):
      z = self._sn_linear(self.dim_z, f'z_{i}')(z, self.train)
    c = u
    for i in range(CLASS_LAYERS - 1):
      c = self._sn_linear(self.dim_z, f'class_{i}')(c, self.train)
    last = f'class_{CLASS_LAYERS - 1}'
    if self.mixture:
      c = nn.Dense(
          self.class_width,
          kernel_init=nn.initializers.zeros,
          bias_init=nn.initializers.constant(1.0 / self.class_width),
          name=last)(
              c)
    else:
      c = self._sn_linear(self.class_width, last)(c, self.train)
    return z, c

  def _sn_linear(self, features, name):
    return layers.SNDense(
        features,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        name=name)


class ClassMiners(nn.Module):
  """M affine miners; sample i uses the miner of its label's new class.

  Returns `(z', c', mined)`: z' `[B, dim_z]` (u itself for source labels),
  c' `[B, class_width]` (meaningful where `mined`), and `mined` `[B]`, True
  for new-class labels (>= N).
  """
  num_new: int
  dim_z: int
  class_width: int
  mixture: bool
  sn_eps: float
  weights_init: str

  @nn.compact
  def __call__(self, u, labels, num_source: int, train: bool = False):
    batched = nn.vmap(
        AffineMiner,
        in_axes=None,  # every miner sees the whole batch of u
        out_axes=0,
        axis_size=self.num_new,
        variable_axes={
            'params': 0,
            layers.SN_COLLECTION: 0
        },
        split_rngs={'params': True})
    z_all, c_all = batched(
        self.dim_z,
        self.class_width,
        self.mixture,
        self.sn_eps,
        self.weights_init,
        train,
        name='classes')(
            u.astype(jnp.float32))
    mined = labels >= num_source
    # [M, B, .] -> each sample's own class's output.
    index = jnp.clip(labels - num_source, 0, self.num_new - 1)
    rows = jnp.arange(u.shape[0])
    z = jnp.where(mined[:, None], z_all[index, rows], u)
    return z.astype(u.dtype), c_all[index, rows], mined
