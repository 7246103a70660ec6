"""Inception-v3 in Flax (NHWC, inference only) for FID, KMMD and IS.

Two weight variants share one network; they differ in the pooling of a few
Mixed blocks, the number of classes and the input preprocessing:

* `fid`: the TF 2015 Inception graph that FID is defined with, as ported to
  PyTorch by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`): 1008
  logits; the pool branches of Mixed_5b-5d, 6b-6e and 7b average without
  counting the zero padding, and Mixed_7c's pool branch is a max-pool.
  Input: images in [-1, 1], bilinearly resized to 299 (align_corners=False,
  as pytorch-fid), fed in as [-1, 1].
* `torchvision`: torchvision's `inception_v3(IMAGENET1K_V1)` with
  `transform_input=False`, which the cGANTransfer/BigGAN-PyTorch FID uses:
  1000 logits; input x in [-1, 1] -> (x + 1) / 2 -> ImageNet mean/std ->
  bilinear resize to 299 with align_corners=True (BigGAN-PyTorch's
  WrapInception). Its numbers are not comparable to `fid` numbers.

pool3 is the spatial mean of Mixed_7c (2048-d); logits are `fc(pool3)`
(dropout is the identity at inference). Module names mirror the PyTorch
ones (`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`, ..., `fc`), so importing
weights is a rename plus a layout transpose (see inception_convert.py).
BatchNorm uses its running statistics only (eps 1e-3, both variants); the
convolutions have no bias. torchvision's auxiliary classifier (AuxLogits) is
a training-only head and is not built.
"""

import dataclasses
import functools
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

INPUT_SIZE = 299
POOL3_DIM = 2048
BN_EPS = 1e-3
# torchvision's ImageNet normalisation (WrapInception in BigGAN-PyTorch).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Variant:
  """What distinguishes the two weight sets (see the module docstring)."""
  name: str
  num_classes: int
  fid_blocks: bool  # pytorch-fid's FIDInceptionA/C/E_1/E_2 pooling
  imagenet_normalize: bool
  align_corners: bool


VARIANTS = {
    'fid':
        Variant(
            'fid',
            1008,
            fid_blocks=True,
            imagenet_normalize=False,
            align_corners=False),
    'torchvision':
        Variant(
            'torchvision',
            1000,
            fid_blocks=False,
            imagenet_normalize=True,
            align_corners=True),
}


def get_variant(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f'unknown Inception variant {name!r}: use one of '
                     f'{sorted(VARIANTS)}')
  return VARIANTS[name]


# ----------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------


def _source_coordinates(in_size: int, out_size: int, align_corners: bool):
  """Lower/upper source indices and upper weight for one axis (numpy).

  The coordinate rule of PyTorch's `F.interpolate(mode='bilinear')` with a
  given output size: align_corners=True maps the corner pixel centres onto
  each other, align_corners=False maps pixel areas (half-pixel centres) and
  clamps negative source coordinates to 0. PyTorch's CPU kernel rounds the
  scale to float32 and then evaluates `scale * (dst + 0.5) - 0.5` as one
  fused multiply-add; float64 arithmetic on the float32 scale is exact here
  (24 + 12 bits), so one final rounding reproduces its weights bit for bit.
  """
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (
        np.float32(in_size - 1) /
        np.float32(out_size - 1) if out_size > 1 else np.float32(0))
    src = dst * np.float64(scale)
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((dst + 0.5) * np.float64(scale) - 0.5, 0)
  src = src.astype(np.float32)
  lower = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  return lower, upper, (src - lower).astype(np.float32)


def _lerp_axis(x: jax.Array, axis: int, out_size: int,
               align_corners: bool) -> jax.Array:
  lower, upper, weight = _source_coordinates(x.shape[axis], out_size,
                                             align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight = jnp.asarray(weight).reshape(shape).astype(x.dtype)
  x_lower = jnp.take(x, lower, axis=axis)
  x_upper = jnp.take(x, upper, axis=axis)
  return (1 - weight) * x_lower + weight * x_upper


def resize_bilinear(images: jax.Array, size: Tuple[int, int],
                    align_corners: bool) -> jax.Array:
  """PyTorch's bilinear `F.interpolate` (no antialiasing) for NHWC images.

  `images` `[batch, height, width, channels]` -> `[batch, *size, channels]`.
  Width is interpolated before height, the order of PyTorch's kernel.
  (For align_corners=False, `jax.image.resize(..., antialias=False)` agrees
  to ~1e-7 but has no align_corners=True mode, which torchvision needs.)
  """
  x = _lerp_axis(images, 2, size[1], align_corners)
  return _lerp_axis(x, 1, size[0], align_corners)


def preprocess(images: jax.Array, variant: Variant) -> jax.Array:
  """Generator-range images `[batch, h, w, 3]` in [-1, 1] -> network input.

  Returns `[batch, 299, 299, 3]` float32 in the range the variant's weights
  were trained with.
  """
  x = images.astype(jnp.float32)
  if variant.imagenet_normalize:
    x = (x + 1) / 2
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), variant.align_corners)
  return x


# ----------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------


def _pair(value) -> Tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Conv (no bias) + inference BatchNorm + ReLU, torchvision's BasicConv2d.

  `padding` is PyTorch's symmetric padding per spatial axis.
  """
  features: int
  kernel_size: Any
  strides: Any = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = _pair(self.padding)
    x = nn.Conv(
        self.features,
        _pair(self.kernel_size),
        strides=_pair(self.strides),
        padding=((pad_h, pad_h), (pad_w, pad_w)),
        use_bias=False,
        name='conv')(
            x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name='bn')(x)
    return nn.relu(x)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


def _pool_3x3_s1(x: jax.Array, kind: str) -> jax.Array:
  """The 3x3, stride 1, pad 1 pooling of a Mixed block's pool branch.

  'avg' counts the zero padding (torchvision), 'avg_exclude_pad' does not
  (the TF graph, i.e. pytorch-fid), 'max' is FIDInceptionE_2's max-pool.
  """
  padding = ((1, 1), (1, 1))
  if kind == 'max':
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=padding)
  return nn.avg_pool(
      x, (3, 3),
      strides=(1, 1),
      padding=padding,
      count_include_pad=kind == 'avg')


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pool branches."""
  pool_features: int
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(64, 1, name='branch1x1')(x)
    branch5x5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    branch5x5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(branch5x5)
    dbl = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    dbl = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(dbl)
    dbl = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(dbl)
    pool = BasicConv2d(
        self.pool_features, 1, name='branch_pool')(
            _pool_3x3_s1(x, self.pool))
    return jnp.concatenate([branch1x1, branch5x5, dbl, pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(384, 3, strides=2, name='branch3x3')(x)
    dbl = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    dbl = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(dbl)
    dbl = BasicConv2d(96, 3, strides=2, name='branch3x3dbl_3')(dbl)
    return jnp.concatenate([branch3x3, dbl, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e: factorised 7x7 branches with `channels_7x7` channels."""
  channels_7x7: int
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    dbl = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(dbl)
    dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(dbl)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(dbl)
    dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(dbl)
    pool = BasicConv2d(192, 1, name='branch_pool')(_pool_3x3_s1(x, self.pool))
    return jnp.concatenate([branch1x1, b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: expanded filter bank with split 1x3 / 3x1 outputs."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
    ],
                         axis=-1)
    dbl = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    dbl = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(dbl)
    dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(dbl),
    ],
                          axis=-1)
    pool = BasicConv2d(192, 1, name='branch_pool')(_pool_3x3_s1(x, self.pool))
    return jnp.concatenate([branch1x1, b3, dbl, pool], axis=-1)


class InceptionV3(nn.Module):
  """Inception-v3 trunk + fc on preprocessed `[batch, 299, 299, 3]` input.

  Returns `(pool3 [batch, 2048], logits [batch, num_classes])`.
  """
  num_classes: int = 1000
  fid_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array):
    # The TF graph averages over valid pixels only, and ends with a max-pool
    # branch in Mixed_7c; torchvision counts padding everywhere.
    pool = 'avg_exclude_pad' if self.fid_blocks else 'avg'
    last_pool = 'max' if self.fid_blocks else 'avg'
    x = BasicConv2d(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, pool, name='Mixed_5b')(x)
    x = InceptionA(64, pool, name='Mixed_5c')(x)
    x = InceptionA(64, pool, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, pool, name='Mixed_6b')(x)
    x = InceptionC(160, pool, name='Mixed_6c')(x)
    x = InceptionC(160, pool, name='Mixed_6d')(x)
    x = InceptionC(192, pool, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(pool, name='Mixed_7b')(x)
    x = InceptionE(last_pool, name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name='fc')(pool3)
    return pool3, logits


def build(variant_name: str) -> InceptionV3:
  variant = get_variant(variant_name)
  return InceptionV3(variant.num_classes, variant.fid_blocks)


@functools.lru_cache(maxsize=None)
def abstract_variables(variant_name: str):
  """ShapeDtypeStructs of the variant's variables (cached; do not mutate)."""
  model = build(variant_name)
  x = jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


@functools.lru_cache(maxsize=None)
def apply_fn(variant_name: str):
  """`fn(variables, images [b, h, w, 3] in [-1, 1]) -> {'features', 'logits'}`.

  `features` is pool3 `[b, 2048]`, `logits` `[b, num_classes]`. The same
  function object is returned for a variant, so jit caches are shared.
  """
  variant = get_variant(variant_name)
  model = build(variant_name)

  def fn(variables, images):
    pool3, logits = model.apply(variables, preprocess(images, variant))
    return {'features': pool3, 'logits': logits}

  return fn
