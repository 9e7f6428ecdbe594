"""Classifiers in Flax linen: the FixMatch Wide ResNet, a torchvision-layout ResNet-50
(for ImageNet and self-supervised initialisation) and a small CPU-sized CNN.

Every model takes raw pixels and normalizes them itself, so callers (augmentation,
evaluation) work in uint8 / [0, 255] throughout. The common contract is::

  logits = model.apply(variables, x, train=False)                  # [B, C] float32
  logits, feats = model.apply(variables, x, train=False,
                              return_features=True)                # feats [B, D] f32
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])           # BN stats update

``x`` is ``[B, H, W, 3]`` uint8 or float in [0, 255]. ``dtype`` is the computation
dtype (e.g. ``jnp.bfloat16`` for mixed precision); parameters and BatchNorm statistics
always stay float32, and logits and features are returned as float32.

References:
  Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016,
  https://arxiv.org/abs/1605.07146
  Sohn et al., FixMatch, NeurIPS 2020; architecture of google-research/fixmatch
  ``libml/models.py`` (class ``ResNet``); parameter count as in
  kekmodel/FixMatch-pytorch ``models/wideresnet.py`` (convolutions without bias:
  WRN-28-2 has 1,467,610 params).
  He et al., Deep Residual Learning for Image Recognition, CVPR 2016,
  https://arxiv.org/abs/1512.03385; layout of torchvision ``models/resnet.py``
  (ResNet v1.5: the stride of a bottleneck on its 3x3 convolution), the backbone of
  MoCo and of the official DebiasPL ImageNet code.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR10_STD = (0.2471 * 255, 0.2435 * 255, 0.2616 * 255)
# torchvision's ImageNet normalisation (transforms.Normalize after ToTensor's / 255).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

Dtype = Any

# He (Kaiming) normal with fan_out, untruncated: std = sqrt(2 / (k * k * out)), the
# init of both FixMatch references (TF: rsqrt(0.5 * k * k * f)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Glorot / Xavier normal for the classifier head, zero bias.
dense_init = nn.initializers.xavier_normal()


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: Dtype) -> jax.Array:
  """(x - mean) / std per channel, computed in float32, returned in ``dtype``.

  Args:
    x: ``[B, H, W, 3]`` raw pixels, uint8 or float in [0, 255].
    mean: per-channel mean ``[3]`` in pixel units.
    std: per-channel standard deviation ``[3]`` in pixel units.
    dtype: dtype of the result.

  Returns:
    ``[B, H, W, 3]`` normalized images in ``dtype``.
  """
  if x.ndim != 4 or x.shape[-1] != len(mean):
    raise ValueError(
        f"expected images [B, H, W, {len(mean)}], got shape {x.shape}")
  x = jnp.asarray(x).astype(jnp.float32)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def _head(features: jax.Array, num_classes: int, dtype: Dtype,
          return_features: bool):
  """Dense classifier on pooled features; float32 logits (and features)."""
  logits = nn.Dense(num_classes, kernel_init=dense_init,
                    bias_init=nn.initializers.zeros, dtype=dtype,
                    param_dtype=jnp.float32, name="classifier")(features)
  logits = logits.astype(jnp.float32)
  if return_features:
    return logits, features.astype(jnp.float32)
  return logits


class _BasicBlock(nn.Module):
  """Pre-activation WRN basic block (BN, lrelu, conv3x3, BN, lrelu, conv3x3).

  With ``activate_before_residual`` the shortcut also takes the pre-activated input
  (FixMatch does this in the first group only). A 1x1 projection is used on the
  shortcut when the channel count changes.
  """
  features: int
  strides: int = 1
  activate_before_residual: bool = False
  bn_momentum: float = 0.999
  leaky_slope: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
        dtype=self.dtype, param_dtype=jnp.float32, name=name)
    conv = lambda f, k, s, name: nn.Conv(  # noqa: E731
        f, (k, k), strides=(s, s), padding="SAME", use_bias=False,
        kernel_init=conv_init, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    act = lambda v: nn.leaky_relu(v, self.leaky_slope)  # noqa: E731

    shortcut = x
    y = act(bn("bn1")(x))
    if self.activate_before_residual:
      shortcut = y
    y = conv(self.features, 3, self.strides, "conv1")(y)
    y = act(bn("bn2")(y))
    y = conv(self.features, 3, 1, "conv2")(y)
    if shortcut.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.strides, "shortcut")(shortcut)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-width of FixMatch: channels 16, 16w, 32w, 64w; (depth - 4) / 6 blocks
  per group; strides 1, 2, 2; BN + leaky ReLU, global average pool, dense head.

  WRN-28-2 has 1,467,610 parameters (CIFAR-10), WRN-28-8 23.4M (CIFAR-100).

  The forward pass is that of the original TensorFlow FixMatch (google-research/
  fixmatch ``libml/models.py``, ``ResNet.classifier``). The PyTorch port
  kekmodel/FixMatch-pytorch (``models/wideresnet.py``) has the same layers and the
  same parameter count, but computes a different function of the same weights in
  three places, where this model follows the TensorFlow code:

  1. BatchNorm epsilon is 1e-3 here (the default of TF's
     ``tf.layers.batch_normalization``); kekmodel's ``nn.BatchNorm2d`` keeps
     PyTorch's default 1e-5. The momentum agrees: 0.999 here is PyTorch's
     ``momentum=0.001``.
  2. First block of groups 2 and 3 (``group1_block0``, ``group2_block0``): conv1 is
     fed ``leaky_relu(bn1(x))`` here, as in every other block of both codes. In
     kekmodel these blocks change the channel count and have
     ``activate_before_residual=False``, so ``BasicBlock.forward`` feeds conv1 the
     raw block input ``x``: the ``relu1(bn1(x))`` it computes is discarded (that
     bn1 still updates its running statistics in training, but its scale and offset
     do not reach the output). The 1x1 shortcut projection reads the raw ``x`` in
     both codes. In the first block of group 1 (``group0_block0``,
     ``activate_before_residual=True`` in both) conv1 and the shortcut projection
     both read the pre-activated input in both codes.
  3. The stride-2 3x3 convolutions (conv1 of ``group1_block0`` and
     ``group2_block0``) use "SAME" padding: on an even input size, 0 rows/columns
     before and 1 after (as TF's ``padding='same'``), so output pixel ``i`` reads
     input pixels ``2i .. 2i+2``. kekmodel's ``Conv2d(padding=1)`` pads 1 on both
     sides and reads ``2i-1 .. 2i+1``. The 1x1 stride-2 shortcut needs no padding
     and reads the even pixels in both.

  Whoever wants kekmodel's numbers from this model must change all three: epsilon
  1e-5; conv1 of ``group1_block0`` and ``group2_block0`` fed the raw block input;
  explicit padding ``((1, 1), (1, 1))`` on the stride-2 3x3 convolutions. With the
  three aligned, the two give the same logits from the same weights (to 1e-6).
  Differences outside the forward pass: kekmodel normalises the images in its data
  pipeline (CIFAR-10: the same mean and std as here); PyTorch's running variance is
  updated with the unbiased batch variance, Flax's with the biased one (a relative
  1 / (n - 1), ``n = B * H * W``); TF's convolutions carry biases, constants that
  reach a BatchNorm through linear operations only and are removed there, so both
  ports leave them out. Width 1 alone would add a fourth difference (kekmodel
  ignores ``activate_before_residual`` when the first group keeps 16 channels).
  ``tests/models/test_networks.py`` pins the three points.
  """
  depth: int = 28
  width: int = 2
  num_classes: int = 10
  bn_momentum: float = 0.999
  leaky_slope: float = 0.1
  dtype: Dtype = jnp.float32
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, return_features: bool = False):
    """Logits ``[B, num_classes]`` float32 (and pooled features ``[B, 64 * width]``).

    Args:
      x: ``[B, H, W, 3]`` raw pixels, uint8 or float in [0, 255].
      train: batch statistics (and their update, with ``mutable=['batch_stats']``)
        if True, running averages if False.
      return_features: also return the penultimate pooled features.
    """
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    block = lambda f, s, abr, name: _BasicBlock(  # noqa: E731
        f, s, abr, self.bn_momentum, self.leaky_slope, self.dtype, name=name)

    y = normalize(x, self.mean, self.std, self.dtype)
    y = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, param_dtype=jnp.float32, name="conv_in")(y)
    for g, f in enumerate((16 * self.width, 32 * self.width, 64 * self.width)):
      for i in range(n):
        strides = 2 if (g > 0 and i == 0) else 1
        y = block(f, strides, g == 0 and i == 0, f"group{g}_block{i}")(y, train)
    y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=1e-3, dtype=self.dtype, param_dtype=jnp.float32,
                     name="bn_out")(y)
    y = nn.leaky_relu(y, self.leaky_slope)
    features = jnp.mean(y.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    return _head(features, self.num_classes, self.dtype, return_features)


class SmallCNN(nn.Module):
  """Tiny CNN for CPU-sized runs (242,474 params at 10 classes).

  conv32 -> pool -> conv64 -> pool -> conv128 -> conv128, each conv 3x3 + BN + leaky
  ReLU, then global average pool and a dense head. Features are ``[B, 128]``.
  """
  num_classes: int = 10
  bn_momentum: float = 0.999
  leaky_slope: float = 0.1
  dtype: Dtype = jnp.float32
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, return_features: bool = False):
    """Logits ``[B, num_classes]`` float32 (and pooled features ``[B, 128]``).

    Args:
      x: ``[B, H, W, 3]`` raw pixels, uint8 or float in [0, 255].
      train: batch statistics if True, running averages if False.
      return_features: also return the penultimate pooled features.
    """
    y = normalize(x, self.mean, self.std, self.dtype)
    for i, (f, pool) in enumerate(((32, True), (64, True), (128, False),
                                   (128, False))):
      y = nn.Conv(f, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init,
                  dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i}")(y)
      y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=1e-3, dtype=self.dtype, param_dtype=jnp.float32,
                       name=f"bn{i}")(y)
      y = nn.leaky_relu(y, self.leaky_slope)
      if pool:
        y = nn.max_pool(y, (2, 2), strides=(2, 2))
    features = jnp.mean(y.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    return _head(features, self.num_classes, self.dtype, return_features)


class _Bottleneck(nn.Module):
  """torchvision's ``Bottleneck`` (v1.5): conv1x1, BN, ReLU, conv3x3 (stride), BN,
  ReLU, conv1x1 (4x channels), BN, plus the shortcut, then ReLU.

  The shortcut is ``downsample_0`` (conv1x1 with the block's stride) and
  ``downsample_1`` (BN) when the shape changes, else the identity. Submodule names
  are torch's with ``.`` written ``_`` (see :mod:`dlpl_jax.convert`).
  """
  planes: int
  strides: int = 1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    conv = lambda f, k, s, pad, name: nn.Conv(  # noqa: E731
        f, (k, k), strides=(s, s), padding=pad, use_bias=False,
        kernel_init=conv_init, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    out_features = 4 * self.planes
    y = nn.relu(bn("bn1")(conv(self.planes, 1, 1, "VALID", "conv1")(x)))
    # torch Conv2d(3, stride, padding=1): one pixel both sides, at any stride.
    y = nn.relu(bn("bn2")(conv(self.planes, 3, self.strides, ((1, 1), (1, 1)),
                               "conv2")(y)))
    y = bn("bn3")(conv(out_features, 1, 1, "VALID", "conv3")(y))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = bn("downsample_1")(
          conv(out_features, 1, self.strides, "VALID", "downsample_0")(x))
    return nn.relu(shortcut + y)


class ResNet50(nn.Module):
  """ResNet-50 in torchvision's layout (25,557,032 parameters with 1000 classes).

  Stem: conv 7x7/2 (64), BN, ReLU, max pool 3x3/2; then bottleneck stages of
  [3, 4, 6, 3] blocks with 64, 128, 256, 512 planes (x4 output channels), the stride 2
  of stages 2-4 on the first block's 3x3 convolution (v1.5, as torchvision and MoCo);
  global average pool, dense head (``classifier``, torch's ``fc``). Features are
  ``[B, 2048]``. Parameter and module names follow torch's (``conv1``, ``bn1``,
  ``layer1_0/conv1``, ``layer1_0/downsample_0``, ...) so that
  :mod:`dlpl_jax.convert` maps a torch state dict one-to-one.

  Equal to torch given the same weights (up to float rounding):

  * padding is explicit, as torch's: ``((3, 3), (3, 3))`` on the 7x7/2 stem conv,
    ``((1, 1), (1, 1))`` on every 3x3 conv (stride 1 or 2) and on the 3x3/2 max pool
    (padded with -inf, as torch's ``MaxPool2d``), none on the 1x1 convs. "SAME" would
    differ on stride 2 with an even input (0 before / 1 after instead of 1 / 1);
  * BatchNorm epsilon 1e-5 and momentum 0.9 (torch's ``momentum=0.1``); in training
    Flax updates the running variance with the biased batch variance, torch with the
    unbiased one (a relative ``1 / (n - 1)``, ``n = B * H * W``): the eval-mode
    forward pass is the same, the running-stat update differs by that factor;
  * the images are normalised inside the model with torchvision's ImageNet mean and
    std (``ToTensor`` then ``Normalize`` in torch), so the input is raw
    ``[B, H, W, 3]`` pixels in [0, 255], channels last (torch is NCHW; the
    converter transposes the kernels, not the images).

  Initialisation is torchvision's for the convolutions (He normal, fan_out) and
  BatchNorm (scale 1, offset 0, ``zero_init_residual=False``); the head uses this
  module's Glorot-normal ``classifier`` like the other models (torchvision's
  ``nn.Linear`` default differs; it does not matter once weights are loaded or
  trained). 224x224 is the intended input size; any size of at least 32 runs (the
  output of stage 4 is then 1x1).
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  mean: Sequence[float] = IMAGENET_MEAN
  std: Sequence[float] = IMAGENET_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, return_features: bool = False):
    """Logits ``[B, num_classes]`` float32 (and pooled features ``[B, 2048]``).

    Args:
      x: ``[B, H, W, 3]`` raw pixels, uint8 or float in [0, 255] (224x224 for
        ImageNet).
      train: batch statistics (and their update, with ``mutable=['batch_stats']``)
        if True, running averages if False.
      return_features: also return the penultimate pooled features.
    """
    # Stem: normalise, conv 7x7/2, BN, ReLU, max pool 3x3/2 (padded with -inf).
    y = normalize(x, self.mean, self.std, self.dtype)
    y = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=conv_init, dtype=self.dtype, param_dtype=jnp.float32,
                name="conv1")(y)
    y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype,
                             param_dtype=jnp.float32, name="bn1")(y))
    y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        strides = 2 if (stage > 0 and i == 0) else 1
        y = _Bottleneck(64 * 2 ** stage, strides, self.bn_momentum, self.bn_epsilon,
                        self.dtype, name=f"layer{stage + 1}_{i}")(y, train)
    features = jnp.mean(y.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    return _head(features, self.num_classes, self.dtype, return_features)


_FACTORIES = {
    "wrn28_2": lambda c, dtype: WideResNet(depth=28, width=2, num_classes=c,
                                           dtype=dtype),
    "wrn28_8": lambda c, dtype: WideResNet(depth=28, width=8, num_classes=c,
                                           dtype=dtype),
    "cnn_small": lambda c, dtype: SmallCNN(num_classes=c, dtype=dtype),
    "resnet50": lambda c, dtype: ResNet50(num_classes=c, dtype=dtype),
}

MODEL_NAMES = tuple(_FACTORIES)


def create_model(name: str, num_classes: int, dtype: Dtype = jnp.float32) -> nn.Module:
  """Builds a model by name: 'wrn28_2', 'wrn28_8', 'cnn_small' or 'resnet50'.

  Args:
    name: architecture name, one of ``MODEL_NAMES``.
    num_classes: size of the classifier head.
    dtype: computation dtype (params stay float32).

  Returns:
    An unbound Flax module following the contract of this module's docstring.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _FACTORIES:
    raise ValueError(
        f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return _FACTORIES[name](num_classes, dtype)


def param_count(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
