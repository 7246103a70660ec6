"""Continual class extension on the demo: the shipped source model (48
synthetic classes) learns 4 of the held-out classes, then the other 4 on
top of those, and the same 8 in one transfer for comparison.

    python tools/extend_continually.py --config=configs/demo_continual.py \
        --workdir=/tmp/cgt_continual

What runs and what is written: `cgt_jax.experiments.continual`. Each step
is the demo's transfer stage (knowledge propagation, 500 iterations,
DiffAugment, 25 images per class); the second step's prior has a row for
each of the 48 source and the 4 classes the first step added. With
`frozen_sn='keep'` every class learned before (source and added) renders
bitwise the same images after each step. Fine-tuning is left out: it
trains the whole generator, which changes every class.
`--config.source_checkpoint=''` pretrains a source in DIR/step_1 first
(the demo's 1400-step recipe), which the one-shot transfer then shares.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.stages = ('transfer',)
  config.method = 'kp'
  # The 8 held-out classes, in two steps of 4 (in this order).
  config.continual_steps = (4, 4)
  config.frozen_sn = 'keep'
  return config
