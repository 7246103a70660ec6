"""Weight surgery: a source BigGAN's variables -> an extended generator's.

* `init_from_source`: the authors' `load_state_dict(source, strict=False);
  load_previous_knowledge()`: every source variable copied, the KP prior
  (and z projection) filled from the source BN parameters.
* `extend_class_tables` (TransferGAN, FreezeD): a plain BigGAN with M rows
  appended to every class-indexed table.
* `start_bsa_vectors` (BSA): the free per-class vectors' starting point.
* `extend_again` (continual extension, `models.extensions`): an extended
  generator extended once more, every class it knew a source of the new
  prior; `extend_new_class_projection` grows its D alike.

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
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cgt_jax.models import bsa
from cgt_jax.models import extensions
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


def propagate_source_knowledge(params: dict,
                               learned_rows: Optional[dict] = None) -> dict:
  """Fills every KP prior (and z projection, KP or BSA) from the source BN
  parameters.

  Per conditional BN layer, for gamma (and alike for beta with `bias`):

  * per-class tables (CIFAR form): `prior_gamma.kernel = gain.embedding`,
    i.e. row k is source class k's gain offset;
  * shared embedding E + SN linear W over [class part, z chunk] (ImageNet
    form): `prior_gamma.kernel = E @ W[:D]` (row k = the class-k part of the
    raw, un-normalised pretrained linear) and `z_proj_gamma.kernel = W[D:]`.

  A continually extended generator (`models.extensions`) propagates from
  every class it knew: `learned_rows` (`learned_class_rows` of the model
  it extends) follow the source rows in its prior.

  Args:
    params: the extended generator's `params` (new layers freshly
      initialised).
    learned_rows: `{bn layer: {'gamma': [L, C], 'beta': [L, C]}}`, the
      prior rows of the L classes learned before, or None.
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
    else:
      weight = jnp.asarray(flat[f'{source}/kernel'])
      dim = shared.shape[1]
      if part is kp.Part.Z_PROJECTION:
        out[key] = weight[dim:]
        continue
      out[key] = jnp.matmul(
          jnp.asarray(shared),
          weight[:dim],
          precision=jax.lax.Precision.HIGHEST)
    if learned_rows is not None and part is kp.Part.PRIOR:
      out[key] = jnp.concatenate([out[key], learned_rows[bn][which]])
  return traverse_util.unflatten_dict(out, sep='/')


def _is_class_layer(module, method_name) -> bool:
  return method_name == '__call__' and isinstance(
      module, (kp.KnowledgePropagation, bsa.FreeClassVectors))


def learned_class_rows(generator, variables: dict) -> dict:
  """The prior rows of an extended generator's learned classes, for its
  next extension: `{bn layer: {'gamma': [L, C], 'beta': [L, C]}}`, row l
  for label N + l.

  A row is the class's BN offset at z = 0 as the generator draws it in
  eval mode, `gamma - 1` and `beta`, captured from a forward pass of the
  L labels (not recomputed, so it cannot drift from the model). In the
  ImageNet form it is scaled by the source layer's spectral norm sigma(W):
  a source class's row is the raw E_k W[:D], whose offset is
  E_k W[:D] / sigma(W), so every row of the prior has the same scale.
  """
  first = generator.num_classes
  labels = jnp.arange(first, generator.num_labels)
  z = jnp.zeros((len(labels), generator.dim_z))
  # One small forward, run op by op: compiling it would cost more.
  _, state = generator.apply(
      variables,
      z,
      labels,
      capture_intermediates=_is_class_layer,
      mutable=['intermediates'])
  per_bn = {}
  for path, calls in traverse_util.flatten_dict(
      state['intermediates'], sep='/').items():
    bn = path.rsplit('/', 2)[0]  # <bn>/<layer>/__call__
    (gain, bias), = calls
    # Earlier extension g's classes come before the newest ones.
    order = extensions.index_of(path) or len(generator.extensions) + 1
    per_bn.setdefault(bn, []).append((order, gain - 1, bias))
  firsts = extensions.first_labels(
      0, [e.num_classes for e in generator.extensions])
  ends = firsts[1:] + [len(labels)]
  params = traverse_util.flatten_dict(dict(variables['params']), sep='/')
  sn = traverse_util.flatten_dict(
      dict(variables.get(layers.SN_COLLECTION, {})), sep='/')
  rows = {}
  for bn, outputs in per_bn.items():
    outputs.sort(key=lambda item: item[0])
    # Each layer's outputs for its own labels, in label order.
    own = [(g[start:end], b[start:end])
           for (_, g, b), start, end in zip(outputs, firsts, ends)]
    rows[bn] = {}
    for which, part in zip(kp.WHICH, zip(*own)):
      source = f'{bn}/{_SOURCE_LAYER[which]}'
      scale = (1.0 if f'{source}/kernel' not in params else _eval_sigma(
          params, sn, source, generator.sn_eps))
      rows[bn][which] = jnp.concatenate(part) * scale
  return rows


def _eval_sigma(params: dict, sn: dict, layer: str, sn_eps: float):
  """sigma(W) of an SN linear as eval mode computes it (stored `u`), from
  flat `params` and `sn` trees."""
  sigma, _ = layers.power_iteration(
      jnp.asarray(params[f'{layer}/kernel']).T, sn[f'{layer}/u'], sn_eps)
  return sigma


def retire_newest(generator, variables: dict) -> dict:
  """An extended generator's variables as its next extension holds them:
  the newest classes' layers renamed to earlier extension E + 1's
  (`extensions.module_name`), and the BN running statistics, which
  followed those classes, kept as that extension's frozen statistics
  (`source_stats/*_extension_<E+1>`). Nothing is copied but renamed."""
  index = len(generator.extensions) + 1
  module = generator.new_classes.module
  retired = dict(variables)
  for collection in ('params', layers.SN_COLLECTION):
    if collection in variables:
      flat = traverse_util.flatten_dict(dict(variables[collection]), sep='/')
      retired[collection] = traverse_util.unflatten_dict(
          {
              _retired_path(k, module, index): v for k, v in flat.items()
          },
          sep='/')
  stats = traverse_util.flatten_dict(
      dict(variables.get(layers.SOURCE_STATS_COLLECTION, {})), sep='/')
  for key, value in traverse_util.flatten_dict(
      dict(variables[layers.STATS_COLLECTION]), sep='/').items():
    layer, statistic = key.rsplit('/', 1)
    stats[f'{layer}/{layers.frozen_stats_name(statistic, index)}'] = value
  retired[layers.SOURCE_STATS_COLLECTION] = traverse_util.unflatten_dict(
      stats, sep='/')
  return retired


def _retired_path(path: str, module: str, index: int) -> str:
  """`path` with the newest layer `module` renamed for extension `index`."""
  if kp.part_of(path, module) is None:
    return path
  elements = path.split('/')
  name = extensions.module_name(module, index)
  if elements[0].startswith(module + '_'):  # a shared similarity pair
    elements[0] = name + elements[0][len(module):]
  else:
    elements[elements.index(module, 1)] = name
  return '/'.join(elements)


def extend_again(generator, variables: dict, fresh_variables: dict) -> dict:
  """The next extension's variables from an already extended generator
  (`models.extensions`): its classes, original and learned, become the
  rows of the new prior; every variable it has is kept (renamed by
  `retire_newest`)."""
  rows = learned_class_rows(generator, variables)
  return init_from_source(
      retire_newest(generator, variables), fresh_variables, rows)


def extend_new_class_projection(source: dict, fresh: dict) -> dict:
  """A discriminator's variables for more new classes: the projection rows
  of the classes it knew (`new_embed` and its SN vector) first, the fresh
  rows of the newest classes after them."""
  grown = {}
  for collection, tree in source.items():
    flat = traverse_util.flatten_dict(dict(tree), sep='/')
    fresh_flat = traverse_util.flatten_dict(
        dict(fresh.get(collection, {})), sep='/')
    for key, value in flat.items():
      target = fresh_flat.get(key)
      if key.startswith('new_embed/') and target is not None and np.shape(
          target)[0] > np.shape(value)[0]:
        flat[key] = jnp.concatenate(
            [jnp.asarray(value),
             jnp.asarray(target)[np.shape(value)[0]:]])
    grown[collection] = traverse_util.unflatten_dict(flat, sep='/')
  return grown


def init_from_source(source_variables: dict,
                     fresh_variables: dict,
                     learned_rows: Optional[dict] = None) -> dict:
  """The extended generator's variables, built from a source generator.

  Every variable the source has (weights, BN statistics, SN vectors) is
  copied into the freshly initialised extended generator; the new-class
  layers keep their fresh initialisation except the prior and z projection,
  which `propagate_source_knowledge` fills. The source BN statistics are
  also kept, frozen, as `source_stats` (the source classes' eval-mode
  statistics; `layers.normalize_batch`), unless the source already keeps
  its own (a continually extended generator, `extend_again`, which also
  passes the `learned_rows` of its learned classes).

  Raises:
    ValueError naming the variable if a source variable is missing from the
    extended model or has another shape.
  """
  merged = variables_lib.merge(source_variables, fresh_variables,
                               'extended generator')
  merged['params'] = propagate_source_knowledge(merged['params'], learned_rows)
  if layers.SOURCE_STATS_COLLECTION in fresh_variables:
    # Copies: sharing buffers with batch_stats would break donation.
    stats = traverse_util.flatten_dict(
        jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True),
                               merged[layers.STATS_COLLECTION]),
        sep='/')
    stats.update(
        traverse_util.flatten_dict(
            dict(source_variables.get(layers.SOURCE_STATS_COLLECTION, {})),
            sep='/'))
    merged[layers.SOURCE_STATS_COLLECTION] = traverse_util.unflatten_dict(
        stats, sep='/')
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
  class_part = kernel[:embedding.shape[1]]
  return jnp.matmul(
      jnp.mean(embedding, axis=0),
      class_part,
      precision=jax.lax.Precision.HIGHEST) / _eval_sigma(
          params, sn, source, sn_eps)


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
