"""How the baselines give a pretrained BigGAN its new classes' parameters.

The literature leaves these starting points open (docs/METHODS.md says
what each original paper did); each is a documented option in
`config.method_options`:

* TransferGAN / FreezeD keep a plain BigGAN and append M rows to every
  class-indexed table: the per-layer BN tables (CIFAR form) or the shared
  class embedding (ImageNet form). `new_class_init='mean'` starts each new
  row at the mean of the source rows (the "average class", as the PyTorch
  BSA re-implementation does for its embedding); `'fresh'` keeps the random
  initialisation, as FreezeD does for its class tables.
* BSA (the adversarial class-extension form cGANTransfer compares with)
  learns free per-layer scale/shift vectors per new class: the KP layer
  without propagation, whose residuals ARE those vectors. `bsa_start='mean'`
  starts them at the source classes' mean BN offset, `'identity'` at gain 1
  and bias 0 (BatchNorm without class modulation).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cgt_jax.models import layers
from cgt_jax.models import variables as variables_lib

NEW_CLASS_INITS = ('mean', 'fresh')
BSA_STARTS = ('mean', 'identity')

# Class-indexed tables of a plain BigGAN generator: shared embedding or
# per-layer BN tables (first axis = class).
_CLASS_TABLE = re.compile(r'(^shared|/(gain|bias))/embedding$')


def extend_class_tables(source: dict, fresh: dict, num_source: int,
                        init: str) -> dict:
  """A plain BigGAN with N + M classes started from one with N classes.

  Args:
    source: variables of the N-class generator.
    fresh: freshly initialised variables of the (N + M)-class generator.
    num_source: N.
    init: 'mean' (new rows = mean of the source rows) or 'fresh'.
  Returns:
    `fresh` with every source variable copied in; class tables keep the
    source rows first, then the new rows.
  """
  if init not in NEW_CLASS_INITS:
    raise ValueError(f'new_class_init={init!r}: use one of {NEW_CLASS_INITS}')
  params = traverse_util.flatten_dict(dict(source['params']), sep='/')
  fresh_params = traverse_util.flatten_dict(dict(fresh['params']), sep='/')
  for key, table in params.items():
    if not _CLASS_TABLE.search(key):
      continue
    table = np.asarray(table)
    if init == 'mean':
      total = fresh_params[key].shape[0]
      new_rows = np.broadcast_to(
          table.mean(axis=0), (total - num_source,) + table.shape[1:])
    else:
      new_rows = np.asarray(fresh_params[key])[num_source:]
    params[key] = np.concatenate([table, new_rows]).astype(table.dtype)
  extended = dict(source, params=traverse_util.unflatten_dict(params, sep='/'))
  return variables_lib.merge(extended, fresh, 'class-extended generator')


def start_bsa_vectors(g_variables: dict, start: str, sn_eps: float) -> dict:
  """Sets every new-class residual to its BSA starting point.

  With `start='mean'` the residual rows of a BN layer become the mean, over
  source classes, of that layer's class-dependent offset: the table rows
  (CIFAR form), or E_k W_class / sigma(W) with the spectral norm the source
  layer applies in eval mode (ImageNet form). The z projection keeps the
  values `kp_ccbn.propagate_source_knowledge` gave it.
  """
  if start not in BSA_STARTS:
    raise ValueError(f'bsa_start={start!r}: use one of {BSA_STARTS}')
  params = traverse_util.flatten_dict(dict(g_variables['params']), sep='/')
  sn = traverse_util.flatten_dict(dict(g_variables.get('sn', {})), sep='/')
  for key in [k for k in params if re.search(r'/kp/residual_\w+/kernel$', k)]:
    bn, which = re.fullmatch(r'(.*)/kp/residual_(gamma|beta)/kernel',
                             key).groups()
    rows = jnp.zeros_like(params[key])
    if start == 'mean':
      source = f'{bn}/{"gain" if which == "gamma" else "bias"}'
      offset = _mean_source_offset(params, sn, source, sn_eps)
      rows = jnp.broadcast_to(offset, rows.shape).astype(rows.dtype)
    params[key] = rows
  return dict(g_variables, params=traverse_util.unflatten_dict(params, sep='/'))


def _mean_source_offset(params, sn, source, sn_eps):
  """Mean over source classes of a ccbn layer's class part `[C]`."""
  if f'{source}/embedding' in params:
    return jnp.mean(params[f'{source}/embedding'], axis=0)
  kernel = params[f'{source}/kernel']  # [class dim + z chunk, C]
  embedding = params['shared/embedding']
  sigma, _ = layers.power_iteration(kernel.T, sn[f'{source}/u'], sn_eps)
  class_part = kernel[:embedding.shape[1]]
  return jnp.matmul(
      jnp.mean(embedding, axis=0),
      class_part,
      precision=jax.lax.Precision.HIGHEST) / sigma
