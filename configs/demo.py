"""Offline demo: pretrain on 48 synthetic classes, transfer to 8 new ones
with knowledge propagation, then fine-tune (the paper's sec. 5.4).

No downloads: the data is generated in-process (cgt_jax.datasets.synthetic,
56 classes = 7 shapes x 8 colours). The 8 held-out classes are new pairings
of a shape and a colour that the source classes all show, e.g.
'green_square' — what knowledge propagation should compose from the green
classes and the square classes, from 25 images each.

Not a paper row: a small, fast stand-in for the CIFAR-100 80 -> 20 setting
(configs/cifar100_80to20.py), sized to run in under 10 minutes on 2 CPU
cores.

    python -m cgt_jax.main --config=configs/demo.py --workdir=/tmp/cgt_demo
"""

from cgt_jax import default_config
from cgt_jax.data import synthetic


def get_config():
  config = default_config.get_config()
  config.stages = ('pretrain', 'transfer', 'finetune')
  m = config.model
  m.g_ch = 8  # 32 channels per block: fast enough for 2 CPU cores
  m.d_ch = 8
  m.dim_z = 64

  d = config.data
  d.name = 'synthetic'
  source, target = synthetic.source_and_target_names()
  d.source_classes = tuple(source)
  d.target_classes = tuple(target)
  d.synthetic_images_per_class = 200
  d.target_images_per_class = 25  # few-shot new classes

  p = config.pretrain
  p.num_steps = 1400
  p.batch_size = 32
  p.num_d_steps = 1
  p.g_lr, p.d_lr = 2e-4, 2e-4
  p.log_every = 100
  p.sample_every = 350
  p.checkpoint_every = 350

  t = config.transfer
  t.num_steps = 500
  t.batch_size = 32
  t.num_d_steps = 1
  t.num_d_accumulations = 2
  t.d_chunk_reduction = 'sum'
  # Few KP parameters and a D that overfits 200 images quickly: a fast G,
  # a slow D (measured on the same source model: with D lr 5e-5 7 of the 8
  # new classes get their colour and 5 their shape; 1e-4 and 2e-4 do worse).
  t.g_lr, t.d_lr = 2e-3, 5e-5
  t.log_every = 50
  t.sample_every = 100
  t.eval_every = 100
  t.checkpoint_every = 250

  # Fine-tuning after KP: all of G but the similarity and prior, at the
  # reference's G learning rate. KP alone gets the colours and about half
  # the shapes of the new classes; 300 fine-tuning steps fix most shapes
  # (README). Drop it with --config.stages="('pretrain', 'transfer')".
  f = config.finetune
  for key in ('batch_size', 'num_d_steps', 'num_d_accumulations',
              'd_chunk_reduction', 'd_lr', 'log_every', 'sample_every',
              'eval_every', 'checkpoint_every'):
    f[key] = t[key]
  f.num_steps = 300
  f.g_lr = 2e-4

  # Baselines (python tools/compare_methods.py): methods that train
  # every G weight use the reference's G learning rate, not KP's 10x one;
  # scratch also needs the pretraining D learning rate to learn anything.
  config.method_overrides.transfergan = {'g_lr': 2e-4}
  config.method_overrides.freezed = {'g_lr': 2e-4}
  config.method_overrides.scratch = {'g_lr': 2e-4, 'd_lr': 2e-4}
  # Hyper-Modulation (--methods=...,hypermod) transfers an unconditional
  # source, pretrained like the conditional one; self-alignment runs 300
  # iterations here (the paper: 10k), the transfer the authors' settings
  # (default_config: lr 2e-3 for G's hypernetworks and D, Adam b2 0.99).
  config.method_options.hypermod.alignment_steps = 300
  # 500 transfer iterations instead of the paper's tens of thousands: at the
  # authors' class-network rate (1e-3 x g_lr) the class vectors, which all
  # start as the aligned one, cannot separate in 500 steps, and at their
  # g_lr of 2e-3 this BigGAN (no AdaIN renormalising every modulated conv)
  # saturated to flat yellow images within 100 steps (measured from a
  # less well aligned start, L1 36 instead of 0.87). Demo
  # values: the reference G rate, the class network at the same rate.
  config.method_overrides.hypermod.g_lr = 2e-4
  config.method_options.hypermod.class_network_lr_factor = 1.0
  # The 56-way classifier (source classes included) also for runs that
  # start from a saved source model, so every method is scored alike.
  config.eval.classifier_with_source = True
  return config
