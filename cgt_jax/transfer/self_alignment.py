"""Hyper-Modulation's self-alignment: the hypernetworks learn, without any
real image, to draw what the unconditional source draws.

With a single dummy class (a generator of one new class, label 1), the
class network and the hypernetworks are trained so that every generator
block's output on the modulated path matches the frozen source path's
(label 0) for the same z:

    L = sum over blocks i of mean |block_i(z; modulated) - block_i(z; source)|

(the authors' L1 before each block's to-RGB). Adam (beta1 0, beta2 0.99),
`lr` for the hypernetworks and `lr * class_network_factor` for the class
network (2e-3 and 2e-5 in the paper), batch 32. Everything else of G is
frozen and G runs in eval mode (its BN statistics and SN vectors are the
source's). Afterwards `to_classes` copies the learned class embedding to
all K new classes, which then start as the source model, each free to move.

The result can be kept in a model directory (`cache_dir`): a transfer
stage interrupted after its alignment reuses it instead of aligning again.
"""

import json
import pathlib
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cgt_jax.models import biggan
from cgt_jax.models import hypermod
from cgt_jax.models import model_io
from cgt_jax.training import optim
from cgt_jax.transfer import groups

SUMMARY = 'summary.json'


def _is_block(module, method_name) -> bool:
  return isinstance(module, biggan.GBlock) and method_name == '__call__'


def block_outputs(generator, variables, z, labels) -> list:
  """The output of every generator block `[B, h, w, C]`, in order (eval
  mode)."""
  _, state = generator.apply(
      variables,
      z,
      labels,
      capture_intermediates=_is_block,
      mutable=['intermediates'])
  found = state['intermediates']
  return [
      found[f'block_{i}']['__call__'][0]
      for i in range(len(biggan.G_ARCH[generator.resolution][0]))
  ]


def alignment_l1(generator, variables, z):
  """L: the blocks' mean absolute differences between the modulated path
  (label 1, the dummy class) and the source path (label 0), summed."""
  batch = z.shape[0]
  labels = jnp.concatenate(
      [jnp.zeros((batch,), jnp.int32),
       jnp.ones((batch,), jnp.int32)])
  outputs = block_outputs(generator, variables, jnp.concatenate([z, z]), labels)
  total = 0.0
  for output in outputs:
    source, modulated = jnp.split(output.astype(jnp.float32), 2)
    total += jnp.mean(jnp.abs(modulated - jax.lax.stop_gradient(source)))
  return total


def _optimizer(params, lr, class_network_factor):
  trained = groups.HYPER_MODULATION
  factors = groups.learning_rate_factors(
      params, trained, {'class_network': class_network_factor})
  return optim.with_learning_rate_factors(
      lambda rate: optax.adam(rate, b1=0.0, b2=0.99), lr, factors)


def align(generator,
          variables,
          num_steps: int,
          batch_size: int,
          lr: float,
          class_network_factor: float,
          seed: int,
          log_every: int = 100):
  """Self-alignment of a one-new-class Hyper-Modulation generator.

  Args:
    generator: a `biggan.Generator` with one source and one new class and
      the `hypermod.Modulation` form.
    variables: its variables (constants set, `surgery.start_modulated_convs`).
    num_steps, batch_size, lr, class_network_factor: as the module says.
    seed: the z draws' seed.
    log_every: progress lines every this many steps.
  Returns:
    `(variables, {'steps', 'l1_first', 'l1_last', 'seconds'})`.
  """
  optimizer = _optimizer(variables['params'], lr, class_network_factor)
  rest = {k: v for k, v in variables.items() if k != 'params'}

  def loss_fn(params, z):
    return alignment_l1(generator, {'params': params, **rest}, z)

  @jax.jit
  def step(params, opt_state, key):
    z = jax.random.normal(key, (batch_size, generator.dim_z))
    loss, grads = jax.value_and_grad(loss_fn)(params, z)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, start = variables['params'], time.perf_counter()
  opt_state = optimizer.init(params)
  key = jax.random.key(seed)
  losses = []
  for i in range(num_steps):
    params, opt_state, loss = step(params, opt_state,
                                   jax.random.fold_in(key, i))
    if i == 0 or (i + 1) % log_every == 0 or i + 1 == num_steps:
      losses.append(float(loss))
      logging.info('[self-alignment] step %d/%d: L1 %.4f', i + 1, num_steps,
                   losses[-1])
  report = {
      'steps': num_steps,
      'l1_first': losses[0] if losses else None,
      'l1_last': losses[-1] if losses else None,
      'seconds': round(time.perf_counter() - start, 1),
  }
  return {**variables, 'params': params}, report


def to_classes(aligned: dict, target: dict) -> dict:
  """`target` (a K-new-class generator's variables) with the aligned
  one-class generator's variables, the class embedding row copied to all K
  classes."""
  params = jax.tree_util.tree_map(jnp.asarray, dict(aligned['params']))
  table = params[hypermod.CLASS_NETWORK]['embedding']
  rows = target['params'][hypermod.CLASS_NETWORK]['embedding'].shape[0]
  network = dict(params[hypermod.CLASS_NETWORK])
  network['embedding'] = jnp.tile(table[:1], (rows, 1))
  params[hypermod.CLASS_NETWORK] = network
  return {**target, **aligned, 'params': params}


def cached_or_aligned(cache_dir: Optional[pathlib.Path], generator, variables,
                      **settings):
  """`align(...)`, or its result kept in `cache_dir` by an earlier run (the
  result is kept there when `cache_dir` is given)."""
  if cache_dir is not None and (cache_dir / SUMMARY).exists():
    _, _, saved = model_io.load(cache_dir)
    report = json.loads((cache_dir / SUMMARY).read_text())
    logging.info('[self-alignment] reusing %s (L1 %.4f -> %.4f)', cache_dir,
                 report['l1_first'], report['l1_last'])
    return jax.tree_util.tree_map(np.asarray, saved['generator']), report
  aligned, report = align(generator, variables, **settings)
  if cache_dir is not None:
    # A cache dir without its summary is an interrupted save of this cache.
    model_io.save(
        cache_dir, model_io.module_arch(generator), aligned, overwrite=True)
    if jax.process_index() == 0:
      (cache_dir / SUMMARY).write_text(json.dumps(report, indent=1))
  return aligned, report
