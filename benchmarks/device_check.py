"""One prepared accelerator check: every step a user trains, timed on the
device that is present, as one markdown table.

    bash benchmarks/device_check.sh                  # GPU/TPU: < 8 min on one H100
    bash benchmarks/device_check.sh --small          # CPU smoke run (the tests)
    bash benchmarks/device_check.sh --out=DIR        # + DIR/device_check.{md,json}

Rows (random weights and data, compiled first, then timed; see
`cgt_jax.experiments.step_timing`):

* the KP-stage step at the reference CIFAR setting (configs/cifar100_80to20.py:
  BigGAN ch 64, 80 -> 20 classes, one D update on 4 chunks of 50 + one G
  step of 50) in float32 and in bfloat16;
* the CIFAR pretraining step (4 D steps of 50, a G step, the EMA), float32;
* the KP-stage step of the ImageNet 128 px transfer (configs/places365_5cls.py
  on the BigGAN-128 architecture: ch 96, hierarchical z of 120, shared
  embedding 128, attention at 64 px, 1000 source classes) at batch 256 in
  bfloat16, with and without rematerialisation (`config.remat`).

Columns: images/s, XLA FLOPs per iteration, achieved FLOP/s, model FLOP
utilisation (achieved / the device's peak for that dtype: bfloat16 rows
against the bfloat16 peak, float32 rows against the TF32 tensor-core peak
on NVIDIA GPUs, which XLA's default precision uses, and against the
bfloat16 peak on TPUs, whose default float32 matmuls run bfloat16 passes),
peak memory by XLA's buffer assignment and, on GPUs, by the allocator.

When a CUDA build of torch is importable, the PyTorch timing twin
(benchmarks/torch_reference_step.py) runs the CIFAR KP and pretraining
steps on the same GPU first (before JAX claims the GPU's memory), and the
table gains the same-device ratio: cgt_jax images/s over the twin's.

What it needs on the device machine (nothing from the network): Python with
jax and its accelerator plugin (e.g. jax[cuda12] or jax[tpu]), flax, optax,
orbax-checkpoint, ml_collections, absl-py and numpy; it runs from the
working tree (device_check.sh puts it on PYTHONPATH), no install needed.
Optional: torch with CUDA for the twin.
"""

import argparse
import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time
from typing import Callable, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
TWIN = REPO / 'benchmarks' / 'torch_reference_step.py'

# Dense peak TFLOP/s per device kind (vendor data sheets): (bfloat16,
# float32 as XLA runs it by default). The first pattern that matches the
# JAX device kind wins.
PEAK_TFLOPS = (
    (r'H100.*PCIe', 756.0, 378.0),
    (r'H100|H200|H800|GH200', 989.0, 494.5),
    (r'A100', 312.0, 156.0),
    (r'L4\b', 121.0, 60.0),
    (r'L40S', 362.0, 183.0),
    (r'TPU v4', 275.0, 275.0),
    (r'TPU v5 lite|TPU v5e', 197.0, 197.0),
    (r'TPU v5', 459.0, 459.0),
    (r'TPU v6', 918.0, 918.0),
)


@dataclasses.dataclass(frozen=True)
class Case:
  """One row: a config (already overridden), the stage to time, and how
  many source classes the random source model has."""
  name: str
  architecture: str  # rows of one architecture reuse its random models
  config: object
  stage: str
  num_source: int
  steps: int
  twin_stage: Optional[str] = None  # the twin's stage of the same work


def _cifar(dtype: str, small: bool):
  from configs import cifar100_80to20  # pylint: disable=import-outside-toplevel
  config = cifar100_80to20.get_config()
  config.dtype = dtype
  if small:
    config.model.g_ch = config.model.d_ch = 4
    config.model.dim_z = 16
    for stage in (config.pretrain, config.transfer):
      stage.batch_size, stage.num_d_steps, stage.num_d_accumulations = 8, 1, 1
  return config


def _imagenet128(remat: bool, batch: int, small: bool):
  """The ImageNet BigGAN-128 architecture (what the converted source of
  configs/places365_5cls.py is) at `batch` per D chunk, bfloat16."""
  from configs import places365_5cls  # pylint: disable=import-outside-toplevel
  config = places365_5cls.get_config()
  m = config.model
  m.g_ch = m.d_ch = 96
  m.dim_z, m.shared_dim, m.hier = 120, 128, True
  m.g_attention = m.d_attention = (64,)
  m.init = 'N02'  # values do not matter here; 'ortho' compiles a QR per layer
  config.dtype, config.remat = 'bfloat16', remat
  t = config.transfer
  # One chunk of `batch`: the config's 8 accumulations repeat the same
  # program in a loop (same images/s, 8x the time per iteration).
  t.batch_size, t.num_d_accumulations, t.num_g_accumulations = batch, 1, 1
  if small:
    m.resolution, m.g_ch, m.d_ch, m.dim_z, m.shared_dim = 32, 2, 2, 16, 8
    m.g_attention = m.d_attention = (16,)
    t.batch_size = 8
  return config


def _shape(config, stage: str) -> str:
  """What a row runs, from its config: width, resolution, D chunks x batch
  + the G step."""
  m, c = config.model, config[stage]
  chunks = c.num_d_steps * c.num_d_accumulations
  return (f'ch {m.g_ch}, {m.resolution} px, {chunks} x {c.batch_size} '
          f'+ {c.num_g_accumulations} x {c.batch_size}')


def cases(small: bool, imagenet_batch: int) -> list:
  """The rows' cases; `small`: tiny shapes and one timed step."""
  steps = 1 if small else 5
  imagenet_source = 8 if small else 1000
  cifar = lambda dtype: _cifar(dtype, small)
  imagenet = lambda remat: _imagenet128(remat, imagenet_batch, small)
  chosen = [
      ('KP step, CIFAR reference', 'cifar', cifar('float32'), 'transfer', 80,
       steps, 'transfer'),
      ('KP step, CIFAR reference', 'cifar', cifar('bfloat16'), 'transfer', 80,
       steps, 'transfer'),
      ('pretraining step, CIFAR (+ EMA)', 'cifar', cifar('float32'), 'pretrain',
       80, steps, 'pretrain'),
      ('KP step, ImageNet 128', 'imagenet', imagenet(False), 'transfer',
       imagenet_source, min(steps, 3), None),
      ('KP step, ImageNet 128', 'imagenet', imagenet(True), 'transfer',
       imagenet_source, min(steps, 3), None),
  ]
  return [
      Case(f'{name} ({_shape(config, stage)})', architecture, config, stage,
           source, n, twin)
      for name, architecture, config, stage, source, n, twin in chosen
  ]


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0):
  """The device's dense peak for `dtype` (None: unknown device)."""
  if override:
    return override
  for pattern, bf16, fp32 in PEAK_TFLOPS:
    if re.search(pattern, device_kind):
      return bf16 if dtype.startswith('bfloat16') else fp32
  return None


def with_utilisation(row: dict, device_kind: str, devices: int,
                     override: float) -> dict:
  peak = peak_tflops(device_kind, row['dtype'], override)
  row = dict(row)
  row['peak_tflop_per_s'] = peak * devices if peak else '-'
  row['mfu'] = (f"{row['gflop_per_s'] / (peak * devices * 1e3):.1%}"
                if peak else '-')
  return row


def _cuda_torch() -> bool:
  """Whether a CUDA build of torch with a GPU is here (asked in a child
  process: importing torch here would start CUDA beside JAX)."""
  probe = subprocess.run(
      [sys.executable, '-c', 'import torch; print(torch.cuda.is_available())'],
      capture_output=True,
      text=True,
      check=False)
  return probe.stdout.strip() == 'True'


def twin_rows(small: bool, device: str, say: Callable[[str], None]) -> dict:
  """`{twin stage: images/s}` of the PyTorch twin on `device` ('auto': the
  GPU when a CUDA build of torch is here, else {}). Each stage runs in its
  own process that ends before JAX starts, so the two never share the GPU's
  memory."""
  if device == 'auto':
    if not _cuda_torch():
      say('PyTorch twin: no CUDA build of torch here, skipped')
      return {}
    device = 'cuda'
  rates = {}
  for stage in ('transfer', 'pretrain'):
    say(f'PyTorch twin, {stage} step, on {device}')
    args = [sys.executable, str(TWIN), f'--stage={stage}', f'--device={device}']
    args += ['--ch=4', '--batch=4', '--steps=1'] if small else ['--steps=5']
    out = subprocess.run(
        args, capture_output=True, text=True, check=True).stdout
    header, _, values = [line for line in out.splitlines() if '|' in line][-3:]
    row = dict(zip(_cells(header), _cells(values)))
    rates[stage] = float(row['real_images_per_s'])
  return rates


def _cells(line: str) -> list:
  return [cell.strip() for cell in line.strip().strip('|').split('|')]


def _say(message: str):
  print(f'[device_check] {message}', file=sys.stderr, flush=True)


def write_rows(rows: list, out: Optional[pathlib.Path]):
  """`out`/device_check.{md,json}: the table and its rows, each replaced
  whole (a run cut short leaves the rows it finished, never half a file);
  nothing without `out`."""
  if out is None:
    return
  from cgt_jax.experiments import step_timing  # pylint: disable=import-outside-toplevel
  from cgt_jax.runtime import atomic_dir  # pylint: disable=import-outside-toplevel
  texts = {
      'device_check.md': step_timing.markdown_table(rows) + '\n',
      'device_check.json': json.dumps(rows, indent=1) + '\n',
  }
  for name, text in texts.items():
    atomic_dir.write_file(
        out / name, lambda file, t=text: file.write(t.encode()))


def run(args,
        twin: dict,
        say: Callable[[str], None] = _say,
        finished: Callable[[list], None] = lambda rows: None) -> list:
  """The table's rows; `twin`: the PyTorch twin's images/s per stage;
  `finished(rows so far)` after each row."""
  import jax  # pylint: disable=import-outside-toplevel
  from cgt_jax.experiments import step_timing  # pylint: disable=import-outside-toplevel
  device_kind = jax.devices()[0].device_kind
  say(f'{jax.device_count()}x {device_kind} ({jax.default_backend()})')
  rows, chosen = [], cases(args.small, args.imagenet_batch)
  sources, built = {}, {}  # per architecture; per (architecture, stage)
  for index, case in enumerate(chosen, 1):
    start = time.perf_counter()
    progress = lambda m, i=index, c=case: say(
        f'[{i}/{len(chosen)}] {c.name}: {m}')
    models = (case.architecture, case.stage)
    if models not in built:
      progress('building the models')
      if case.architecture not in sources:
        sources[case.architecture] = step_timing.source_models(
            case.config, case.num_source)
      built[models] = step_timing.stage_models(case.config, case.stage,
                                               sources[case.architecture])
    row = step_timing.measure(case.config, case.stage, case.steps,
                              case.num_source, progress, built[models])
    row = with_utilisation({
        'setting': case.name,
        **row
    }, device_kind, jax.device_count(), args.peak_tflops)
    if case.twin_stage in twin:
      row['pytorch_twin_images_per_s'] = twin[case.twin_stage]
      row['x_pytorch_twin'] = row['real_images_per_s'] / twin[case.twin_stage]
    rows.append(row)
    finished(rows)
    say(f'[{index}/{len(chosen)}] done in {time.perf_counter() - start:.0f} s')
  return rows


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--small',
      action='store_true',
      help='tiny shapes, one timed step: a smoke run for CPUs (the tests)')
  parser.add_argument(
      '--imagenet_batch',
      type=int,
      default=256,
      help='images per D chunk of the ImageNet 128 rows')
  parser.add_argument(
      '--peak_tflops',
      type=float,
      default=0.0,
      help="the device's dense peak TFLOP/s for utilisation, when its kind "
      'is not in the table (0: from the table)')
  parser.add_argument(
      '--no_twin', action='store_true', help='skip the PyTorch twin')
  parser.add_argument(
      '--twin_device',
      default='auto',
      help="the twin's torch device: 'auto' (the GPU with a CUDA build of "
      "torch, else no twin), 'cuda' or 'cpu' (side by side on a CPU)")
  parser.add_argument(
      '--out',
      default='',
      help='a folder for device_check.md and device_check.json (the rows), '
      'written as each row finishes')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  # The twin first: JAX, once started, holds most of a GPU's memory.
  twin = {} if args.no_twin else twin_rows(args.small, args.twin_device, _say)
  # An entry point: XLA:CPU's kernel flags and logging before JAX starts.
  from cgt_jax.runtime import process  # pylint: disable=import-outside-toplevel
  process.configure()
  # With --out, each row is on disk as soon as it is measured: a run that
  # a device's time limit cuts short still hands back what it finished.
  out = pathlib.Path(args.out) if args.out else None
  rows = run(args, twin, finished=lambda rows: write_rows(rows, out))
  from cgt_jax.experiments import step_timing  # pylint: disable=import-outside-toplevel
  print(step_timing.markdown_table(rows))
  print(f'\n(device_check: {time.perf_counter() - start:.0f} s in all)')
  return 0


if __name__ == '__main__':
  sys.path.insert(0, str(REPO))  # cgt_jax and configs from the working tree
  sys.exit(main())
