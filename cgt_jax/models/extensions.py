"""Continual class extension: a generator extended again and again.

The paper's extended generator G' has N source classes (labels 0..N-1) and
M new ones (N..N+M-1). Extending it once more turns every class it knows
into a source of the next knowledge propagation: the next K classes get
labels N+M..N+M+K-1, their prior has one row per known class, and the
classes already learned keep their meaning and their images.

The M classes learned before are an *earlier extension*: their new-class
layer (KP or BSA) stays in every conditional BN, frozen and renamed
`<module>_extension_<g>` (g = 1 for the first extension), so that `kp` and
`bsa` always name the layer of the classes being learned now (the
trainable groups, the regularisers and the weight surgery keep reading
that name). The BN running statistics they were drawn with are kept,
frozen, beside the source classes' (`layers.normalize_batch`).

Labels, in order: source classes, each earlier extension's classes in the
order they were added, then the newest classes.
"""

import dataclasses
import re
from typing import Any, Optional

import jax.numpy as jnp

INFIX = '_extension_'
_EARLIER = re.compile(rf'^\w+?{INFIX}(\d+)(_|$)')


@dataclasses.dataclass(frozen=True)
class Extension:
  """One earlier extension of a generator.

  Attributes:
    num_classes: the classes it added.
    form: its new-class form (`kp.KPOptions` or `bsa.FreeVectors`: a form
      with conditional-BN layers).
  """
  num_classes: int
  form: Any


def module_name(module: str, index: int) -> str:
  """The name of earlier extension `index`'s layer of `module` ('kp')."""
  return f'{module}{INFIX}{index}'


def index_of(path: str) -> Optional[int]:
  """The earlier extension (1, 2, ...) a `/`-joined variable path belongs
  to, else None."""
  for element in path.split('/')[:-1]:
    match = _EARLIER.match(element)
    if match:
      return int(match.group(1))
  return None


def first_labels(num_source: int, counts) -> list:
  """The first label of each earlier extension (of `counts` classes each,
  in label order), then of the newest classes."""
  firsts = [num_source]
  for count in counts:
    firsts.append(firsts[-1] + count)
  return firsts


def generation(labels, firsts) -> jnp.ndarray:
  """int `[B]`: 0 for source labels, g for earlier extension g, and
  `len(firsts)` for the newest classes (`firsts` from `first_labels`)."""
  return sum((labels >= first).astype(jnp.int32) for first in firsts)


def check_forms(earlier, newest) -> None:
  """Raises ValueError unless every extension of a continually extended
  generator has conditional-BN layers (knowledge propagation or BSA)."""
  if not earlier:
    return
  for form in [e.form for e in earlier] + [newest]:
    if not getattr(form, 'extends_continually', False):
      raise ValueError(
          f'an extension of form {type(form).__name__} cannot be extended '
          'again: continual extension takes knowledge propagation (kp) or '
          'BSA extensions only')
