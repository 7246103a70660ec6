"""Layers with BigGAN-PyTorch semantics: spectral norm, PyTorch batch norm, attention.

Conventions shared by every module here:

* Images are NHWC, `[batch, height, width, channels]`.
* Variables live in three collections: `params` (trained), `batch_stats`
  (BN running mean/var) and `sn` (the spectral-norm `u` vectors).
* `train=True` means what PyTorch's `module.train()` means: BN normalises with
  batch statistics and updates the running ones, and every spectral-norm layer
  writes its advanced `u` back. Callers must then pass
  `mutable=['batch_stats', 'sn']` to `apply`. With `train=False` the same single
  power iteration is computed from the stored `u`, but nothing is written.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.runtime import xla_cpu

SN_COLLECTION = 'sn'
STATS_COLLECTION = 'batch_stats'
# Running statistics of the source classes, kept frozen in a generator
# extended by new classes (see `normalize_batch`).
SOURCE_STATS_COLLECTION = 'source_stats'
# Momentum of PyTorch's running statistics: running = 0.9 * running + 0.1 * batch.
BN_MOMENTUM = 0.1

Initializer = Callable[..., jax.Array]

# ----------------------------------------------------------------------------
# Initialisers
# ----------------------------------------------------------------------------


def weight_init(name: str) -> Initializer:
  """The BigGAN weight initialisers: 'ortho' or 'N02' (normal, std 0.02).

  Orthogonality is over the flattened `[fan_in, out]` matrix, which is the
  transpose of PyTorch's `[out, fan_in]` view and therefore gives the same
  family of (semi-)orthogonal weights.
  """
  if name == 'ortho':
    return nn.initializers.orthogonal(column_axis=-1)
  if name == 'N02':
    return nn.initializers.normal(stddev=0.02)
  raise ValueError(f"unknown init {name!r}: use 'ortho' or 'N02'")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Linear/Conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  BigGAN's init_weights() only re-initialises weights, so every bias (and the
  cGANTransfer offsets) keeps this default.
  """
  bound = 1.0 / float(fan_in)**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# ----------------------------------------------------------------------------
# Spectral norm
# ----------------------------------------------------------------------------


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  """x / max(||x||, eps), the normalisation of torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def power_iteration(w_mat: jax.Array, u: jax.Array, eps: float):
  """One power iteration on `w_mat` `[out, in]` from `u` `[out]`.

  Returns `(sigma, new_u)`. As in BigGAN-PyTorch, `u` and `v` are constants for
  the gradient; only `sigma = u'^T W v` is differentiated (through W).
  """
  w_const = jax.lax.stop_gradient(w_mat)
  v = _l2_normalize(u @ w_const, eps)
  new_u = _l2_normalize(w_const @ v, eps)
  sigma = (w_mat @ v) @ new_u
  return sigma, new_u


def spectral_sigma(module: nn.Module,
                   w_mat: jax.Array,
                   eps: float,
                   train: bool,
                   used: Any = True) -> jax.Array:
  """Spectral-norm estimate of `w_mat` `[out, in]` with `u` kept in `module`.

  `u` is a variable `sn/u` of shape `[out]`, initialised from N(0, 1) without
  normalisation, as BigGAN-PyTorch's `torch.randn` buffer. In train mode the
  advanced `u` is written back, but only if `used` (a bool, possibly traced)
  holds: a layer whose output no sample of the batch needs keeps its `u`,
  exactly as a PyTorch layer that is never called.
  """
  u_var = module.variable(
      SN_COLLECTION, 'u',
      lambda: jax.random.normal(module.make_rng('params'), (w_mat.shape[0],)))
  sigma, new_u = power_iteration(w_mat.astype(jnp.float32), u_var.value, eps)
  if train and not module.is_initializing():
    u_var.value = new_u if used is True else jnp.where(used, new_u, u_var.value)
  return sigma


class SNDense(nn.Module):
  """Spectrally normalised linear layer (`SNLinear`): `x @ (W / sigma) + b`.

  `kernel` is `[in, out]` (PyTorch `weight.T`); `u` indexes the outputs.
  """
  features: int
  use_bias: bool = True
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
  bias_init: Optional[Initializer] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, used: Any = True):
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.features))
    kernel = kernel / spectral_sigma(self, kernel.T, self.eps, train, used)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(x.shape[-1])
      y = y + self.param('bias', bias_init, (self.features,)).astype(self.dtype)
    return y


def conv2d_same(x, kernel, dtype):
  """NHWC x HWIO convolution, stride 1, 'same' padding, computed in `dtype`."""
  conv = _conv_same if _matmul_kernel_grad_pays(
      kernel.shape) else _xla_conv_same
  return conv(x.astype(dtype), kernel.astype(dtype))


def _matmul_kernel_grad_pays(kernel_shape) -> bool:
  """Whether per-tap matmuls beat XLA's kernel gradient for this conv.

  Only on XLA:CPU with its own (Eigen) convolutions: with YNNPACK on (the
  default cgt_jax sets, `cgt_jax/runtime/xla_cpu.py`) XLA's kernel gradient is the
  faster one, and GPUs and TPUs have their own convolution libraries.
  Measured with Eigen (2-core EPYC, docs/PERFORMANCE.md), batch 100: from
  128 channels on the taps win or tie (256 -> 256 at 32 px: 752 ms vs 2595
  ms; at 16 px 178 vs 209 ms; 1x1: 14 vs 98 ms; 3 -> 256 at 32 px: 42 vs
  69 ms), except at 8 px (52 vs 41 ms); on narrow convolutions they lose
  (32 channels at 32 px, batch 64: 47 ms vs 15 ms).
  """
  return xla_cpu.convolution_kernels() == 'Eigen' and _wide(kernel_shape)


def _wide(kernel_shape) -> bool:
  # The channel count decides on the shapes BigGAN uses.
  _, _, in_channels, out_channels = kernel_shape
  return max(in_channels, out_channels) >= 128


def _xla_conv_same(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _conv_same(x, kernel):
  return _xla_conv_same(x, kernel)


def _conv_same_fwd(x, kernel):
  return _xla_conv_same(x, kernel), (x, kernel)


def _conv_same_bwd(residuals, grad):
  """XLA's input gradient; the kernel gradient as one matmul per tap.

  Why not XLA's own kernel gradient: XLA:CPU runs it 2-2.5x slower than
  the forward convolution (a 3x3, 256-channel conv at 32 px, batch 50:
  600-740 ms against 230 ms), while k*k matmuls `x_shifted^T grad` take
  ~350 ms, and the discriminator's kernel gradients dominate a transfer
  step. Same values up to float rounding (tests/test_layers.py).
  """
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda t: _xla_conv_same(t, kernel), x)
  return input_vjp(grad)[0], _kernel_grad(x, grad, kernel.shape)


def _kernel_grad(x, grad, kernel_shape):
  kh, kw, cin, cout = kernel_shape
  # 'SAME' padding of a stride-1 conv: (k - 1) // 2 before, the rest after.
  top, left = (kh - 1) // 2, (kw - 1) // 2
  padded = jnp.pad(x,
                   ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
  _, h, w, _ = x.shape
  grad_rows = grad.reshape(-1, cout)
  taps = [
      jax.lax.dot_general(padded[:, i:i + h, j:j + w, :].reshape(-1, cin),
                          grad_rows, (((0,), (0,)), ((), ())))
      for i in range(kh)
      for j in range(kw)
  ]
  return jnp.stack(taps).reshape(kernel_shape).astype(x.dtype)


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class SNConv(nn.Module):
  """Spectrally normalised 2-D convolution, stride 1, 'same' padding.

  `kernel` is HWIO `[k, k, in, out]`. sigma is computed on the `[out, k*k*in]`
  matrix; its column order differs from PyTorch's `[out, in*k*k]`, which leaves
  sigma and both power-iteration vectors unchanged.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k, fan_in = self.kernel_size, x.shape[-1] * self.kernel_size**2
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1], self.features))
    w_mat = kernel.reshape(-1, self.features).T
    kernel = kernel / spectral_sigma(self, w_mat, self.eps, train)
    y = conv2d_same(x, kernel, self.dtype)
    if self.use_bias:
      bias = self.param('bias', torch_default_bias_init(fan_in),
                        (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class SNEmbed(nn.Module):
  """Spectrally normalised embedding table (the discriminator's projection).

  sigma is taken over `embedding` `[num_embeddings, features]` as it is, so
  `u` has one entry per class (PyTorch `SNEmbedding`).
  """
  num_embeddings: int
  features: int
  eps: float = 1e-12
  embedding_init: Initializer = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, labels, train: bool = False, used: Any = True):
    table = self.param('embedding', self.embedding_init,
                       (self.num_embeddings, self.features))
    table = table / spectral_sigma(self, table, self.eps, train, used)
    return jnp.take(table, labels, axis=0)


# ----------------------------------------------------------------------------
# Batch norm with PyTorch semantics
# ----------------------------------------------------------------------------


def normalize_batch(module: nn.Module,
                    x: jax.Array,
                    train: bool,
                    eps: float,
                    frozen_stats: Optional[tuple] = None) -> jax.Array:
  """`(x - mean) / sqrt(var + eps)` per channel, PyTorch `F.batch_norm` style.

  Train mode normalises with the biased batch variance over (N, H, W) and
  updates the running variance with the unbiased one (n / (n - 1)), momentum
  0.1; eval mode uses the running statistics (`batch_stats/mean`, `var`).
  Under `jit` with a batch sharded over devices the mean is global, i.e.
  cross-replica (synchronised) BN.

  `frozen_stats` (a generator extended by new classes): `(index, count)`,
  index int `[B]`. The running statistics follow the classes being trained,
  as in the reference, but the classes learned before keep theirs, frozen,
  in `source_stats`: set 0 (`mean`, `var`) the source classes', set g > 0
  (`mean_extension_g`, ...) those of earlier extension g of a continually
  extended generator (`models.extensions`). In eval mode sample i uses set
  `index[i]` when it is below `count`, else the running statistics:
  training new classes would otherwise shift every class learned before.
  """
  features = x.shape[-1]
  ra_mean = module.variable(STATS_COLLECTION, 'mean', jnp.zeros, (features,),
                            jnp.float32)
  ra_var = module.variable(STATS_COLLECTION, 'var', jnp.ones, (features,),
                           jnp.float32)
  x32 = x.astype(jnp.float32)
  if train:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axes)
    var = jnp.mean(jnp.square(x32 - mean), axes)
    if not module.is_initializing():
      n = x.size // features
      ra_mean.value = (1 - BN_MOMENTUM) * ra_mean.value + BN_MOMENTUM * mean
      ra_var.value = ((1 - BN_MOMENTUM) * ra_var.value + BN_MOMENTUM * var *
                      (n / max(n - 1, 1)))
  else:
    mean, var = ra_mean.value, ra_var.value
  if frozen_stats is not None:
    index, count = frozen_stats
    for which in range(count):
      frozen_mean = module.variable(SOURCE_STATS_COLLECTION,
                                    frozen_stats_name('mean', which), jnp.zeros,
                                    (features,), jnp.float32).value
      frozen_var = module.variable(SOURCE_STATS_COLLECTION,
                                   frozen_stats_name('var', which), jnp.ones,
                                   (features,), jnp.float32).value
      if not train:
        pick = (index == which).reshape((-1,) + (1,) * (x.ndim - 1))
        mean = jnp.where(pick, frozen_mean, mean)
        var = jnp.where(pick, frozen_var, var)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


def frozen_stats_name(statistic: str, which: int) -> str:
  """The `source_stats` variable of `statistic` ('mean', 'var') in frozen
  set `which` (`normalize_batch`)."""
  return statistic if not which else f'{statistic}_extension_{which}'


class AffineBatchNorm(nn.Module):
  """The generator's unconditional output BN: `BN(x) * scale + bias`.

  `scale` starts at 1 and `bias` at 0 (a plain affine, no "1 + gain").
  """
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, frozen_stats=None):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    normalized = normalize_batch(self, x, train, self.eps, frozen_stats)
    return (normalized * scale + bias).astype(self.dtype)


# ----------------------------------------------------------------------------
# Self-attention (SA-GAN block used by BigGAN)
# ----------------------------------------------------------------------------


def max_pool2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def avg_pool2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample2(x):
  """Nearest-neighbour x2 upsampling (F.interpolate(scale_factor=2))."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Attention(nn.Module):
  """Self-attention: `x + gamma * o(g . softmax(theta^T phi))`.

  theta/phi project to C/8 and g to C/2 channels (1x1 SN convs, no bias);
  phi and g are 2x2 max-pooled, so each position attends to HW/4 keys.
  Positions are flattened row-major (h * W + w), as PyTorch's NCHW `view`.
  `gamma` starts at 0, so the block begins as the identity.
  """
  eps: float = 1e-12
  kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    batch, height, width, channels = x.shape
    if channels < 8:
      raise ValueError(
          f'attention needs at least 8 channels (its query/key have C/8), got '
          f'{channels}: widen the model (ch) or move the attention resolution')
    conv = lambda features, name: SNConv(
        features,
        1,
        use_bias=False,
        eps=self.eps,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=name)
    theta = conv(channels // 8, 'theta')(x, train)
    phi = max_pool2(conv(channels // 8, 'phi')(x, train))
    g = max_pool2(conv(channels // 2, 'g')(x, train))
    theta = theta.reshape(batch, height * width, -1)
    phi = phi.reshape(batch, height * width // 4, -1)
    g = g.reshape(batch, height * width // 4, -1)
    beta = jax.nn.softmax(
        jnp.einsum('bqc,bkc->bqk', theta, phi).astype(jnp.float32), axis=-1)
    attended = jnp.einsum('bqk,bkc->bqc', beta.astype(g.dtype), g)
    attended = attended.reshape(batch, height, width, channels // 2)
    out = conv(channels, 'o')(attended, train)
    gamma = self.param('gamma', nn.initializers.zeros, ())
    return x + gamma.astype(out.dtype) * out


def attention_positions(resolutions: Sequence[int],
                        attention: Sequence[int]) -> tuple:
  """Indices of the blocks whose output resolution gets an attention block."""
  unknown = sorted(set(attention) - set(resolutions))
  if unknown:
    raise ValueError(
        f'attention at resolution(s) {unknown} is impossible: the blocks '
        f'output resolutions {list(resolutions)}; pick from those')
  return tuple(i for i, res in enumerate(resolutions) if res in attention)
