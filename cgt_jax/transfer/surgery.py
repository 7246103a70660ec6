"""Weight surgery: a source BigGAN's variables -> an extended generator's.

* `init_from_source`: the authors' `load_state_dict(source, strict=False);
  load_previous_knowledge()`: every source variable copied, the KP prior
  (and z projection) filled from the source BN parameters.
* `extend_class_tables` (TransferGAN, FreezeD): a plain BigGAN with M rows
  appended to every class-indexed table.
* `start_bsa_vectors` (BSA): the free per-class vectors' starting point.

The literature leaves the baselines' starting points open (docs/METHODS.md
says what each original paper did); each is a documented option in
`config.method_options`:

* `new_class_init='mean'` starts each new table row at the mean of the
  source rows (the "average class", as the PyTorch BSA re-implementation
  does for its embedding); `'fresh'` keeps the random initialisation, as
  FreezeD does for its class tables.
* `bsa_start='mean'` starts the BSA vectors at the source classes' mean BN
  offset, `'identity'` at gain 1 and bias 0 (BN without class modulation).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cgt_jax.models import bsa
from cgt_jax.models import hypermod
from cgt_jax.models import kp
from cgt_jax.models import layers
from cgt_jax.models import variables as variables_lib

NEW_CLASS_INITS = ('mean', 'fresh')
BSA_STARTS = ('mean', 'identity')

# Class-indexed tables of a plain BigGAN generator: shared embedding or
# per-layer BN tables (first axis = class).
_CLASS_TABLE = re.compile(r'(^shared|/(gain|bias))/embedding$')
# The source BN layer that holds what a KP/BSA layer's gamma (beta) part
# starts from.
_SOURCE_LAYER = {'gamma': 'gain', 'beta': 'bias'}


def _new_class_layer(path: str):
  """`(bn, part, which)` of a KP or BSA parameter path, else None."""
  for module in (kp.MODULE, bsa.MODULE):
    found = kp.layer_of(path, module)
    if found:
      return found
  return None


def propagate_source_knowledge(params: dict) -> dict:
  """Fills every KP prior (and z projection, KP or BSA) from the source BN
  parameters.

  Per conditional BN layer, for gamma (and alike for beta with `bias`):

  * per-class tables (CIFAR form): `prior_gamma.kernel = gain.embedding`,
    i.e. row k is source class k's gain offset;
  * shared embedding E + SN linear W over [class part, z chunk] (ImageNet
    form): `prior_gamma.kernel = E @ W[:D]` (row k = the class-k part of the
    raw, un-normalised pretrained linear) and `z_proj_gamma.kernel = W[D:]`.

  Args:
    params: the extended generator's `params` (new layers freshly
      initialised).
  Returns:
    A new params tree; nothing else is changed.
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  shared = flat.get('shared/embedding')
  out = dict(flat)
  for key in flat:
    found = _new_class_layer(key)
    if not (found and key.endswith('/kernel') and
            found[1] in (kp.Part.PRIOR, kp.Part.Z_PROJECTION)):
      continue
    bn, part, which = found
    source = f'{bn}/{_SOURCE_LAYER[which]}'
    if shared is None:
      # A copy: sharing one buffer with the source table would break donation.
      out[key] = jnp.array(flat[f'{source}/embedding'], copy=True)
      continue
    weight = jnp.asarray(flat[f'{source}/kernel'])
    dim = shared.shape[1]
    if part is kp.Part.Z_PROJECTION:
      out[key] = weight[dim:]
    else:
      out[key] = jnp.matmul(
          jnp.asarray(shared),
          weight[:dim],
          precision=jax.lax.Precision.HIGHEST)
  return traverse_util.unflatten_dict(out, sep='/')


def init_from_source(source_variables: dict, fresh_variables: dict) -> dict:
  """The extended generator's variables, built from a source generator.

  Every variable the source has (weights, BN statistics, SN vectors) is
  copied into the freshly initialised extended generator; the new-class
  layers keep their fresh initialisation except the prior and z projection,
  which `propagate_source_knowledge` fills. The source BN statistics are
  also kept, frozen, as `source_stats` (the source classes' eval-mode
  statistics; `layers.normalize_batch`).

  Raises:
    ValueError naming the variable if a source variable is missing from the
    extended model or has another shape.
  """
  merged = variables_lib.merge(source_variables, fresh_variables,
                               'extended generator')
  merged['params'] = propagate_source_knowledge(merged['params'])
  if layers.SOURCE_STATS_COLLECTION in fresh_variables:
    # Copies: sharing buffers with batch_stats would break donation.
    merged[layers.SOURCE_STATS_COLLECTION] = jax.tree_util.tree_map(
        lambda x: jnp.array(x, copy=True), merged[layers.STATS_COLLECTION])
  return merged


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
  """Sets every BSA class vector to its starting point.

  With `start='mean'` the vectors of a BN layer become the mean, over
  source classes, of that layer's class-dependent offset: the table rows
  (CIFAR form), or E_k W_class / sigma(W) with the spectral norm the source
  layer applies in eval mode (ImageNet form). The z projection keeps the
  values `propagate_source_knowledge` gave it.
  """
  if start not in BSA_STARTS:
    raise ValueError(f'bsa_start={start!r}: use one of {BSA_STARTS}')
  params = traverse_util.flatten_dict(dict(g_variables['params']), sep='/')
  sn = traverse_util.flatten_dict(dict(g_variables.get('sn', {})), sep='/')
  for key in params:
    found = kp.layer_of(key, bsa.MODULE)
    if not (found and found[1] is kp.Part.RESIDUAL):
      continue
    bn, _, which = found
    rows = jnp.zeros_like(params[key])
    if start == 'mean':
      offset = _mean_source_offset(params, sn, f'{bn}/{_SOURCE_LAYER[which]}',
                                   sn_eps)
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


def start_modulated_convs(g_variables: dict, sn_eps: float,
                          closed_form: bool) -> dict:
  """Hyper-Modulation's constants from the source convolutions.

  Every modulated twin `block_i/<conv>_mod` gets W^ and b^ of the source
  convolution `block_i/<conv>` as it convolves in eval mode (W / sigma,
  `hypermod.pretrained_kernel`); with `closed_form` its hypernetworks start
  at gamma = s, beta = m (every class draws the source model), else they
  keep their fresh initialisation (for self-alignment to train).
  """
  params = traverse_util.flatten_dict(g_variables['params'], sep='/')
  sn = traverse_util.flatten_dict(g_variables[layers.SN_COLLECTION], sep='/')
  # Per-block copies: only the twins' entries are replaced.
  started = {
      block: dict(layer) for block, layer in g_variables['params'].items()
  }
  twins = sorted({
      tuple(p.split('/')[:2])
      for p in params
      if hypermod.part_of(p) == 'hypernetworks'
  })
  constants = {}
  for block, twin in twins:
    source = f'{block}/{twin[:-len(hypermod.MODULATED_SUFFIX)]}'
    kernel = hypermod.pretrained_kernel(
        {
            'params': {
                'kernel': params[f'{source}/kernel']
            },
            'sn': {
                'u': sn[f'{source}/u']
            }
        }, sn_eps)
    bias = params[f'{source}/bias']
    constants.setdefault(block,
                         {})[twin] = hypermod.constants_from(kernel, bias)
    if closed_form:
      started[block][twin] = hypermod.closed_form_start(started[block][twin],
                                                        kernel, bias)
  return {**g_variables, 'params': started, hypermod.CONSTANTS: constants}
