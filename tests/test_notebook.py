"""The Colab notebook: committed clean, and run top to bottom on the CPU.

The run replaces the notebook's `parameters` cell with a tiny setting (the
demo's transfer from its shipped source model, on few images and steps)
and executes every cell in a real Jupyter kernel, so a notebook cell that
no longer matches the library fails here rather than in a user's Colab.
"""

import json
import os
import pathlib
import re

import nbclient
import nbformat
import numpy as np
import pytest
from PIL import Image

from cgt_jax.data import synthetic
from configs import demo

NOTEBOOK = (
    pathlib.Path(__file__).parent.parent / 'notebooks' / 'cgt_jax_colab.ipynb')
SOURCE, TARGET = synthetic.source_and_target_names()  # the shipped model's
# Two fake CPU devices: the batch really is split, at a fraction of the
# compile time of the suite's eight.
KERNEL_ENV = {
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
    # Tiny models: XLA's optimisations cost more compile time than they save.
    'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true',
}
LAYERS = [f'block_{i}/bn{j}' for i in range(3) for j in (1, 2)]
# One test worker runs the tests of the executed notebook: it runs it once.
pytestmark = pytest.mark.xdist_group('notebook')


def tiny_parameters(tmp_path, eval_cache) -> dict:
  return {
      'WORKDIR': str(tmp_path / 'run'),
      'IMAGES_PER_CLASS': 4,
      'TRANSFER_STEPS': 2,
      'BATCH_SIZE': 8,
      'DEMO_SOURCE': 'shipped',
      'PRETRAIN_STEPS': 2,
      'CHANNELS': 2,
      'OVERRIDES': {
          'data.synthetic_images_per_class': 8,
          'sample.columns': 2,
          'eval.num_samples': 16,
          'eval.batch_size': 8,
          'eval.classifier_steps': 20,
          'eval.cache_dir': str(eval_cache),
      },
  }


def read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def parameters_index(notebook) -> int:
  tagged = [
      i for i, cell in enumerate(notebook.cells)
      if 'parameters' in cell.metadata.get('tags', [])
  ]
  assert len(tagged) == 1, 'exactly one cell must be tagged "parameters"'
  return tagged[0]


def with_parameters(notebook, values: dict):
  """The notebook with `values` injected after its parameters cell, as
  papermill does (the defaults still run first, so they must be valid)."""
  source = '\n'.join(f'{name} = {value!r}' for name, value in values.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata['tags'] = ['injected-parameters']
  notebook.cells.insert(parameters_index(notebook) + 1, cell)
  return notebook


def test_committed_notebook_is_valid_and_has_no_outputs():
  notebook = read_notebook()
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert code
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, (
        'clear the outputs before committing: jupyter nbconvert '
        '--clear-output --inplace notebooks/cgt_jax_colab.ipynb')
  defaults = notebook.cells[parameters_index(notebook)].source
  for name in tiny_parameters(pathlib.Path('.'), pathlib.Path('.')):
    assert re.search(rf'^{name} = ', defaults, re.M), name


def text_outputs(notebook) -> str:
  return '\n'.join(
      output.get('text', '') for cell in notebook.cells
      if cell.cell_type == 'code' for output in cell.outputs)


def png_outputs(notebook) -> int:
  return sum('image/png' in output.get('data', {}) for cell in notebook.cells
             if cell.cell_type == 'code' for output in cell.outputs)


@pytest.fixture(scope='module')
def executed(tmp_path_factory, eval_cache):
  """The notebook run on the tiny setting: `(notebook, workdir)`."""
  tmp_path = tmp_path_factory.mktemp('notebook')
  notebook = with_parameters(read_notebook(),
                             tiny_parameters(tmp_path, eval_cache))
  client = nbclient.NotebookClient(
      notebook,
      timeout=600,
      kernel_name='python3',
      resources={'metadata': {
          'path': str(NOTEBOOK.parent)
      }})
  client.execute(env={**os.environ, **KERNEL_ENV})
  return notebook, tmp_path / 'run'


def test_notebook_shards_the_batch_over_the_devices(executed):
  text = text_outputs(executed[0])
  assert '2 device(s): cpu' in text
  assert 'samples 0..3' in text and 'samples 4..7' in text
  assert '2 device(s), 4 samples each a step' in text


def test_notebook_transfers_from_the_shipped_source(executed):
  notebook, workdir = executed
  assert not (workdir / 'pretrain').exists()
  run_config = json.loads((workdir / 'config.json').read_text())
  assert run_config['source_checkpoint'] == str(demo.SHIPPED_SOURCE)
  assert list((workdir / 'transfer' / 'samples').glob('step_*.png'))
  assert (workdir / 'transfer' / 'model' / 'architecture.json').is_file()
  text = text_outputs(notebook)
  assert f'source model: {demo.SHIPPED_SOURCE}' in text
  assert 'transfer: 2 steps' in text
  # The transfer's grid, the metric plot, the heatmaps and the
  # pseudo-classes.
  assert png_outputs(notebook) == 4


def test_notebook_writes_similarity_scores_and_heatmaps(executed):
  notebook, workdir = executed
  with np.load(workdir / 'analysis' / 'similarity_scores.npz') as scores:
    assert sorted(scores) == sorted(
        f'{layer}/{which}' for layer in LAYERS for which in ('gamma', 'beta'))
    for name in scores:
      assert scores[name].shape == (len(TARGET), len(SOURCE))
      assert np.all(np.isfinite(scores[name]))
  text = text_outputs(notebook)
  assert 'all new classes borrow from' in text
  for name in TARGET:
    assert f'{name} borrows most from' in text
  heatmaps = Image.open(workdir / 'analysis' / 'similarity.png')
  # A row of two heatmaps per layer (new classes x source classes), sized
  # by visualize.similarity_heatmaps, saved at 100 dpi.
  assert heatmaps.size == (round(100 * 2 * (2 + 0.16 * len(SOURCE))),
                           round(100 * len(LAYERS) * (0.8 + 0.2 * len(TARGET))))


def test_notebook_draws_a_pseudo_class_row_per_borrowed_source(executed):
  notebook, workdir = executed
  rows = re.search(r'^rows: (.*)$', text_outputs(notebook), re.M).group(1)
  rows = rows.split(', ')
  assert rows and set(rows) <= set(SOURCE)
  picture = Image.open(workdir / 'analysis' / 'pseudo_classes.png')
  scale, cell = 3, 32 + 2  # 32 px images upscaled 3x; 2 px padding
  # 4 source images then 4 pseudo-class images per row.
  assert picture.size == (scale * (8 * cell + 2),
                          scale * (len(rows) * cell + 2))
