"""BigGAN-deep generator, as ported by huggingface/pytorch-pretrained-BigGAN.

The released `biggan-deep-{128,256,512}` weights (TF-Hub, EMA) are a
different architecture from BigGAN-PyTorch's BigGAN; this module reproduces
the PyTorch port's eval forward number for number so its `.pth` files
convert one to one (`cgt_jax.convert.biggan_deep_keymap`). It samples only:
there is no discriminator and no training support (no batch statistics).

    cond = [z, class embedding]                       [B, 2 * dim_z]
    h = gen_z(cond) as (4, 4, 16 ch), NHWC (TF order)
    for each block (attention before block `attention_position`):
      h = GenBlock(h, cond)       bottleneck: 1x1 (C/4), [up] 3x3, 3x3, 1x1;
                                  skip keeps the first C/2 channels if the
                                  width halves, and is upsampled alike
    images = tanh(conv_to_rgb(relu(bn(h)))[..., :3])

Every BN normalises with stored statistics chosen by the truncation (never
batch statistics): `running_means`/`running_vars` `[n_stats, C]` hold one row
per truncation in {0, 1/(n_stats-1), ..., 1}. Conditional BNs use
`(1 + scale(cond), offset(cond))`, both spectrally normalised linears.

Spectral norm follows `torch.nn.utils.spectral_norm`: variables `sn/u`
`[out]` and `sn/v` `[in]`; in eval mode sigma = u^T W v from the stored
vectors (no power iteration, so eps plays no part); in train mode one power
iteration with eps updates both first (`mutable=['sn']`), which is all
PyTorch's `.train()` changes for this model.
"""

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import biggan
from cgt_jax.models import layers

# The architecture name recorded in a model directory's architecture.json.
FAMILY = 'biggan_deep'
SN_COLLECTION = layers.SN_COLLECTION
STATS_COLLECTION = layers.STATS_COLLECTION
# Bottleneck width of a GenBlock: in_channels // REDUCTION.
REDUCTION = 4
BOTTOM_WIDTH = 4

# (upsample, in, out) channel multipliers of the released models
# (`pytorch_pretrained_biggan.convert_tf_to_pytorch.BigGAN{128,256,512}`):
# every second block upsamples; 256 and 512 px add blocks in the middle/end.
LAYERS = {
    128: ((False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2),
          (False, 2, 2), (True, 2, 1)),
    256: ((False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8),
          (False, 8, 8), (True, 8, 8), (False, 8, 8), (True, 8, 4),
          (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)),
    512: (
        (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8),
        (False, 8, 8), (True, 8, 8), (False, 8, 8), (True, 8, 4), (False, 4, 4),
        (True, 4, 2), (False, 2, 2), (True, 2, 1), (False, 1, 1), (True, 1, 1)),
}


def stats_interpolation(truncation: float, n_stats: int) -> tuple:
  """`(index, coef)`: which stored statistics rows a truncation uses.

  As the PyTorch port computes it (float64 host arithmetic): with
  `coef, index = modf(truncation / step)`, `step = 1 / (n_stats - 1)`, the
  statistics are `rows[index]` if coef == 0, else `coef * rows[index] +
  (1 - coef) * rows[index + 1]` (the weight `coef` goes to the LOWER row).
  Needed for parity: e.g. 0.14 -> (8.9e-16, 7) puts all the weight on row 8,
  and 0.565 -> (0.25, 28) weights rows 28 and 29 by 0.25 and 0.75.
  """
  if not 0 < truncation <= 1:
    raise ValueError(f'truncation must be in (0, 1], got {truncation}')
  coef, index = math.modf(truncation / (1.0 / (n_stats - 1)))
  return int(index), coef


def _l2_normalize(x, eps):
  """x / max(||x||, eps), as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _spectral_normalize(module: nn.Module, kernel, eps: float, train: bool):
  """`kernel / sigma` with torch spectral_norm's persistent `u` and `v`.

  `kernel` is `[in, out]` (Dense) or HWIO (conv); its matrix is taken as
  `kernel.reshape(-1, out).T` `[out, in]`, so `v` is in HWI order (the
  converter permutes PyTorch's IHW-ordered `weight_v` to match).
  """
  out = kernel.shape[-1]
  w_mat = kernel.reshape(-1, out).T

  def init(size):
    return lambda: _l2_normalize(
        jax.random.normal(module.make_rng('params'), (size,)), 1e-12)

  u_var = module.variable(SN_COLLECTION, 'u', init(out))
  v_var = module.variable(SN_COLLECTION, 'v', init(w_mat.shape[1]))
  u, v = u_var.value, v_var.value
  if train and not module.is_initializing():
    w_const = jax.lax.stop_gradient(w_mat).astype(jnp.float32)
    v = _l2_normalize(w_const.T @ u, eps)
    u = _l2_normalize(w_const @ v, eps)
    u_var.value, v_var.value = u, v
  sigma = jnp.dot(u, w_mat.astype(jnp.float32) @ v)
  return kernel / sigma


class SNDense(nn.Module):
  """Linear layer under torch spectral norm; `kernel` `[in, out]`."""
  features: int
  use_bias: bool = True
  eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel = self.param('kernel', nn.initializers.orthogonal(),
                        (x.shape[-1], self.features))
    kernel = _spectral_normalize(self, kernel, self.eps, train)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros,
                         (self.features,)).astype(self.dtype)
    return y


class SNConv(nn.Module):
  """Stride-1 'same' convolution under torch spectral norm; HWIO `kernel`."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.orthogonal(),
                        (k, k, x.shape[-1], self.features))
    kernel = _spectral_normalize(self, kernel, self.eps, train)
    y = layers.conv2d_same(x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros,
                         (self.features,)).astype(self.dtype)
    return y


def _truncation_stats(module: nn.Module, features: int, n_stats: int,
                      truncation: float):
  """Mean and variance `[C]` for `truncation` from the stored tables."""
  means = module.variable(STATS_COLLECTION, 'running_means', jnp.zeros,
                          (n_stats, features), jnp.float32).value
  variances = module.variable(STATS_COLLECTION, 'running_vars', jnp.ones,
                              (n_stats, features), jnp.float32).value
  index, coef = stats_interpolation(truncation, n_stats)
  if coef == 0.0:
    return means[index], variances[index]
  return (means[index] * coef + means[index + 1] * (1 - coef),
          variances[index] * coef + variances[index + 1] * (1 - coef))


class ConditionalBatchNorm(nn.Module):
  """`(x - mean) / sqrt(var + eps) * (1 + scale(cond)) + offset(cond)`."""
  n_stats: int
  eps: float = 1e-4
  sn_eps: float = 1e-4

  @nn.compact
  def __call__(self, x, cond, truncation: float, train: bool = False):
    """x `[B, H, W, C]`, cond `[B, D]` -> `[B, H, W, C]`."""
    features = x.shape[-1]
    mean, var = _truncation_stats(self, features, self.n_stats, truncation)
    linear = lambda name: SNDense(
        features, use_bias=False, eps=self.sn_eps, name=name)
    scale = 1 + linear('scale')(cond, train)
    offset = linear('offset')(cond, train)
    out = (x.astype(jnp.float32) - mean) / jnp.sqrt(var + self.eps)
    return out * scale[:, None, None, :] + offset[:, None, None, :]


class OutputBatchNorm(nn.Module):
  """Unconditional BN on truncation statistics: `BN(x) * scale + bias`."""
  n_stats: int
  eps: float = 1e-4

  @nn.compact
  def __call__(self, x, truncation: float):
    features = x.shape[-1]
    mean, var = _truncation_stats(self, features, self.n_stats, truncation)
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    normalized = (x.astype(jnp.float32) - mean) / jnp.sqrt(var + self.eps)
    return normalized * scale + bias


class GenBlock(nn.Module):
  """Bottleneck residual block: BN-ReLU-conv1x1, [up], 2 x BN-ReLU-conv3x3,
  BN-ReLU-conv1x1; the skip drops to the first C/2 channels if the width
  halves, and is upsampled too."""
  out_channels: int
  upsample: bool
  n_stats: int
  bn_eps: float = 1e-4
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, truncation: float, train: bool = False):
    """x `[B, H, W, C_in]` -> `[B, H', W', out_channels]`."""
    in_channels = x.shape[-1]
    middle = in_channels // REDUCTION
    h = x
    for k, (features, size) in enumerate(
        ((middle, 1), (middle, 3), (middle, 3), (self.out_channels, 1))):
      h = ConditionalBatchNorm(
          self.n_stats, self.bn_eps, self.sn_eps,
          name=f'bn_{k}')(h, cond, truncation, train)
      h = nn.relu(h)
      if k == 1 and self.upsample:
        h = layers.upsample2(h)
      h = SNConv(
          features, size, eps=self.sn_eps, dtype=self.dtype,
          name=f'conv_{k}')(h, train)
    skip = x
    if in_channels != self.out_channels:
      skip = skip[..., :in_channels // 2]
    if self.upsample:
      skip = layers.upsample2(skip)
    return h + skip


class Attention(nn.Module):
  """SA-GAN self-attention of the port: `x + gamma * o(g . softmax(theta^T phi))`.

  theta/phi: C/8 and g: C/2 channels (1x1 SN convs, no bias), phi and g
  2x2 max-pooled; positions flattened row-major as PyTorch's NCHW `view`.
  `gamma` has shape `[1]`, as in the port.
  """
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    batch, height, width, channels = x.shape
    conv = lambda features, name: SNConv(
        features,
        1,
        use_bias=False,
        eps=self.sn_eps,
        dtype=self.dtype,
        name=name)
    theta = conv(channels // 8, 'theta')(x, train)
    phi = layers.max_pool2(conv(channels // 8, 'phi')(x, train))
    g = layers.max_pool2(conv(channels // 2, 'g')(x, train))
    theta = theta.reshape(batch, height * width, -1)
    phi = phi.reshape(batch, height * width // 4, -1)
    g = g.reshape(batch, height * width // 4, -1)
    beta = jax.nn.softmax(jnp.einsum('bqc,bkc->bqk', theta, phi), axis=-1)
    attended = jnp.einsum('bqk,bkc->bqc', beta, g)
    attended = attended.reshape(batch, height, width, channels // 2)
    out = conv(channels, 'o')(attended, train)
    gamma = self.param('gamma', nn.initializers.zeros, (1,))
    return x + gamma * out


class Generator(nn.Module):
  """BigGAN-deep generator (`pytorch_pretrained_biggan.BigGAN`).

  Attributes:
    num_classes: classes of the class-embedding (1000 for the release).
    dim_z: z width (the class embedding has the same width).
    ch: channel width (`channel_width`).
    layers: `(upsample, in_mult, out_mult)` per GenBlock.
    attention_position: self-attention goes BEFORE this block (the port's
      `attention_layer_position`); None: no attention.
    n_stats: rows of the truncation statistics tables.
    bn_eps, sn_eps: eps of BN and of spectral norm (the port uses 1e-4 for
      both; not recoverable from a checkpoint).
    truncation: default truncation in (0, 1] selecting the BN statistics;
      sample z from a normal truncated at 2 and scaled by it, as the release.
  """
  num_classes: int = 1000
  dim_z: int = 128
  ch: int = 128
  layers: Sequence[Sequence] = LAYERS[128]
  attention_position: Optional[int] = 8
  n_stats: int = 51
  bn_eps: float = 1e-4
  sn_eps: float = 1e-4
  truncation: float = 1.0
  dtype: Any = jnp.float32

  @property
  def num_new_classes(self) -> int:
    return 0  # no knowledge propagation: labels are the source classes

  @property
  def first_new_label(self) -> int:
    return self.num_classes

  @property
  def num_labels(self) -> int:
    return self.num_classes

  @property
  def resolution(self) -> int:
    return BOTTOM_WIDTH * 2**sum(bool(up) for up, _, _ in self.layers)

  @nn.compact
  def __call__(self,
               z,
               labels,
               train: bool = False,
               truncation: Optional[float] = None):
    """z `[B, dim_z]`, labels `[B]` ints or class vectors `[B, num_classes]`
    -> images `[B, R, R, 3]` in [-1, 1].

    `truncation` (a Python float) overrides the module's default.
    """
    truncation = self.truncation if truncation is None else truncation
    stats_interpolation(truncation, self.n_stats)  # validates it early
    table = self.param('embeddings', nn.initializers.normal(0.02),
                       (self.num_classes, self.dim_z))
    if labels.ndim == 2:  # class vectors, as the port takes them
      embedded = jnp.dot(labels.astype(jnp.float32), table)
    else:
      biggan.check_labels(labels, self.num_classes)
      embedded = jnp.take(table, labels, axis=0)
    cond = jnp.concatenate([z.astype(jnp.float32), embedded], axis=-1)
    width = self.layers[0][1] * self.ch
    h = SNDense(
        BOTTOM_WIDTH**2 * width,
        eps=self.sn_eps,
        dtype=self.dtype,
        name='gen_z')(cond, train)
    # The TF weights emit NHWC order: no transpose needed here.
    h = h.reshape(-1, BOTTOM_WIDTH, BOTTOM_WIDTH, width)
    for i, (upsample, _, out_mult) in enumerate(self.layers):
      if i == self.attention_position:
        h = Attention(self.sn_eps, self.dtype, name='attention')(h, train)
      h = GenBlock(
          out_mult * self.ch,
          bool(upsample),
          self.n_stats,
          self.bn_eps,
          self.sn_eps,
          self.dtype,
          name=f'block_{i}')(h, cond, truncation, train)
    h = nn.relu(
        OutputBatchNorm(self.n_stats, self.bn_eps, name='bn')(h, truncation))
    # conv_to_rgb keeps all `ch` outputs (they enter sigma); 3 are used.
    h = SNConv(
        self.ch, 3, eps=self.sn_eps, dtype=self.dtype,
        name='conv_to_rgb')(h, train)
    return jnp.tanh(h[..., :3].astype(jnp.float32))


def from_arch(arch: dict) -> Generator:
  """A Generator from its architecture.json dict (lists back to tuples)."""
  kwargs = {k: v for k, v in arch.items() if k != 'family'}
  if 'layers' in kwargs:
    kwargs['layers'] = tuple(tuple(layer) for layer in kwargs['layers'])
  return Generator(**kwargs)


def to_arch(generator: Generator) -> dict:
  """The JSON-able architecture dict of `generator`, tagged with FAMILY."""
  return dict(
      family=FAMILY,
      num_classes=generator.num_classes,
      dim_z=generator.dim_z,
      ch=generator.ch,
      layers=[list(layer) for layer in generator.layers],
      attention_position=generator.attention_position,
      n_stats=generator.n_stats,
      bn_eps=generator.bn_eps,
      sn_eps=generator.sn_eps,
      truncation=generator.truncation)


def abstract_variables(generator: Generator):
  """ShapeDtypeStructs of the generator's variables (no computation)."""
  z = jnp.zeros((1, generator.dim_z))
  labels = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: generator.init(jax.random.key(0), z, labels))
