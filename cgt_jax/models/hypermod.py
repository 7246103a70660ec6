r"""Hyper-Modulation's class-modulated convolutions (Laria et al. 2022).

The authors' code keeps each pretrained 3x3 kernel W only as a constant,
standardised per (in, out) pair over its k x k taps,

    W^[:, :, i, o] = (W[:, :, i, o] - m_io) / s_io ,

and its bias standardised over the output channels, b^ = (b - mean b) /
std b. A class vector v (the class network: an embedding of the K classes
and four linear + LeakyReLU(0.2) layers of width 64) drives one
hypernetwork per layer, linear maps (equalised learning rate, as every
linear layer of the method: `EqualDense`) v -> (gamma, beta) in R^{in x out}
and v -> delta_b in R^{out}:

    W'_c = c * (W^ * gamma(v_c) + beta(v_c))    (broadcast over the taps)
    b'_c = b^ + delta_b(v_c)

with the authors' equalised-learning-rate constant c = sqrt(2 / fan_in)
(fan_in = k * k * in): the hypernetworks then output values of order one,
the scale their learning rate (2e-3) is meant for. Every sample is
convolved with its own class's W'_c. With gamma = s / c and beta = m / c
(and delta_b = b - b^) the pretrained layer comes back exactly
(`closed_form_start`).

BigGAN's convolutions are spectrally normalised: here W is the kernel the
source model convolves with in eval mode, W / sigma with sigma from its
stored power-iteration vector (`pretrained_kernel`). W'_c is used as it is,
not normalised again: the hypernetworks learn the kernels' scale, as the
authors' do on StyleGAN, whose kernels are not normalised either. The
source's batch norms are untouched.

A full-rank hypernetwork has task_dim x 2 x in x out weights (51M for the
CIFAR BigGAN's 256-channel layers). `rank > 0` is cgt_jax's low-rank
option, a deviation from the paper: gamma = G0 + A(v) B(v) and beta = B0 +
C(v) D(v) with class-independent bases G0, B0 [in, out] and rank-r factors
(A, C: v -> [in, r]; B, D: v -> [r, out]); the closed-form start sets the
bases to s / c and m / c.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cgt_jax.models import layers
from cgt_jax.models import new_classes

TASK_DIM = 64  # the class vector's width in the authors' code
CONSTANTS = 'hypermod_constants'  # the variable collection of W^ and b^
CLASS_NETWORK = 'class_network'
MODULATED_SUFFIX = '_mod'  # block_i/conv1 is modulated by block_i/conv1_mod


def part_of(path: str) -> Optional[str]:
  """'class_network' or 'hypernetworks' for a Hyper-Modulation parameter
  path of the generator, else None."""
  head, *rest = path.split('/')
  if head == CLASS_NETWORK:
    return 'class_network'
  if rest and rest[0].endswith(MODULATED_SUFFIX):
    return 'hypernetworks'
  return None


@dataclasses.dataclass(frozen=True)
class Modulation(new_classes.NewClassForm):
  """The generator's new-class form for Hyper-Modulation: a class network
  and a modulated twin (`<conv>_mod`) of both 3x3 convolutions of every
  block; new-class samples take the twin's output. G keeps the source
  model's BN statistics and SN vectors (its batch norms and spectral norms
  stay as they are; the closed-form start then reproduces the source
  exactly).

  Attributes:
    rank: 0 for full-rank hypernetworks (the paper), else the low-rank
      option's rank.
  """
  rank: int = 0
  trains_generator_statistics = False

  def class_network(self, num_new):
    return ClassNetwork(num_new, name=CLASS_NETWORK)

  def modulated_conv(self, features, kernel_size, name):
    return ModulatedConv(
        features, kernel_size, self.rank, name=name + MODULATED_SUFFIX)


def standardize_kernel(kernel):
  """`(W^, m, s)` of an HWIO kernel: m, s `[in, out]` over the taps.

  A pair whose taps are all equal (s at float noise) has W^ = 0 and s
  taken as 1, so that W^ * s + m is still the kernel.
  """
  kernel = jnp.asarray(kernel, jnp.float32)
  mean = jnp.mean(kernel, axis=(0, 1))
  std = jnp.std(kernel, axis=(0, 1))
  flat = std <= 1e-6 * jnp.max(jnp.abs(kernel), axis=(0, 1))
  std = jnp.where(flat, 1.0, std)
  return jnp.where(flat, 0.0, (kernel - mean) / std), mean, std


def standardize_bias(bias):
  """`(b^, b - b^)`: the standardised bias and the offset that restores b."""
  bias = jnp.asarray(bias, jnp.float32)
  std = jnp.std(bias)
  standardized = (bias - jnp.mean(bias)) / jnp.where(std > 0, std, 1.0)
  return standardized, bias - standardized


def pretrained_kernel(conv_variables: dict, sn_eps: float):
  """The kernel a source `layers.SNConv` convolves with in eval mode,
  `W / sigma` (sigma from the stored `sn/u`)."""
  kernel = jnp.asarray(conv_variables['params']['kernel'], jnp.float32)
  w_mat = kernel.reshape(-1, kernel.shape[-1]).T
  sigma, _ = layers.power_iteration(w_mat, conv_variables['sn']['u'], sn_eps)
  return kernel / sigma


class EqualDense(nn.Module):
  """StyleGAN's equalised-learning-rate linear layer, the authors' for the
  class network and the hypernetworks: weights drawn N(0, 1) and scaled by
  sqrt(2 / fan_in) at every call, zero biases. The scale makes an Adam
  step of lr move the effective weight by lr * sqrt(2 / fan_in), the step
  size the authors' learning rates (2e-3) were chosen for."""
  features: int
  kernel_init: Any = nn.initializers.normal(1.0)

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return x @ (kernel * np.sqrt(2.0 / x.shape[-1])) + bias


class ClassNetwork(nn.Module):
  """v_c: an embedding of the K classes, then 4 x (equalised linear +
  LeakyReLU 0.2)."""
  num_classes: int
  width: int = TASK_DIM
  depth: int = 4

  @nn.compact
  def __call__(self, labels):
    table = self.param('embedding', nn.initializers.normal(1.0),
                       (self.num_classes, self.width))
    # Equalised like the authors' embedding: N(0, 1) rows, sqrt(2 / width).
    v = table[labels] * np.sqrt(2.0 / self.width)
    for i in range(self.depth):
      v = nn.leaky_relu(EqualDense(self.width, name=f'linear_{i}')(v), 0.2)
    return v


def equalized_scale(kernel_size: int, in_features: int) -> float:
  """c = sqrt(2 / fan_in), the authors' equalised-lr constant on W'_c."""
  return float(np.sqrt(2.0 / (kernel_size * kernel_size * in_features)))


def check_rank(rank: int, in_features: int, out_features: int):
  """Rejects a low-rank option that is not lower than the layer's rank."""
  limit = min(in_features, out_features)
  if not 0 <= rank <= limit:
    raise ValueError(
        f'hypermod rank {rank} does not fit a {in_features} -> '
        f'{out_features} convolution: use 0 (full rank, the paper) or a '
        f'rank from 1 to {limit}')


class ModulatedConv(nn.Module):
  """A 'same' convolution whose kernel and bias each sample's class vector
  sets: `W^ * gamma(v) + beta(v)`, `b^ + delta_b(v)`.

  W^ and b^ are variables of the `CONSTANTS` collection (never trained),
  set from the pretrained layer by `constants_from`.

  Attributes:
    features: output channels.
    kernel_size: k.
    rank: 0 for full-rank hypernetworks (the paper), else the rank of the
      low-rank option.
  """
  features: int
  kernel_size: int = 3
  rank: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, v):
    """x `[B, H, W, in]`, v `[B, task_dim]` -> `[B, H, W, features]`."""
    in_features, k = x.shape[-1], self.kernel_size
    check_rank(self.rank, in_features, self.features)
    shape = (in_features, self.features)
    w_hat = self.variable(CONSTANTS, 'kernel', jnp.zeros, (k, k) + shape).value
    b_hat = self.variable(CONSTANTS, 'bias', jnp.zeros, (self.features,)).value
    gamma = self._modulation('gamma', v, shape)
    beta = self._modulation('beta', v, shape)
    scale = equalized_scale(k, in_features)
    kernels = scale * (w_hat[None] * gamma[:, None, None] + beta[:, None, None])
    delta_b = EqualDense(self.features, name='delta_bias')(v)
    return per_sample_conv(x, kernels, self.dtype) + (
        b_hat + delta_b)[:, None, None, :].astype(self.dtype)

  def _modulation(self, name, v, shape):
    """gamma or beta `[B, in, out]` of each sample's class vector."""
    if not self.rank:
      dense = EqualDense(int(np.prod(shape)), name=name)
      return dense(v).reshape((-1,) + shape)
    base = self.param(f'{name}_base', nn.initializers.zeros, shape)
    left = EqualDense(
        shape[0] * self.rank, name=f'{name}_left')(v).reshape(
            (-1, shape[0], self.rank))
    right = EqualDense(
        self.rank * shape[1],
        kernel_init=nn.initializers.zeros,
        name=f'{name}_right')(v).reshape((-1, self.rank, shape[1]))
    return base + left @ right


def per_sample_conv(x, kernels, dtype):
  """'Same' convolution of each sample `x[b]` `[H, W, in]` with its own
  kernel `kernels[b]` `[k, k, in, out]`, computed in `dtype`.

  One batched matmul of the k x k shifted copies of the (zero-padded)
  image with the flattened kernels. XLA runs a vmapped convolution as a
  grouped convolution, and `lax.conv_general_dilated_patches` as a
  convolution too, whose input gradients XLA:CPU computes slowly
  (measured, 8 -> 8 channels, 32 px, batch 64, input gradient: 0.31 s for
  the patches, 0.02 s for these shifted slices).
  """
  batch, k, _, in_features, out_features = kernels.shape
  height, width = x.shape[1], x.shape[2]
  pad = (k - 1) // 2
  padded = jnp.pad(
      x.astype(dtype), ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
  # Features run (kh, kw, in), the order of the HWIO kernel's flattening.
  patches = jnp.concatenate([
      padded[:, i:i + height, j:j + width] for i in range(k) for j in range(k)
  ],
                            axis=-1)
  flat = kernels.reshape(batch, k * k * in_features, out_features)
  return jnp.einsum('bhwf,bfo->bhwo', patches, flat.astype(dtype))


def constants_from(kernel, bias) -> dict:
  """The `CONSTANTS` variables of a ModulatedConv for a pretrained layer."""
  w_hat, _, _ = standardize_kernel(kernel)
  b_hat, _ = standardize_bias(bias)
  return {'kernel': w_hat, 'bias': b_hat}


def closed_form_start(params: dict, kernel, bias) -> dict:
  """A ModulatedConv's params set so that every class draws the
  pretrained layer: gamma = s / c, beta = m / c, delta_b = b - b^ (kernels
  of the class-dependent parts zero)."""
  _, mean, std = standardize_kernel(kernel)
  _, offset = standardize_bias(bias)
  params = jax.tree_util.tree_map(jnp.asarray, dict(params))
  k, _, in_features, _ = np.shape(kernel)
  scale = equalized_scale(k, in_features)
  targets = {'gamma': std / scale, 'beta': mean / scale}
  for name, target in targets.items():
    if name in params:  # full rank
      params[name] = {
          'kernel': jnp.zeros_like(params[name]['kernel']),
          'bias': target.reshape(-1)
      }
    else:  # low rank: the base carries it, the product starts at zero
      params[f'{name}_base'] = target
      right = params[f'{name}_right']
      params[f'{name}_right'] = jax.tree_util.tree_map(jnp.zeros_like, right)
  params['delta_bias'] = {
      'kernel': jnp.zeros_like(params['delta_bias']['kernel']),
      'bias': offset
  }
  return params
