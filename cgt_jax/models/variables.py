"""Copying variables between models of related architectures."""

import numpy as np
from flax import traverse_util


def merge(source: dict, fresh: dict, what: str = 'model') -> dict:
  """`fresh` variables with every variable `source` has copied over.

  Used to start a bigger model (extra classes, extra layers) from a trained
  smaller one: the extra variables keep their fresh initialisation.

  Raises:
    ValueError naming the variable if `source` has one that `fresh` lacks or
    that has another shape.
  """
  merged = {}
  for collection, tree in fresh.items():
    fresh_flat = traverse_util.flatten_dict(dict(tree), sep='/')
    source_flat = traverse_util.flatten_dict(
        dict(source.get(collection, {})), sep='/')
    for key, value in source_flat.items():
      if key not in fresh_flat:
        raise ValueError(
            f'source variable {collection}/{key} does not exist in the new '
            f'{what}: do the architectures match (resolution, ch, '
            'shared_dim, attention)?')
      if np.shape(value) != np.shape(fresh_flat[key]):
        raise ValueError(
            f'source variable {collection}/{key} has shape {np.shape(value)} '
            f'but the new {what} expects {np.shape(fresh_flat[key])}')
    merged[collection] = traverse_util.unflatten_dict(
        {
            **fresh_flat,
            **source_flat
        }, sep='/')
  return merged
