"""BigGAN generator and projection discriminator (Brock et al. 2019).

Architecture tables, layer order and initialisation follow BigGAN-PyTorch,
the code cGANTransfer builds on, so PyTorch checkpoints convert one to one
(`cgt_jax.convert.keymap`). The generator is the paper's extended G': it
takes global labels 0..N+M-1 (source classes first, then the new ones).

Parameter tree (generator), `i` the block index:

    shared/embedding                        [N, shared_dim]  (shared form)
    linear/{kernel, bias}                   z (chunk) -> C0 * 4 * 4, channel-major
    block_i/{bn1, bn2}/{gain, bias}/...     source conditional BN
    block_i/{bn1, bn2}/kp/...               knowledge propagation (M > 0)
    miner/classes/{z_i, class_i}/...        MineGAN's miners, [M, ...] (M > 0)
    class_network/..., block_i/{conv1,conv2}_mod/...  Hyper-Modulation (M > 0)
    block_i/{conv1, conv2, conv_sc}/{kernel, bias}
    attention_i/{theta, phi, g, o, gamma}   after block i
    output_bn/{scale, bias}, output_conv/{kernel, bias}
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cgt_jax.models import ccbn
from cgt_jax.models import extensions
from cgt_jax.models import kp
from cgt_jax.models import layers

# Channel multipliers per resolution: (in, out) of every block, and the
# output resolution of each block (generator) / the resolution label used to
# place attention (discriminator), from BigGAN's G_arch / D_arch.
G_ARCH = {
    32: ([4, 4, 4], [4, 4, 4], [8, 16, 32]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2], [8, 16, 32, 64]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [8, 16, 32, 64, 128]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256]),
}
# (in multipliers after the RGB input, out multipliers, downsample, resolution)
D_ARCH = {
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 16, 16, 16]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8,
                        16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16,
                             16], [True] * 5 + [False], [64, 32, 16, 8, 4, 4]),
    256: ([1, 2, 4, 8, 8,
           16], [1, 2, 4, 8, 8, 16,
                 16], [True] * 6 + [False], [128, 64, 32, 16, 8, 4, 4]),
}


def _check_resolution(resolution: int):
  if resolution not in G_ARCH:
    raise ValueError(f'resolution {resolution} is not supported: use one of '
                     f'{sorted(G_ARCH)}')


def check_labels(labels, num_labels: int, first_valid: int = 0):
  """Rejects labels outside [first_valid, num_labels) when they are concrete.

  Inside `jit` the labels are tracers and cannot be inspected; the input
  pipeline validates them on the host instead.
  """
  if isinstance(labels, jax.core.Tracer):
    return
  labels = np.asarray(labels)
  if labels.size and (labels.min() < first_valid or labels.max() >= num_labels):
    bad = labels[(labels < first_valid) | (labels >= num_labels)]
    raise ValueError(
        f'label(s) {sorted(set(bad.tolist()))[:5]} out of range: this model '
        f'accepts global labels {first_valid}..{num_labels - 1} (source '
        'classes first, then new classes at N + k)')


class GBlock(nn.Module):
  """Residual up-block: BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1.

  With a `modulation` form (Hyper-Modulation), new-class samples take the
  modulated twins of conv1 and conv2 instead.
  """
  out_channels: int
  bn: Any  # a partial of ClassConditionalBatchNorm
  sn_eps: float
  weights_init: str
  dtype: Any = jnp.float32
  modulation: Any = None  # a new-class form with `modulated_conv`

  @nn.compact
  def __call__(self,
               x,
               labels,
               class_embedding,
               z_chunk,
               train=False,
               class_vector=None):
    conv = lambda k, name: layers.SNConv(
        self.out_channels,
        k,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        dtype=self.dtype,
        name=name)
    cond = (labels, class_embedding, z_chunk)
    h = nn.relu(self.bn(name='bn1')(x, *cond, train=train))
    h = layers.upsample2(h)
    h = self._modulated(conv(3, 'conv1')(h, train), h, 'conv1', class_vector)
    h = nn.relu(self.bn(name='bn2')(h, *cond, train=train))
    h = self._modulated(conv(3, 'conv2')(h, train), h, 'conv2', class_vector)
    return h + conv(1, 'conv_sc')(layers.upsample2(x), train)

  def _modulated(self, out, x, name, class_vector):
    """`out` (the source convolution of `x`), or for the samples with a
    class vector (rows of `class_vector`: (vector, is_new)) the modulated
    convolution's."""
    if self.modulation is None:
      return out
    vectors, is_new = class_vector
    modulated = self.modulation.modulated_conv(self.out_channels, 3,
                                               name)(x, vectors)
    return jnp.where(is_new[:, None, None, None], modulated.astype(out.dtype),
                     out)


class Generator(nn.Module):
  """BigGAN generator extended to N source + M new classes.

  Attributes:
    resolution: 32, 64, 128 or 256.
    num_classes: N, source classes. num_new_classes: M.
    ch: channel width multiplier (G_ch). dim_z: latent size.
    shared_dim: width of the shared class embedding (0: per-class BN tables).
    hier: hierarchical z (one chunk for the first linear + one per block).
    attention: output resolutions followed by a self-attention block.
    weights_init: 'ortho' or 'N02'. bn_eps / sn_eps: as BigGAN's BN_eps / SN_eps.
    new_classes: how new classes are rendered (used when M > 0), a
      `new_classes.NewClassForm`: `kp.KPOptions` (knowledge propagation,
      its Table 2 switches), `bsa.FreeVectors` (the BSA baseline), both new
      BN layers whose KP variant follows the source form
      (`kp.variant_for(shared_dim)`), `minegan.Miners` (MineGAN: a
      module in front of G) or `hypermod.Modulation` (Hyper-Modulation:
      class-modulated block convolutions).
    extensions: the earlier extensions of a continually extended generator
      (`models.extensions.Extension`, in label order): their classes take
      labels N.. before the newest M, which propagate from all of them.
    remat: recompute each block's activations in the backward pass instead
      of keeping them (`jax.checkpoint` per block): less memory for about
      one more forward; a run-time choice, not saved with the model.
  """
  resolution: int
  num_classes: int
  num_new_classes: int = 0
  ch: int = 64
  dim_z: int = 128
  shared_dim: int = 0
  hier: bool = False
  attention: Sequence[int] = ()
  weights_init: str = 'N02'
  bn_eps: float = 1e-5
  sn_eps: float = 1e-8
  new_classes: Any = kp.KPOptions()
  extensions: Sequence[Any] = ()
  bottom_width: int = 4
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def first_new_label(self) -> int:
    """The label of the first newest class: N, plus the classes of the
    earlier extensions."""
    return self.num_classes + sum(e.num_classes for e in self.extensions)

  @property
  def num_labels(self) -> int:
    return self.first_new_label + self.num_new_classes

  @property
  def num_slots(self) -> int:
    return len(G_ARCH[self.resolution][0]) + 1 if self.hier else 1

  def _validate(self):
    _check_resolution(self.resolution)
    if self.hier and not self.shared_dim:
      raise ValueError('hier=True needs a shared class embedding: set '
                       'shared_dim (BigGAN uses 128)')
    if self.hier and self.dim_z % self.num_slots:
      raise ValueError(
          f'dim_z={self.dim_z} must split into {self.num_slots} equal '
          f'hierarchical chunks at resolution {self.resolution}: use a '
          f'multiple of {self.num_slots} (e.g. 120 at 128 px)')
    extensions.check_forms(self.extensions, self.new_classes)

  @nn.compact
  def __call__(self, z, labels, train: bool = False):
    """z `[B, dim_z]`, labels `[B]` global ints -> images `[B, R, R, 3]`."""
    self._validate()
    check_labels(labels, self.num_labels)
    form = self.new_classes if self.num_new_classes else None
    new_bn = form and form.bn_layers(self.first_new_label, self.num_new_classes,
                                     kp.variant_for(self.shared_dim),
                                     self.sn_eps, self.weights_init)
    z, mined_class = self._front(form, z, labels, train)
    class_network = form and form.class_network(self.num_new_classes)
    class_vector = None
    if class_network is not None:
      is_new = labels >= self.num_classes
      class_vector = (class_network(
          jnp.clip(labels - self.num_classes, 0,
                   self.num_new_classes - 1)), is_new)
    # A form may keep G's statistics as the source model left them.
    train = train and (form is None or form.trains_generator_statistics)
    ins, outs, resolutions = self._arch()
    chunks = jnp.split(z, self.num_slots, axis=-1) if self.hier else [z]
    class_embedding = mined_class  # per-class tables: mixture weights
    if self.shared_dim:
      class_embedding = nn.Embed(
          self.num_classes,
          self.shared_dim,
          name='shared',
          embedding_init=layers.weight_init(self.weights_init))(
              jnp.clip(labels, 0, self.num_classes - 1))
      if mined_class is not None:
        class_embedding = jnp.where((labels >= self.num_classes)[:, None],
                                    mined_class, class_embedding)
    h = layers.SNDense(
        ins[0] * self.bottom_width**2,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        dtype=self.dtype,
        name='linear')(chunks[0], train)
    # PyTorch views the linear output as NCHW [B, C, 4, 4].
    h = h.reshape(-1, ins[0], self.bottom_width, self.bottom_width)
    h = h.transpose(0, 2, 3, 1)
    bn = self._bn_factory(new_bn)
    attention = layers.attention_positions(resolutions, self.attention)
    for i, out_channels in enumerate(outs):
      z_chunk = chunks[i + 1] if self.hier else None
      h = _maybe_remat(GBlock, self.remat)(
          out_channels,
          bn,
          self.sn_eps,
          self.weights_init,
          self.dtype,
          modulation=form if class_network is not None else None,
          name=f'block_{i}')(h, labels, class_embedding, z_chunk, train,
                             class_vector)
      if i in attention:
        h = layers.Attention(
            self.sn_eps,
            layers.weight_init(self.weights_init),
            self.dtype,
            name=f'attention_{i}')(h, train)
    frozen_stats = None
    if new_bn is not None:
      firsts = self._first_labels()
      frozen_stats = (extensions.generation(labels, firsts), len(firsts))
    h = nn.relu(
        layers.AffineBatchNorm(dtype=self.dtype,
                               name='output_bn')(h, train, frozen_stats))
    h = layers.SNConv(
        3,
        3,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        dtype=self.dtype,
        name='output_conv')(h, train)
    return jnp.tanh(h.astype(jnp.float32))

  def _front(self, form, z, labels, train):
    """`(z, class vector)`: the form's front module's output (MineGAN: the
    mined latent and class vector of new-class samples, None elsewhere),
    else `(z, None)`."""
    front = form and form.front(
        self.num_classes, self.num_new_classes, self.dim_z, self.shared_dim or
        self.num_classes, not self.shared_dim, self.sn_eps, self.weights_init)
    if front is None:
      return z, None
    z, mined_class, _ = front(z, labels, self.num_classes, train)
    return z, mined_class

  def _arch(self):
    ins, outs, resolutions = G_ARCH[self.resolution]
    return ([m * self.ch for m in ins], [m * self.ch for m in outs],
            resolutions)

  def _first_labels(self) -> list:
    return extensions.first_labels(self.num_classes,
                                   [e.num_classes for e in self.extensions])

  def _earlier_layers(self) -> tuple:
    """`(num_classes, factory)` of each earlier extension's BN layers, which
    propagate from every class before them."""
    variant = kp.variant_for(self.shared_dim)
    made = []
    for index, first in enumerate(self._first_labels()[:-1], 1):
      extension = self.extensions[index - 1]
      count = extension.num_classes
      made.append((count,
                   extension.form.bn_layers(first, count, variant, self.sn_eps,
                                            self.weights_init, index)))
    return tuple(made)

  def _bn_factory(self, new_class_layer):
    """A partial building every conditional BN layer alike."""
    return _partial(
        ccbn.ClassConditionalBatchNorm,
        num_classes=self.num_classes,
        cond_dim=self.shared_dim,
        num_new_classes=self.num_new_classes if new_class_layer else 0,
        new_class_layer=new_class_layer,
        earlier_layers=self._earlier_layers() if new_class_layer else (),
        eps=self.bn_eps,
        sn_eps=self.sn_eps,
        weights_init=self.weights_init,
        dtype=self.dtype)


def _maybe_remat(block, remat: bool):
  """`block`, or with `remat` its `nn.remat`, `train` a static argument."""
  if not remat:
    return block
  # static_argnums counts the module itself as argument 0.
  return nn.remat(block, static_argnums=_TRAIN_ARGNUM[block])


def _partial(cls, **kwargs):
  """functools.partial for a linen Module class (keeps `name=` overridable)."""
  return lambda name: cls(name=name, **kwargs)


class DBlock(nn.Module):
  """Residual down-block: [ReLU]-conv3-ReLU-conv3-[avgpool], 1x1 shortcut."""
  out_channels: int
  downsample: bool
  preactivation: bool
  sn_eps: float
  weights_init: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    conv = lambda k, name: layers.SNConv(
        self.out_channels,
        k,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        dtype=self.dtype,
        name=name)
    pool = layers.avg_pool2 if self.downsample else (lambda t: t)
    h = nn.relu(x) if self.preactivation else x
    h = conv(3, 'conv2')(nn.relu(conv(3, 'conv1')(h, train)), train)
    h = pool(h)
    if x.shape[-1] != self.out_channels or self.downsample:
      # Pre-activation blocks convolve then pool; the first block pools first.
      if self.preactivation:
        x = pool(conv(1, 'conv_sc')(x, train))
      else:
        x = conv(1, 'conv_sc')(pool(x), train)
    return h + x


# Position of `train` in each block's `__call__` (the module is 0).
_TRAIN_ARGNUM = {GBlock: (5,), DBlock: (2,)}


class Discriminator(nn.Module):
  """BigGAN projection discriminator: `linear(h) + <embed(y), h>`.

  Attributes:
    resolution, ch (D_ch), attention, weights_init, sn_eps: as BigGAN.
    num_classes: N, source classes (projection table `embed`).
    num_new_classes: M; new classes get their own table `new_embed`
      (cGANTransfer's fresh projection), addressed by global labels N + k.
    source_projection: keep the source table (False for a cGANTransfer D,
      which drops it); source labels are then rejected.
    projection: False drops the class term: `linear(h)` alone, an
      unconditional D (MineGAN's single-target set-up).
    class_heads: Hyper-Modulation's multi-head D instead of `linear` and
      the projection: a head `class_heads` of M logits on the features,
      of which each sample takes its new class's (labels N..N+M-1 only).
  """
  resolution: int
  num_classes: int
  num_new_classes: int = 0
  source_projection: bool = True
  projection: bool = True
  class_heads: bool = False
  ch: int = 64
  attention: Sequence[int] = ()
  weights_init: str = 'N02'
  sn_eps: float = 1e-8
  dtype: Any = jnp.float32
  remat: bool = False  # as the generator's

  @nn.compact
  def __call__(self,
               x,
               labels,
               train: bool = False,
               return_features: bool = False):
    """x `[B, R, R, 3]` in [-1, 1], labels `[B]` global -> logits `[B, 1]`
    (with `return_features` also the penultimate features `[B, C]`, the
    summed ReLU of the last block)."""
    _check_resolution(self.resolution)
    first_label = (0 if self.source_projection and not self.class_heads else
                   self.num_classes)
    check_labels(labels, self.num_classes + self.num_new_classes, first_label)
    ins, outs, downsample, resolutions = D_ARCH[self.resolution]
    attention = layers.attention_positions(resolutions, self.attention)
    h = x
    for i, out_mult in enumerate(outs):
      h = _maybe_remat(DBlock, self.remat)(
          out_mult * self.ch,
          downsample[i],
          i > 0,
          self.sn_eps,
          self.weights_init,
          self.dtype,
          name=f'block_{i}')(h, train)
      if i in attention:
        h = layers.Attention(
            self.sn_eps,
            layers.weight_init(self.weights_init),
            self.dtype,
            name=f'attention_{i}')(h, train)
    features = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    out = self._head(features, labels, train)
    return (out, features) if return_features else out

  def _head(self, features, labels, train):
    """The logits `[B, 1]` of the features."""
    dense = lambda width, name: layers.SNDense(
        width,
        eps=self.sn_eps,
        kernel_init=layers.weight_init(self.weights_init),
        name=name)(features, train)
    if self.class_heads:
      heads = dense(self.num_new_classes, 'class_heads')
      index = jnp.clip(labels - self.num_classes, 0, self.num_new_classes - 1)
      return jnp.take_along_axis(heads, index[:, None], axis=1)
    out = dense(1, 'linear')
    if not self.projection:
      return out
    return out + jnp.sum(
        self._project(labels, features.shape[-1], train) * features,
        axis=1,
        keepdims=True)

  def _project(self, labels, features, train):
    """Projection embedding `[B, C]` of each (global) label."""
    table = lambda num, name: layers.SNEmbed(
        num,
        features,
        eps=self.sn_eps,
        embedding_init=layers.weight_init(self.weights_init),
        name=name)
    is_new = labels >= self.num_classes
    embedded = None
    if self.source_projection:
      embedded = table(self.num_classes, 'embed')(
          jnp.clip(labels, 0, self.num_classes - 1),
          train,
          used=True if not self.num_new_classes else jnp.any(~is_new))
    if self.num_new_classes:
      new = table(self.num_new_classes, 'new_embed')(
          jnp.clip(labels - self.num_classes, 0, self.num_new_classes - 1),
          train,
          used=jnp.any(is_new) if self.source_projection else True)
      embedded = new if embedded is None else jnp.where(is_new[:, None], new,
                                                        embedded)
    return embedded


def generator_kwargs_from_reference(args: dict) -> dict:
  """Generator attributes from BigGAN-PyTorch / cGANTransfer constructor args.

  cGANTransfer calls the source classes `n_pretrain_classes` and the new ones
  `n_classes`; BigGAN-PyTorch calls the source classes `n_classes`.
  """
  is_cgt = 'n_pretrain_classes' in args
  attention = tuple(
      int(a) for a in str(args.get('G_attn', '0')).split('_') if int(a))
  return dict(
      resolution=args['resolution'],
      ch=args['G_ch'],
      dim_z=args['dim_z'],
      num_classes=args['n_pretrain_classes'] if is_cgt else args['n_classes'],
      num_new_classes=args['n_classes'] if is_cgt else 0,
      shared_dim=args['shared_dim'] if args.get('G_shared') else 0,
      hier=bool(args.get('hier')),
      attention=attention,
      weights_init=args['G_init'],
      bn_eps=args.get('BN_eps', 1e-5),
      sn_eps=args.get('SN_eps', 1e-8),
      bottom_width=args.get('bottom_width', 4))


def discriminator_kwargs_from_reference(args: dict) -> dict:
  """Discriminator attributes from BigGAN-PyTorch / cGANTransfer args."""
  is_cgt = 'n_pretrain_classes' in args
  attention = tuple(
      int(a) for a in str(args.get('D_attn', '0')).split('_') if int(a))
  return dict(
      resolution=args['resolution'],
      ch=args['D_ch'],
      attention=attention,
      num_classes=args['n_pretrain_classes'] if is_cgt else args['n_classes'],
      num_new_classes=args['n_classes'] if is_cgt else 0,
      source_projection=not is_cgt,
      weights_init=args['D_init'],
      sn_eps=args.get('SN_eps', 1e-8))
