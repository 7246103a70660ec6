"""The demo's generated dataset: coloured shapes, 56 classes of 32x32 images.

Every class is a combination of two shared factors, a SHAPE (7) and a COLOUR
(8): 'red_disc', 'blue_ring', ... Each image is the class's filled shape on a
dark, noisy gradient background, with random position, size and colour
jitter, so a GAN has a distribution to learn while the class stays obvious
to the eye. Nothing is read from disk or the network; images are a pure
function of (seed, class name, index), rendered with vectorised numpy.

Why the held-out classes are new combinations of seen factors:
`DEFAULT_TARGET_CLASSES` holds out one class per colour along a Latin-square
diagonal (colour i with shape i mod 7), so every held-out class's colour
appears in 6 source classes and its shape in at least 6. A generator
pretrained on the 48 source classes has therefore learnt every ingredient of
a target class, just never that pairing. This is the situation knowledge
propagation is built for: a new class's batch-norm parameters are learnt as
a combination of the source classes' parameters, so 'green_square' can be
composed from the green classes and the square classes, from few images.
"""

from typing import Optional, Sequence

import numpy as np

from cgt_jax.data import datasets

RESOLUTION = 32
SHAPES = ('disc', 'square', 'triangle', 'cross', 'ring', 'diamond', 'bar')
COLOURS = {
    'red': (225, 35, 35),
    'green': (40, 200, 60),
    'blue': (45, 90, 245),
    'yellow': (240, 225, 40),
    'cyan': (40, 220, 225),
    'magenta': (220, 45, 220),
    'orange': (250, 135, 15),
    'white': (240, 240, 240),
}
CLASS_NAMES = tuple(f'{c}_{s}' for c in COLOURS for s in SHAPES)
# Colour i with shape i mod 7 (a Latin-square diagonal), written out.
DEFAULT_TARGET_CLASSES = ('red_disc', 'green_square', 'blue_triangle',
                          'yellow_cross', 'cyan_ring', 'magenta_diamond',
                          'orange_bar', 'white_disc')


def factors(class_name: str) -> tuple[str, str]:
  """The (shape, colour) of a class, e.g. 'red_disc' -> ('disc', 'red')."""
  colour, _, shape = class_name.partition('_')
  if colour not in COLOURS or shape not in SHAPES:
    raise datasets.DatasetError(
        f'{class_name!r} is not a synthetic class: names are '
        f'<colour>_<shape>, colours {list(COLOURS)}, shapes {list(SHAPES)}')
  return shape, colour


def source_and_target_names() -> tuple[list[str], list[str]]:
  """The 48 source and the 8 held-out target class names."""
  targets = list(DEFAULT_TARGET_CLASSES)
  return [n for n in CLASS_NAMES if n not in targets], targets


def make_dataset(
    images_per_class: int,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None) -> datasets.ClassDataset:
  """Renders `images_per_class` images of each class.

  Args:
    images_per_class: images per class.
    seed: the same seed gives the same images; a class's images do not
      depend on which other classes are rendered.
    class_names: the classes, labelled in this order (default all 56).

  Returns:
    A `ClassDataset` of uint8 `[len(class_names) * images_per_class, 32, 32,
    3]`, class-major.
  """
  class_names = list(CLASS_NAMES if class_names is None else class_names)
  datasets.check_class_names(class_names, CLASS_NAMES)
  params = [
      _sample_params(images_per_class, seed, name) for name in class_names
  ]
  params = {k: np.concatenate([p[k] for p in params]) for k in params[0]}
  shape_ids = np.repeat([SHAPES.index(factors(n)[0]) for n in class_names],
                        images_per_class)
  alpha = _shape_alpha(shape_ids, params['centre'], params['radius'])
  labels = np.repeat(
      np.arange(len(class_names), dtype=np.int32), images_per_class)
  return datasets.ClassDataset(_compose(alpha, params), labels, class_names)


def _compose(alpha: np.ndarray, params: dict) -> np.ndarray:
  """Shape over background plus grey noise, uint8 `[n, 32, 32, 3]`.

  In-place float32 passes: the images are 34M values at 56 x 200.
  """
  background = _background(params)
  images = params['colour'][:, None, None, :] - background
  images *= alpha[..., None]
  images += background
  images += params['noise'][..., None]
  np.clip(images, 0, 255, out=images)
  return np.rint(images, out=images).astype(np.uint8)


def _sample_params(n: int, seed: int, class_name: str) -> dict:
  """Per-image random factors of one class (arrays with leading dim `n`)."""
  rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name)])
  base_colour = np.array(COLOURS[factors(class_name)[1]], np.float32)
  brightness = rng.uniform(0.85, 1.05, (n, 1))
  colour = base_colour * brightness + rng.normal(0, 8, (n, 3))
  size = RESOLUTION
  return {
      'centre':
          rng.uniform(size / 2 - 4, size / 2 + 4, (n, 2)).astype(np.float32),
      'radius':
          rng.uniform(7.0, 11.0, n).astype(np.float32),
      'colour':
          np.clip(colour, 0, 255).astype(np.float32),
      'dark':
          rng.uniform(8, 40, (n, 3)).astype(np.float32),
      'gradient':
          rng.uniform(0, 30, n).astype(np.float32),
      'angle':
          rng.uniform(0, 2 * np.pi, n).astype(np.float32),
      # Uniform grey noise (std 3.5): normals would double the render time.
      'noise':
          12 * (rng.random((n, size, size), np.float32) - 0.5),
  }


def _background(params: dict) -> np.ndarray:
  """Dark linear gradients, float32 `[n, 32, 32, 3]`."""
  ramp = np.linspace(-0.5, 0.5, RESOLUTION, dtype=np.float32)
  along = (
      np.cos(params['angle'])[:, None, None] * ramp[None, None, :] +
      np.sin(params['angle'])[:, None, None] * ramp[None, :, None])
  level = params['gradient'][:, None, None] * along
  return params['dark'][:, None, None, :] + level[..., None]


def _shape_alpha(shape_ids: np.ndarray, centre: np.ndarray,
                 radius: np.ndarray) -> np.ndarray:
  """Coverage of each image's shape, float32 `[n, 32, 32]` in [0, 1].

  Args:
    shape_ids: int `[n]`, indices into `SHAPES`.
    centre: `[n, 2]` (x, y) in pixels.
    radius: `[n]`, the shape's half-extent in pixels.
  """
  grid = np.arange(RESOLUTION, dtype=np.float32) + 0.5
  alpha = np.empty((len(shape_ids), RESOLUTION, RESOLUTION), np.float32)
  for shape_id, shape in enumerate(SHAPES):
    rows = np.flatnonzero(shape_ids == shape_id)
    if not rows.size:
      continue
    scale = radius[rows, None, None]
    dx = (grid[None, None, :] - centre[rows, 0, None, None]) / scale
    dy = (grid[None, :, None] - centre[rows, 1, None, None]) / scale
    distance = _SIGNED_DISTANCE[shape](dx, dy) * scale
    # A pixel half inside the edge is half covered: a one-pixel soft edge
    # instead of staircase outlines, at the cost of one pass, not 4x
    # supersampling.
    alpha[rows] = np.clip(0.5 - distance, 0.0, 1.0)
  return alpha


def _box(dx, dy, half_width, half_height):
  return np.maximum(np.abs(dx) - half_width, np.abs(dy) - half_height)


def _triangle(dx, dy):
  # Apex up at dy = -0.95, base at dy = +0.75 with half-width 1: the
  # largest distance to the base line and the two side lines.
  sides = (1.7 * np.abs(dx) - dy - 0.95) / np.hypot(1.7, 1.0)
  return np.maximum(dy - 0.75, sides)


# Signed distance to each shape's outline (negative inside), in units of the
# shape's radius, from coordinates relative to its centre in the same units
# (dx `[n, 1, 32]`, dy `[n, 32, 1]`); exact or close enough for a soft edge.
_SIGNED_DISTANCE = {
    'disc':
        lambda dx, dy: np.sqrt(dx * dx + dy * dy) - 1.0,
    'square':
        lambda dx, dy: _box(dx, dy, 0.8, 0.8),
    'triangle':
        _triangle,
    'cross':
        lambda dx, dy: np.minimum(
            _box(dx, dy, 0.3, 1.0), _box(dx, dy, 1.0, 0.3)),
    'ring':
        lambda dx, dy: np.abs(np.sqrt(dx * dx + dy * dy) - 0.75) - 0.25,
    'diamond':
        lambda dx, dy: (np.abs(dx) + np.abs(dy) - 1.05) / np.sqrt(2),
    'bar':
        lambda dx, dy: _box(dx, dy, 1.0, 0.3),
}
