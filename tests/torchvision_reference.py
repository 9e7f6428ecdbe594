"""torchvision's ResNet-50 written out independently in NumPy, for the converter tests.

Nothing here uses dlpl_jax: the state dict's names and shapes are torchvision's
``models/resnet.py`` (``resnet50``: Bottleneck, layers [3, 4, 6, 3], stride on
``conv2``, ``downsample = Sequential(conv1x1(stride), BatchNorm2d)`` on the first
block of each stage), and the forward pass is torch's eval-mode arithmetic in NCHW
float64 (Conv2d with its padding, BatchNorm2d with running statistics and eps 1e-5,
MaxPool2d(3, 2, padding=1), AdaptiveAvgPool2d(1), Linear).
"""

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
EPS = 1e-5


def state_dict(num_classes=1000, seed=0, head="fc"):
  """Random arrays under torchvision's names and shapes (float32, as torch saves).

  Args:
    num_classes: rows of ``fc``.
    seed: numpy seed.
    head: "fc" (a linear classifier), "mlp" (MoCo's projection head ``fc.0``,
      ``fc.2``) or None (no head).
  """
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, o, i, k):
    std = np.sqrt(2.0 / (i * k * k))
    sd[f"{name}.weight"] = (rng.normal(size=(o, i, k, k)) * std).astype(np.float32)

  def bn(name, c, gamma=(0.5, 1.0)):
    sd[f"{name}.weight"] = rng.uniform(*gamma, size=c).astype(np.float32)
    sd[f"{name}.bias"] = rng.normal(scale=0.1, size=c).astype(np.float32)
    sd[f"{name}.running_mean"] = rng.normal(scale=0.1, size=c).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)

  conv("conv1", 64, 3, 7)
  bn("bn1", 64)
  inplanes = 64
  for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), 1):
    for b in range(blocks):
      p = f"layer{li}.{b}"
      conv(f"{p}.conv1", planes, inplanes, 1)
      bn(f"{p}.bn1", planes)
      conv(f"{p}.conv2", planes, planes, 3)
      bn(f"{p}.bn2", planes)
      conv(f"{p}.conv3", planes * 4, planes, 1)
      bn(f"{p}.bn3", planes * 4, gamma=(0.1, 0.3))
      if b == 0:
        conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
        bn(f"{p}.downsample.1", planes * 4)
      inplanes = planes * 4
  if head == "fc":
    sd["fc.weight"] = (rng.normal(size=(num_classes, 2048)) * 0.02).astype(np.float32)
    sd["fc.bias"] = rng.normal(scale=0.1, size=num_classes).astype(np.float32)
  elif head == "mlp":
    sd["fc.0.weight"] = rng.normal(size=(2048, 2048)).astype(np.float32)
    sd["fc.0.bias"] = np.zeros(2048, np.float32)
    sd["fc.2.weight"] = rng.normal(size=(128, 2048)).astype(np.float32)
    sd["fc.2.bias"] = np.zeros(128, np.float32)
  return sd


def num_parameters(sd):
  """What ``sum(p.numel() for p in model.parameters())`` counts: no running stats."""
  return sum(v.size for k, v in sd.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def conv2d(x, w, stride, pad):
  """torch.nn.functional.conv2d, NCHW x, OIHW w, symmetric zero padding."""
  n, _, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  out = np.zeros((n, o, ho, wo))
  for a in range(kh):
    for b in range(kw):
      patch = xp[:, :, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, a, b].astype(np.float64))
  return out


def batch_norm(x, sd, name):
  g = lambda k: sd[f"{name}.{k}"].astype(np.float64)[None, :, None, None]  # noqa: E731
  return (x - g("running_mean")) / np.sqrt(g("running_var") + EPS) * g("weight") + g("bias")


def max_pool(x):
  """MaxPool2d(kernel_size=3, stride=2, padding=1) (padding never wins the max)."""
  n, c, h, w = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
  out = np.full((n, c, ho, wo), -np.inf)
  for a in range(3):
    for b in range(3):
      out = np.maximum(out, xp[:, :, a:a + 2 * (ho - 1) + 1:2, b:b + 2 * (wo - 1) + 1:2])
  return out


def normalize(images_nhwc_uint8):
  """ToTensor (/ 255, NHWC -> NCHW) + Normalize(ImageNet mean, std), float64."""
  x = images_nhwc_uint8.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
  return (x - MEAN[None, :, None, None]) / STD[None, :, None, None]


def stem(images_nhwc_uint8, sd):
  """ToTensor + Normalize, conv1, bn1, relu, maxpool: NCHW float64."""
  x = normalize(images_nhwc_uint8)
  x = np.maximum(batch_norm(conv2d(x, sd["conv1.weight"], 2, 3), sd, "bn1"), 0)
  return max_pool(x)


def forward(images_nhwc_uint8, sd):
  """Eval-mode logits ``[B, C]`` and pooled features ``[B, 2048]`` (float64)."""
  x = stem(images_nhwc_uint8, sd)
  for li, blocks in enumerate((3, 4, 6, 3), 1):
    for b in range(blocks):
      p = f"layer{li}.{b}"
      stride = 2 if (li > 1 and b == 0) else 1
      y = np.maximum(batch_norm(conv2d(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"), 0)
      y = np.maximum(batch_norm(conv2d(y, sd[f"{p}.conv2.weight"], stride, 1), sd,
                                f"{p}.bn2"), 0)
      y = batch_norm(conv2d(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
      if b == 0:
        x = batch_norm(conv2d(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd,
                       f"{p}.downsample.1")
      x = np.maximum(x + y, 0)
  feats = x.mean(axis=(2, 3))
  logits = feats @ sd["fc.weight"].astype(np.float64).T + sd["fc.bias"]
  return logits, feats
