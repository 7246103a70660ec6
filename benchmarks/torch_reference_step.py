"""PyTorch timing twin of the reference cGANTransfer CIFAR iteration.

The authors' PyTorch code (cGANTransfer on BigGAN-PyTorch) is not available
offline, so this script rebuilds the work of one of its training iterations
from the prose description in `shared/reference/cgantransfer_reference.md`
(sections 1-3). It is written from that description, not from the reference
code, and only its speed matters: it stands in for the reference when we
compare seconds per iteration with `tools/benchmark.py` on the same CPU.

    python benchmarks/torch_reference_step.py --stage=transfer --steps=3
    python benchmarks/torch_reference_step.py --stage=pretrain --steps=3
    # side by side with tools/benchmark.py, 2 threads as in issue 3:
    python benchmarks/torch_reference_step.py --stage=transfer --threads=2
    # smoke test (seconds):
    python benchmarks/torch_reference_step.py --ch=8 --batch=4 --steps=1

What it matches (BigGAN for CIFAR, 32 px, G_ch = D_ch = `--ch`, dim_z 128):

* G: SN linear 128 -> 4*4*4ch, three up-sampling residual blocks
  (4 -> 8 -> 16 -> 32 px, 4ch channels throughout: cond. BN, ReLU, nearest
  x2, SN 3x3 conv, cond. BN, ReLU, SN 3x3 conv; shortcut x2 then SN 1x1
  conv), BN, ReLU, SN 3x3 conv to RGB, tanh. D: four residual blocks
  (32 -> 16 -> 8 -> 8 px; the first without pre-activation and with
  pool-then-1x1 shortcut, the second with 1x1-then-pool), ReLU, global sum
  pooling, SN linear plus a projection through an SN embedding. The state
  dict keys and shapes are the reference's (its `keys/*.tsv` dumps), except
  that D's projection is always called `embed` (`new_embed` there).
* Spectral norm as the reference's own layers: one power iteration on every
  forward call from a stored `u` (written back in train mode, so also in the
  no-grad G forwards and for frozen layers), sigma computed with grad.
* `--stage=transfer`, the KP ("BN") stage of the CIFAR script, 80 source ->
  20 new classes: every conditional BN of G takes its gain and bias from the
  CIFAR knowledge-propagation layer (one-hot -> combination linear over the
  80 source classes -> prior linear initialised from the source BN table,
  plus a residual linear; separate for gain and bias). One iteration = one
  D update on the sum of 4 chunk losses (per chunk: fresh z and new-class
  labels, G forward without grad, one D forward on [fake; real] of 2x50,
  hinge loss, backward), then one G step of 50 fakes whose loss adds the L1
  on the combination layers and the L2 on the residuals (0.01 each). Only
  the KP parameters of G require grad then (BigGAN's `toggle_grad` with the
  reference's name filter); D requires none. Adam, lr 2e-4 for G and D,
  betas (0, 0.999), eps 1e-8.
* `--stage=pretrain`, BigGAN-PyTorch's CIFAR recipe on 80 classes (what
  `tools/benchmark.py --stage=pretrain` times): 4 D updates of one chunk of
  50 each, then one G step of 50 with all of G trainable, then the EMA of G
  (every state-dict entry; decay 0 before `ema_start` as the reference).

What it leaves out: pretrained weights (random N(0, 0.02) init instead; the
speed does not depend on values), the data loader (200 random real images
held in memory, as our JAX benchmark does), logging, checkpoints and the
FID evaluation every 100 iterations, DataParallel, and the reference's old
PyTorch version (it targeted torch 1.0; this runs whatever is installed, so
it measures the reference's work with today's kernels).

FLOPs are counted analytically, not measured: 2 x the multiply-adds of every
convolution and linear layer (the KP linears and D's projection included;
BN, activations, pooling, up-sampling, losses, Adam and the spectral-norm
power iterations, a fraction of a percent together, are not). A convolution
counts only the kernel taps that land inside the image, i.e. the zero
padding does no arithmetic, as XLA's cost analysis counts; counting the
padding too (as `torch.utils.flop_counter` does) adds 6.8% at ch 64. At
ch 64, batch 50: transfer 3,569 GFLOP per iteration (3,813 with padding),
pretraining 3,729 (3,982). The passes counted are the ones run:

* each D chunk: G forward on B; D forward on 2B; D backward on 2B with the
  weight gradient of every D layer and the input gradient of every layer
  except the two that read the images (no grad is needed there);
* the G step: G forward and D forward on B; D backward with input gradients
  only; G backward with the weight gradients of the trainable layers (all in
  pretraining, the KP linears in transfer) and the input gradients of the
  layers downstream of a trainable parameter (never the first linear, whose
  input is z; in transfer also not block 0's shortcut conv, which reads the
  frozen linear's output).

Every backward gradient (input or weight) costs as many multiply-adds as
the forward of its layer.

Checked at ch 64 (not part of this script): the state dicts match the
reference key dumps key for key and shape for shape (G 4,849,859 and D
4,209,921 parameters in transfer; 4,519,427 and 4,225,281 in pretraining);
the KP-stage trainable set is the reference's 60 tensors / 330,432 scalars;
`torch.utils.flop_counter` over one iteration on the meta device gives the
padded count above to within 0.01% (the rest is the SN power iterations).
"""

import argparse
import copy
import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 32
BOTTOM_WIDTH = 4
DIM_Z = 128
NUM_SOURCE = 80
NUM_NEW = 20
BN_EPS = 1e-5
SN_EPS = 1e-8  # the CIFAR launch scripts keep BigGAN-PyTorch's default
ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8
LR = 2e-4  # G and D, pretraining and transfer
COMB_L1 = 0.01  # cifar/train.sh: --comb_l1_scale
RES_L2 = 0.01  # cifar/train.sh: --res_l2_scale
EMA_DECAY = 0.9999
EMA_START = 1000
# Names of the G parameters that train in the KP ("BN") stage.
KP_NAMES = ('comb_layer', 'res_g', 'res_b', 'prev_knowledge', 'z_layer')

# ---------------------------------------------------------------- layers ---


class _SpectralNorm:
  """Mixin: the weight divided by its top singular value.

  One power iteration per call from the stored `u0` (a row over the output
  dimension), as the reference's SN layers: the iteration itself is not
  differentiated, sigma is (so the weight gradient includes the
  normaliser's term), and `u0` only moves in train mode.
  """

  def _init_spectral_norm(self, num_rows: int):
    self.register_buffer('u0', torch.randn(1, num_rows))
    self.register_buffer('sv0', torch.ones(1))  # logged by the reference

  def normalized_weight(self) -> torch.Tensor:
    matrix = self.weight.reshape(self.weight.shape[0], -1)
    with torch.no_grad():
      v = F.normalize(self.u0 @ matrix, eps=SN_EPS)
      u = F.normalize(v @ matrix.t(), eps=SN_EPS)
      if self.training:
        self.u0.copy_(u)
    sigma = (v @ matrix.t() @ u.t()).squeeze()
    if self.training:
      self.sv0.copy_(sigma.detach())
    return self.weight / sigma


class SNConv2d(nn.Conv2d, _SpectralNorm):
  """Stride-1 'same' convolution with spectral norm."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int):
    super().__init__(in_ch, out_ch, kernel, padding=kernel // 2)
    self._init_spectral_norm(out_ch)

  def forward(self, x):
    return F.conv2d(
        x, self.normalized_weight(), self.bias, padding=self.padding)


class SNLinear(nn.Linear, _SpectralNorm):
  """Linear layer with spectral norm."""

  def __init__(self, in_features: int, out_features: int):
    super().__init__(in_features, out_features)
    self._init_spectral_norm(out_features)

  def forward(self, x):
    return F.linear(x, self.normalized_weight(), self.bias)


class SNEmbedding(nn.Embedding, _SpectralNorm):
  """Class embedding with SN over the whole [classes, dim] table."""

  def __init__(self, num_classes: int, dim: int):
    super().__init__(num_classes, dim)
    self._init_spectral_norm(num_classes)

  def forward(self, labels):
    return F.embedding(labels, self.normalized_weight())


class _BatchStats(nn.Module):
  """Batch normalisation without affine, with the reference's buffers."""

  def __init__(self, channels: int):
    super().__init__()
    self.register_buffer('stored_mean', torch.zeros(channels))
    self.register_buffer('stored_var', torch.ones(channels))

  def normalize(self, x, weight=None, bias=None):
    return F.batch_norm(x, self.stored_mean, self.stored_var, weight, bias,
                        self.training, 0.1, BN_EPS)


class OutputBN(_BatchStats):
  """The unconditional BN before G's output convolution."""

  def __init__(self, channels: int):
    super().__init__(channels)
    self.gain = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x):
    return self.normalize(x, self.gain, self.bias)


def _modulate(normalized, gain, bias):
  """Per-sample [B, C] gain and bias broadcast over the feature map."""
  return normalized * gain[:, :, None, None] + bias[:, :, None, None]


class ClassBN(_BatchStats):
  """BigGAN's CIFAR conditional BN: per-class tables, '1 + gain'."""

  def __init__(self, channels: int, num_classes: int):
    super().__init__(channels)
    self.gain = nn.Embedding(num_classes, channels)
    self.bias = nn.Embedding(num_classes, channels)

  def forward(self, x, labels):
    return _modulate(
        self.normalize(x), 1 + self.gain(labels), self.bias(labels))


class KnowledgePropagationBN(ClassBN):
  """cGANTransfer's CIFAR conditional BN for the new classes.

  The gain (bias) of new class c is prior(comb(onehot_c)) + res(onehot_c):
  `comb` mixes the source classes, `prior` starts as the source BN table.
  The source tables stay (frozen, unused in the forward) as in the
  reference, so the parameter set and the trainable filter are the same.
  """

  def __init__(self, channels: int, num_source: int, num_new: int):
    super().__init__(channels, num_source)
    self.comb_layer_g = nn.Linear(num_new, num_source)
    self.comb_layer_b = nn.Linear(num_new, num_source)
    self.prev_knowledge_g = nn.Linear(num_source, channels)
    self.prev_knowledge_b = nn.Linear(num_source, channels)
    self.res_g = nn.Linear(num_new, channels, bias=False)
    self.res_b = nn.Linear(num_new, channels, bias=False)

  def load_previous_knowledge(self):
    with torch.no_grad():
      self.prev_knowledge_g.weight.copy_(self.gain.weight.t())
      self.prev_knowledge_b.weight.copy_(self.bias.weight.t())

  def forward(self, x, onehot):
    gain = 1 + self.prev_knowledge_g(
        self.comb_layer_g(onehot)) + self.res_g(onehot)
    bias = self.prev_knowledge_b(self.comb_layer_b(onehot)) + self.res_b(onehot)
    return _modulate(self.normalize(x), gain, bias)


# -------------------------------------------------------------- networks ---


class GBlock(nn.Module):
  """Up-sampling residual block; both BNs see the same class input."""

  def __init__(self, in_ch: int, out_ch: int, make_bn: Callable):
    super().__init__()
    self.bn1 = make_bn(in_ch)
    self.conv1 = SNConv2d(in_ch, out_ch, 3)
    self.bn2 = make_bn(out_ch)
    self.conv2 = SNConv2d(out_ch, out_ch, 3)
    self.conv_sc = SNConv2d(in_ch, out_ch, 1)  # every block up-samples

  def forward(self, x, y):
    h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
    h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
    return h + self.conv_sc(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
  """BigGAN G for 32 px. With `num_new` the BNs are KP layers and the
  labels index the new classes; otherwise plain per-class BN tables."""

  def __init__(self, ch: int, num_source: int, num_new: int = 0):
    super().__init__()
    width = 4 * ch
    self.num_new = num_new
    if num_new:
      make_bn = lambda c: KnowledgePropagationBN(c, num_source, num_new)
    else:
      make_bn = lambda c: ClassBN(c, num_source)
    self.linear = SNLinear(DIM_Z, width * BOTTOM_WIDTH**2)
    num_blocks = 3  # 4 -> 8 -> 16 -> 32 px
    self.blocks = nn.ModuleList(
        nn.ModuleList([GBlock(width, width, make_bn)])
        for _ in range(num_blocks))
    self.output_layer = nn.Sequential(
        OutputBN(width), nn.ReLU(), SNConv2d(width, 3, 3))

  def forward(self, z, labels):
    # KP layers read one-hot vectors; plain BN tables read indices.
    y = F.one_hot(labels, self.num_new).float() if self.num_new else labels
    h = self.linear(z).view(z.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
    for (block,) in self.blocks:
      h = block(h, y)
    return torch.tanh(self.output_layer(h))


class DBlock(nn.Module):
  """Residual block; the first one has no pre-activation."""

  def __init__(self, in_ch: int, out_ch: int, preactivation: bool,
               downsample: bool):
    super().__init__()
    self.preactivation = preactivation
    self.downsample = downsample
    self.conv1 = SNConv2d(in_ch, out_ch, 3)
    self.conv2 = SNConv2d(out_ch, out_ch, 3)
    self.learnable_sc = in_ch != out_ch or downsample
    if self.learnable_sc:
      self.conv_sc = SNConv2d(in_ch, out_ch, 1)

  def _pool(self, x):
    return F.avg_pool2d(x, 2) if self.downsample else x

  def _shortcut(self, x):
    if not self.learnable_sc:
      return x
    # Pre-activation blocks convolve then pool; the first block pools
    # first (cheaper on 3 input channels).
    if self.preactivation:
      return self._pool(self.conv_sc(x))
    return self.conv_sc(self._pool(x))

  def forward(self, x):
    h = F.relu(x) if self.preactivation else x
    h = self._pool(self.conv2(F.relu(self.conv1(h))))
    return h + self._shortcut(x)


class Discriminator(nn.Module):
  """BigGAN D for 32 px with a projection head."""

  def __init__(self, ch: int, num_classes: int):
    super().__init__()
    width = 4 * ch
    ins = (3, width, width, width)
    downsample = (True, True, False, False)  # 32 -> 16 -> 8 -> 8 px
    self.blocks = nn.ModuleList(
        nn.ModuleList([DBlock(i, width, index > 0, down)])
        for index, (i, down) in enumerate(zip(ins, downsample)))
    self.linear = SNLinear(width, 1)
    self.embed = SNEmbedding(num_classes, width)

  def forward(self, x, labels):
    h = x
    for (block,) in self.blocks:
      h = block(h)
    h = torch.sum(F.relu(h), dim=(2, 3))
    return self.linear(h) + torch.sum(self.embed(labels) * h, 1, keepdim=True)


def init_n02(module: nn.Module):
  """The CIFAR scripts' N(0, 0.02) init of every conv/linear/embedding
  weight (biases keep PyTorch's defaults, as in the reference)."""
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
      nn.init.normal_(m.weight, 0.0, 0.02)


# -------------------------------------------------------------- training ---


@dataclasses.dataclass(frozen=True)
class Setup:
  """One stage's iteration.

  Attributes:
    stage: 'transfer' or 'pretrain'.
    batch: images per D chunk and per G step.
    num_d_steps: D optimizer steps per iteration.
    chunks_per_d_step: chunks whose losses are summed into one D step.
    num_classes: D's (and the fake labels') classes.
    ema: whether G's EMA is updated after the G step.
  """
  stage: str
  batch: int
  num_d_steps: int
  chunks_per_d_step: int
  num_classes: int
  ema: bool

  @property
  def real_per_iteration(self) -> int:
    return self.batch * self.num_d_steps * self.chunks_per_d_step


def make_setup(stage: str, batch: int) -> Setup:
  if stage == 'transfer':
    # cifar/train.sh asks for 4 D steps, but the CIFAR loop runs one D
    # update on the sum of the 4 chunk losses (reference notes, 3.2).
    return Setup(stage, batch, 1, 4, NUM_NEW, ema=False)
  return Setup(stage, batch, 4, 1, NUM_SOURCE, ema=True)


@dataclasses.dataclass
class Nets:
  """The networks of one stage and their optimizers."""
  g: Generator
  d: Discriminator
  g_ema: Optional[Generator]  # pretraining only
  g_opt: torch.optim.Optimizer
  d_opt: torch.optim.Optimizer


def build(setup: Setup, ch: int) -> Nets:
  num_new = NUM_NEW if setup.stage == 'transfer' else 0
  g = Generator(ch, NUM_SOURCE, num_new)
  d = Discriminator(ch, setup.num_classes)
  for net in (g, d):
    init_n02(net)
    net.train()
  for m in g.modules():
    if isinstance(m, KnowledgePropagationBN):
      m.load_previous_knowledge()
  g_ema = copy.deepcopy(g) if setup.ema else None

  # The reference gives each optimizer all of its net's parameters; the
  # frozen ones get no gradient and Adam skips them.
  def adam(net):
    return torch.optim.Adam(
        net.parameters(), lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS)

  return Nets(g, d, g_ema, adam(g), adam(d))


def set_trainable(net: nn.Module, keep: Callable[[str], bool]):
  """BigGAN's `toggle_grad`, with cGANTransfer's parameter-name filter."""
  for name, param in net.named_parameters():
    param.requires_grad_(keep(name))


def g_trainable(stage: str) -> Callable[[str], bool]:
  if stage == 'transfer':
    return lambda name: any(key in name for key in KP_NAMES)
  return lambda name: True


def sample_latents(setup: Setup):
  z = torch.randn(setup.batch, DIM_Z)
  labels = torch.randint(0, setup.num_classes, (setup.batch,))
  return z, labels


def hinge_d(d_real, d_fake):
  return torch.mean(F.relu(1.0 - d_real)) + torch.mean(F.relu(1.0 + d_fake))


def kp_regularizer(g: Generator) -> torch.Tensor:
  """L1 on every combination weight and bias, L2 on every residual; each
  tensor contributes its mean."""
  total = torch.zeros(())
  for name, param in g.named_parameters():
    if 'comb_layer' in name:
      total = total + COMB_L1 * param.abs().mean()
    elif 'res_g' in name or 'res_b' in name:
      total = total + RES_L2 * param.pow(2).mean()
  return total


def d_step(nets: Nets, setup: Setup, reals: Sequence[torch.Tensor],
           labels: Sequence[torch.Tensor]):
  """One D optimizer step over the given real chunks (losses summed)."""
  set_trainable(nets.d, lambda name: True)
  set_trainable(nets.g, lambda name: False)
  nets.d_opt.zero_grad()
  for real, real_labels in zip(reals, labels):
    z, fake_labels = sample_latents(setup)
    with torch.no_grad():  # still advances G's BN stats and SN vectors
      fake = nets.g(z, fake_labels)
    # Fake and real go through D in one call, as BigGAN's G_D does.
    logits = nets.d(
        torch.cat([fake, real]), torch.cat([fake_labels, real_labels]))
    d_fake, d_real = torch.split(logits, [fake.shape[0], real.shape[0]])
    hinge_d(d_real, d_fake).backward()
  nets.d_opt.step()


def g_step(nets: Nets, setup: Setup):
  set_trainable(nets.d, lambda name: False)
  set_trainable(nets.g, g_trainable(setup.stage))
  nets.g_opt.zero_grad()
  z, labels = sample_latents(setup)
  loss = -torch.mean(nets.d(nets.g(z, labels), labels))
  if setup.stage == 'transfer':
    loss = loss + kp_regularizer(nets.g)
  loss.backward()
  nets.g_opt.step()


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, iteration: int):
  """BigGAN's EMA over the whole state dict (parameters and buffers)."""
  decay = EMA_DECAY if iteration >= EMA_START else 0.0
  source_state = source.state_dict()
  for key, value in target.state_dict().items():
    value.copy_(value * decay + source_state[key] * (1 - decay))


def iteration(nets: Nets, setup: Setup, images: torch.Tensor,
              labels: torch.Tensor, index: int):
  """One training iteration on `images` [real_per_iteration, 3, 32, 32]."""
  image_chunks = torch.split(images, setup.batch)
  label_chunks = torch.split(labels, setup.batch)
  per_step = setup.chunks_per_d_step
  for step in range(setup.num_d_steps):
    chunk = slice(step * per_step, (step + 1) * per_step)
    d_step(nets, setup, image_chunks[chunk], label_chunks[chunk])
  g_step(nets, setup)
  if setup.ema:
    ema_update(nets.g_ema, nets.g, index)


# ----------------------------------------------------------------- FLOPs ---


@dataclasses.dataclass(frozen=True)
class Layer:
  """Per-sample forward multiply-adds of one conv/linear layer and which
  gradients the backward passes compute for it.

  Attributes:
    name: the layer's place in its network (for reading the list).
    macs: forward multiply-adds per sample.
    weight_grad: whether the G step computes its weight gradient (G only).
    input_grad: whether a backward pass needs the gradient of its input
      (for D: in the D step; the G step needs every D input gradient).
  """
  name: str
  macs: int
  weight_grad: bool = False
  input_grad: bool = True


def conv_macs(size: int, in_ch: int, out_ch: int, kernel: int) -> int:
  """Multiply-adds of a stride-1 'same' conv on a size x size map, counting
  only the kernel taps that land inside the image."""
  pad = kernel // 2
  taps = sum(min(size - 1, i + pad) - max(0, i - pad) + 1 for i in range(size))
  return taps * taps * in_ch * out_ch


def generator_layers(ch: int, stage: str) -> List[Layer]:
  """G's layers; the flags describe the backward of the G step."""
  width = 4 * ch
  transfer = stage == 'transfer'
  # z needs no grad, and in transfer the first linear is frozen.
  layers = [
      Layer('linear', DIM_Z * width * BOTTOM_WIDTH**2, not transfer, False)
  ]
  size = BOTTOM_WIDTH
  for block in range(3):
    size *= 2
    for bn in ('bn1', 'bn2'):
      if transfer:  # the KP linears read the one-hot labels
        kp = [('comb_layer', NUM_NEW * NUM_SOURCE),
              ('prev_knowledge', NUM_SOURCE * width), ('res', NUM_NEW * width)]
        layers += [
            Layer(f'blocks.{block}.{bn}.{name}_{gb}', macs, True, False)
            for name, macs in kp
            for gb in 'gb'
        ]
    # In transfer the shortcut of block 0 reads the frozen linear's output,
    # which carries no gradient; every other conv lies after a KP BN.
    sc_input_grad = not (transfer and block == 0)
    layers += [
        Layer(f'blocks.{block}.conv1', conv_macs(size, width, width, 3),
              not transfer),
        Layer(f'blocks.{block}.conv2', conv_macs(size, width, width, 3),
              not transfer),
        Layer(f'blocks.{block}.conv_sc', conv_macs(size, width, width, 1),
              not transfer, sc_input_grad),
    ]
  layers.append(
      Layer('output_conv', conv_macs(RESOLUTION, width, 3, 3), not transfer))
  return layers


def discriminator_layers(ch: int) -> List[Layer]:
  """D's layers; `input_grad` is False where the input is the images."""
  width = 4 * ch
  return [
      Layer('blocks.0.conv1', conv_macs(32, 3, width, 3), input_grad=False),
      Layer('blocks.0.conv2', conv_macs(32, width, width, 3)),
      Layer('blocks.0.conv_sc', conv_macs(16, 3, width, 1), input_grad=False),
      Layer('blocks.1.conv1', conv_macs(16, width, width, 3)),
      Layer('blocks.1.conv2', conv_macs(16, width, width, 3)),
      Layer('blocks.1.conv_sc', conv_macs(16, width, width, 1)),
      Layer('blocks.2.conv1', conv_macs(8, width, width, 3)),
      Layer('blocks.2.conv2', conv_macs(8, width, width, 3)),
      Layer('blocks.3.conv1', conv_macs(8, width, width, 3)),
      Layer('blocks.3.conv2', conv_macs(8, width, width, 3)),
      Layer('linear', width),
      Layer('projection', width),  # <embed(y), h>
  ]


def gflop_per_iteration(setup: Setup, ch: int) -> float:
  """2 x multiply-adds of the forward and backward passes one iteration
  runs (see the module docstring)."""
  g_layers = generator_layers(ch, setup.stage)
  d_layers = discriminator_layers(ch)
  g_forward = sum(layer.macs for layer in g_layers)
  d_forward = sum(layer.macs for layer in d_layers)
  # D step backward: every weight gradient, input gradients past the images.
  d_backward = d_forward + sum(
      layer.macs for layer in d_layers if layer.input_grad)
  chunks = setup.num_d_steps * setup.chunks_per_d_step
  d_steps = chunks * (
      setup.batch * g_forward + 2 * setup.batch * (d_forward + d_backward))
  g_backward = sum(
      layer.macs * (layer.weight_grad + layer.input_grad) for layer in g_layers)
  # G step: D's backward computes input gradients only (D is frozen).
  g_step_macs = setup.batch * (g_forward + g_backward + 2 * d_forward)
  return 2 * (d_steps + g_step_macs) / 1e9


# ------------------------------------------------------------------ main ---


def _synchronize():
  """Waits for queued GPU work (CUDA runs asynchronously), so that a timer
  read afterwards covers it."""
  if torch.cuda.is_available() and torch.cuda.is_initialized():
    torch.cuda.synchronize()


def measure(stage: str, ch: int, batch: int, steps: int, warmup: int,
            seed: int) -> Dict[str, object]:
  """Times `steps` iterations on torch's default device (`main` sets it)."""
  torch.manual_seed(seed)
  setup = make_setup(stage, batch)
  nets = build(setup, ch)
  n = setup.real_per_iteration
  images = torch.rand(n, 3, RESOLUTION, RESOLUTION) * 2 - 1
  labels = torch.arange(n) % setup.num_classes
  for index in range(warmup):
    iteration(nets, setup, images, labels, index)
  seconds = []
  for index in range(warmup, warmup + steps):
    _synchronize()
    start = time.perf_counter()
    iteration(nets, setup, images, labels, index)
    _synchronize()
    seconds.append(time.perf_counter() - start)
  per_iteration = sum(seconds) / len(seconds)
  gflop = gflop_per_iteration(setup, ch)
  print('seconds per timed iteration:', ', '.join(f'{s:.3f}' for s in seconds))
  return {
      'stage': stage,
      'torch': torch.__version__,
      'device': str(images.device),
      'threads': torch.get_num_threads(),
      'batch': f'{batch} x {n // batch} D chunks',
      's_per_iteration': per_iteration,
      'real_images_per_s': n / per_iteration,
      'gflop_per_iteration': gflop,
      'gflop_per_s': gflop / per_iteration,
  }


def print_table(row: Dict[str, object]):
  """The markdown table format of tools/benchmark.py."""
  print('| ' + ' | '.join(row) + ' |')
  print('|' + '---|' * len(row))
  cells = [f'{v:.3g}' if isinstance(v, float) else str(v) for v in row.values()]
  print('| ' + ' | '.join(cells) + ' |')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      '--stage', choices=('transfer', 'pretrain'), default='transfer')
  parser.add_argument(
      '--steps', type=int, default=3, help='timed iterations after warm-up')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument(
      '--threads',
      type=int,
      default=None,
      help="torch intra-op threads (default: torch's)")
  parser.add_argument('--ch', type=int, default=64, help='G_ch = D_ch')
  parser.add_argument('--batch', type=int, default=50)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--device',
      default='cpu',
      help="torch device to run on, e.g. 'cuda' (a CUDA build of torch)")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  # Every module and tensor the twin makes lands there.
  torch.set_default_device(args.device)
  print_table(
      measure(args.stage, args.ch, args.batch, args.steps, args.warmup,
              args.seed))


if __name__ == '__main__':
  main()
