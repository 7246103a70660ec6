"""Defaults every experiment config starts from (see configs/).

Hyper-parameters follow the authors' CIFAR launch script unless an
experiment overrides them; the reference value is named in a comment where
it is not the obvious one.
"""

import ml_collections

STAGES = ('pretrain', 'transfer', 'finetune')


def stage_config(num_steps: int) -> ml_collections.ConfigDict:
  """Optimisation settings of one stage."""
  c = ml_collections.ConfigDict()
  c.num_steps = num_steps
  c.batch_size = 50  # per D chunk and per G accumulation (global)
  c.g_lr = 2e-4
  c.d_lr = 2e-4
  c.adam_b1 = 0.0
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  # BigGAN pretraining: 4 separate D updates per G update ('mean' chunks).
  # The cGANTransfer CIFAR script instead makes ONE D update on the sum of
  # 4 chunk losses: num_d_steps=1, num_d_accumulations=4, 'sum'.
  c.num_d_steps = 4
  c.num_d_accumulations = 1
  c.d_chunk_reduction = 'mean'
  c.num_g_accumulations = 1
  # Paper eq. 7 (lambda_s, lambda_r); only KP stages have these terms.
  c.similarity_l1 = 0.0
  c.residual_l2 = 0.0
  c.update_prior = True  # Table 2 ablation "frozen prior": False
  c.ema_decay = 0.0  # 0 disables the generator EMA
  c.ema_start = 0
  c.log_every = 50
  # training/health.py: stop when a loss or mean D output stays beyond
  # +-divergence_bound at every check (log step) of divergence_patience
  # steps; 0 turns the guard off. NaN/inf always stops at once.
  c.divergence_bound = 1e3
  c.divergence_patience = 100
  c.checkpoint_every = 1000
  c.sample_every = 1000
  c.eval_every = 0  # 0: no periodic evaluation
  # What WORKDIR/<stage>/model holds (and the next stage starts from):
  # 'final', the last step's model (model_best beside it holds the best
  # evaluation's), or 'best', the best evaluation's (model_final beside it
  # holds the last step's). The closing summary and summary.json say which.
  c.export = 'final'
  return c


def kp_stage_config(num_steps: int) -> ml_collections.ConfigDict:
  """A transfer/fine-tuning stage as the authors' CIFAR script runs it: one
  D update on the sum of 4 chunks, lambda_s = lambda_r = 0.01."""
  c = stage_config(num_steps)
  c.num_d_steps = 1
  c.num_d_accumulations = 4
  c.d_chunk_reduction = 'sum'
  c.similarity_l1 = 0.01
  c.residual_l2 = 0.01
  return c


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Stages run in order; each starts from the previous one's model.
  config.stages = ('pretrain', 'transfer')
  # A model directory (tools/convert_biggan.py output or WORKDIR/pretrain/
  # model of an earlier run); when set, 'pretrain' is skipped.
  config.source_checkpoint = ''
  # 'bfloat16': convolutions, matmuls and activations in bfloat16 on
  # accelerators; parameters, optimizer state, BN statistics, spectral-norm
  # vectors and losses stay float32 (docs/PERFORMANCE.md, "Precision").
  config.dtype = 'float32'
  # Recompute every G and D block's activations in the backward pass
  # (`jax.checkpoint` per block): about a third more compute for a fraction
  # of the activation memory (docs/PERFORMANCE.md, "Memory").
  config.remat = False

  # How the transfer stage learns the new classes (cgt_jax/transfer/methods.py):
  # 'kp' (ours), a baseline ('scratch', 'transfergan', 'freezed', 'bsa',
  # 'minegan', 'hypermod') or a variant ('kp_finetune', the Table 2 ablations such as
  # 'kp_no_l1').
  config.method = 'kp'
  config.method_options = o = ml_collections.ConfigDict()
  o.new_class_init = 'mean'  # transfergan/freezed new rows: 'mean' | 'fresh'
  o.frozen_d_blocks = 2  # freezed: lowest D blocks (and their attention)
  o.bsa_start = 'mean'  # bsa vectors start at: 'mean' | 'identity'
  # minegan: the transfer budget (transfer.num_steps) is split into
  # mining (G frozen) and then miner + G; learning rates and Adam eps are
  # the authors' script's (the miner uses G's optimiser settings).
  o.minegan = g = ml_collections.ConfigDict()
  g.mining_steps = 300
  g.mining_g_lr = 1e-4
  g.mining_d_lr = 4e-4
  g.g_lr = 1e-4
  g.d_lr = 4e-4
  g.adam_eps = 1e-6
  # The published set-up: ONE target class, D without class projection.
  g.single_target = False
  # hypermod (Hyper-Modulation): its source is UNCONDITIONAL
  # (config.model.conditional=False); the authors' settings otherwise.
  o.hypermod = h = ml_collections.ConfigDict()
  h.rank = 0  # 0: full-rank hypernetworks (the paper); r > 0: low rank
  # 'self_alignment' (the paper: no real data, L1 to the source's blocks)
  # or 'closed_form' (gamma = std, beta = mean: exactly the source).
  h.start = 'self_alignment'
  h.alignment_steps = 1000  # the paper's: 10k
  h.alignment_batch_size = 32
  h.alignment_lr = 2e-3  # hypernetworks; Adam (0, 0.99)
  h.alignment_class_network_lr_factor = 1e-2  # class network: 2e-5
  h.alignment_log_every = 100
  h.class_network_lr_factor = 1e-3  # transfer: class network lr = g_lr x
  h.r1_weight = 10.0  # R1 on reals (D loss += r1_weight / 2 * R1)
  h.contrastive_weight = 0.01  # Barlow Twins, real and fake, in D's loss
  h.off_diagonal_weight = 5e-3
  # The adversarial loss of the transfer and fine-tuning stages: 'hinge',
  # 'non_saturating', or '' for the method's own (non_saturating for
  # minegan and hypermod, hinge for the others); pretraining uses
  # BigGAN's hinge.
  config.loss = ''
  # DiffAugment (training/diffaugment.py) of every image D sees, real and
  # fake, in every stage: '' (off) or a comma-separated subset of
  # 'color,translation,cutout' (its authors' choice for a few hundred
  # images: all three).
  config.augment = ''
  # The spectral-norm vectors `u` of G's frozen layers in the transfer and
  # fine-tuning stages: 'advance' (the authors' code: every train-mode
  # forward advances them, so the classes learned before drift by float
  # rounding), 'keep' (only what the stage trains changes: every class
  # learned before renders bitwise the same images), or 'auto': 'keep'
  # when extending an already extended model (continual extension,
  # cgt_jax/models/extensions.py), else 'advance'.
  config.frozen_sn = 'auto'
  # Transfer-stage fields per method, e.g. method_overrides.transfergan =
  # {'g_lr': 2e-4}: full fine-tuning wants other learning rates than KP.
  config.method_overrides = ml_collections.ConfigDict()
  # Hyper-Modulation's transfer stage as the authors train it, but D at
  # the run's d_lr: their 2e-3 is for a StyleGAN D with equalised learning
  # rates, whose effective step is 2e-3 x sqrt(2 / fan_in) (about 4e-5 for
  # its 512-channel 3x3 convs); BigGAN's D is not equalised.
  config.method_overrides.hypermod = ml_collections.ConfigDict({
      'g_lr': 2e-3,
      'adam_b2': 0.99,
      'ema_decay': 0.999,
  })

  config.model = m = ml_collections.ConfigDict()
  m.resolution = 32
  m.g_ch = 64
  m.d_ch = 64
  m.dim_z = 128
  m.shared_dim = 0  # 0: per-class BN tables (CIFAR form)
  # False: the pretrain stage trains an UNCONDITIONAL BigGAN on all source
  # classes together (one class: a constant BN conditioning, the way a
  # single-class BigGAN-PyTorch checkpoint is one; D without projection).
  m.conditional = True
  m.hier = False
  m.g_attention = ()
  m.d_attention = ()
  m.init = 'N02'
  m.bn_eps = 1e-5
  m.sn_eps = 1e-8
  m.use_residuals = True
  m.shared_similarity = False

  config.data = d = ml_collections.ConfigDict()
  d.name = 'synthetic'  # 'synthetic' | 'cifar100' | 'image_folder'
  d.root = ''  # image_folder: one sub-folder per class
  d.data_dir = ''  # tensorflow-datasets data_dir ('' = tfds default)
  d.source_classes = ()  # names; () = every class not in target_classes
  d.target_classes = ()
  d.source_images_per_class = 0  # 0 = all
  d.target_images_per_class = 0
  d.synthetic_images_per_class = 200
  d.seed = 0

  config.pretrain = stage_config(10000)
  config.transfer = kp_stage_config(5000)
  config.finetune = kp_stage_config(2000)
  # Start from the transferred model of the best evaluation ('best':
  # WORKDIR/transfer/model_best; the final one when it was not evaluated)
  # or the final one ('final').
  config.finetune.start_from = 'best'

  config.eval = e = ml_collections.ConfigDict()
  e.final = True  # evaluate each stage's final generator
  e.num_samples = 1000  # paper: 50k (FID), 25k (KMMD)
  e.batch_size = 256
  e.inception_dir = ''  # tools/convert_inception.py output; '' = offline
  e.cache_dir = ''  # '' = ~/.cache/cgt_jax
  e.classifier_steps = 300  # training steps of the offline domain classifier
  # Train the domain classifier on the source classes too (when their images
  # can be loaded), so that a new class drawn like a source class counts as
  # wrong even in runs that start from a source_checkpoint.
  e.classifier_with_source = False
  e.best_metric = ''  # '' = fid with Inception, else domain_fd
  # The real images the metrics compare with: '' = the stage's training
  # images (the paper's protocol: FD against the few training images),
  # 'test' = the dataset's test split (CIFAR-100; another draw of the
  # synthetic shapes), or a folder of held-out images with one sub-folder
  # per class, named as the stage's classes (docs/EVALUATION.md).
  e.reference = ''

  config.sample = s = ml_collections.ConfigDict()
  s.max_rows = 20  # classes shown per grid (one row each)
  s.columns = 8
  s.train_mode = False  # BN mode of the grid forward
  return config
