"""The two augmented views of Hyper-Modulation's Barlow Twins term, in JAX.

The authors draw two views of every image with kornia (their
`barlow_twins.py`); the same recipe here, one random draw per sample:

| step                       | view 1  | view 2  |
|----------------------------|---------|---------|
| random resized crop, cubic | always  | always  |
| horizontal flip            | p 0.5   | p 0.5   |
| colour jitter (0.4, 0.4, 0.2, 0.1) | p 0.8 | p 0.8 |
| grayscale                  | p 0.2   | p 0.2   |
| Gaussian blur 3x3, sigma 1.05 | p 0.5 | p 0.1  |
| solarize, threshold U(0, 0.5) | p 0  | p 0.2   |

Crops cover U(0.08, 1) of the image with aspect ratio in [3/4, 4/3]
(log-uniform), resized back to the full size. Jitter works on [0, 1]
values in kornia's order (brightness, contrast, saturation, hue); the hue
shift is a rotation of the chroma plane in YIQ space, a close and cheap
stand-in for kornia's HSV round trip (a documented deviation). Images come
and go in [-1, 1], NHWC.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# numpy, not jnp: a JAX array at import time would start the backend before
# the entry point sets its XLA flags (`runtime.process`).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
    np.float32)


@dataclasses.dataclass(frozen=True)
class View:
  """One view's augmentation recipe (probabilities per sample)."""
  blur_p: float
  solarize_p: float
  flip_p: float = 0.5
  crop_scale: tuple = (0.08, 1.0)
  crop_ratio: tuple = (3 / 4, 4 / 3)
  jitter: tuple = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, sat., hue
  jitter_p: float = 0.8
  grayscale_p: float = 0.2
  blur_sigma: float = 1.05
  solarize_max: float = 0.5

  def __call__(self, key, images):
    """`[B, H, W, 3]` in [-1, 1] -> the view, same shape and range."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(self._one)(keys, images)

  def _one(self, key, image):
    k = jax.random.split(key, 7)
    x = random_resized_crop(k[0], image, self.crop_scale, self.crop_ratio)
    x = jnp.where(jax.random.bernoulli(k[1], self.flip_p), x[:, ::-1], x)
    x = (x + 1.0) / 2.0
    x = jnp.where(
        jax.random.bernoulli(k[2], self.jitter_p),
        color_jitter(k[3], x, *self.jitter), x)
    x = jnp.where(jax.random.bernoulli(k[4], self.grayscale_p), grayscale(x), x)
    x = jnp.where(
        jax.random.bernoulli(k[5], self.blur_p),
        gaussian_blur(x, self.blur_sigma), x)
    threshold_key, apply_key = jax.random.split(k[6])
    threshold = jax.random.uniform(threshold_key, maxval=self.solarize_max)
    x = jnp.where(
        jax.random.bernoulli(apply_key, self.solarize_p),
        solarize(x, threshold), x)
    return x * 2.0 - 1.0


# The authors' two views (their transform and transform_prime).
VIEWS = (View(blur_p=0.5, solarize_p=0.0), View(blur_p=0.1, solarize_p=0.2))


def random_resized_crop(key, image, scale, ratio):
  """A random crop of `image` [H, W, C] of area fraction U(scale) and
  log-uniform aspect ratio in `ratio`, resized (bicubic) to [H, W, C]."""
  height, width = image.shape[0], image.shape[1]
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(
      jax.random.uniform(
          k_ratio, minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
  area = area * height * width
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
  top = jax.random.uniform(k_y) * (height - crop_h)
  left = jax.random.uniform(k_x) * (width - crop_w)
  # Output pixel o samples input coordinate o / s + offset.
  scale_hw = jnp.stack([height / crop_h, width / crop_w])
  translation = -jnp.stack([top, left]) * scale_hw
  resized = jax.image.scale_and_translate(image, image.shape, (0, 1), scale_hw,
                                          translation, 'cubic')
  return jnp.clip(resized, -1.0, 1.0)  # cubic weights overshoot the range


def grayscale(x):
  """Luma (ITU-R 601) in all three channels of `[..., 3]` in [0, 1]."""
  return jnp.repeat(jnp.sum(x * _LUMA, axis=-1, keepdims=True), 3, axis=-1)


def color_jitter(key, x, brightness, contrast, saturation, hue):
  """kornia's ColorJitter on one image in [0, 1]: factors U(1 - a, 1 + a)
  for brightness, contrast, saturation; a hue shift U(-hue, hue) turns."""
  k = jax.random.split(key, 4)
  factor = lambda key, a: jax.random.uniform(key, minval=1 - a, maxval=1 + a)
  x = jnp.clip(x * factor(k[0], brightness), 0.0, 1.0)
  mean = jnp.mean(grayscale(x))
  x = jnp.clip((x - mean) * factor(k[1], contrast) + mean, 0.0, 1.0)
  gray = grayscale(x)
  x = jnp.clip((x - gray) * factor(k[2], saturation) + gray, 0.0, 1.0)
  turn = jax.random.uniform(k[3], minval=-hue, maxval=hue)
  return jnp.clip(rotate_hue(x, 2 * jnp.pi * turn), 0.0, 1.0)


def rotate_hue(x, angle):
  """Rotates the chroma (I, Q) of YIQ by `angle` radians."""
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
  to_yiq = _RGB_TO_YIQ
  matrix = jnp.linalg.inv(to_yiq) @ rotation @ to_yiq
  return x @ matrix.T


def gaussian_blur(x, sigma, size=3):
  """A `size` x `size` Gaussian blur of `[H, W, C]`, reflected borders."""
  taps = jnp.arange(size) - (size - 1) / 2
  weights = jnp.exp(-taps**2 / (2 * sigma**2))
  weights = weights / jnp.sum(weights)
  pad = size // 2
  padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  height, width = x.shape[0], x.shape[1]
  rows = sum(w * padded[i:i + height] for i, w in enumerate(weights))
  return sum(w * rows[:, j:j + width] for j, w in enumerate(weights))


def solarize(x, threshold):
  """1 - x where x >= threshold (kornia's solarize, no additions)."""
  return jnp.where(x < threshold, x, 1.0 - x)
