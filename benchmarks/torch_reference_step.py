"""PyTorch reference timing of one FixMatch train step (kekmodel/FixMatch-pytorch).

NOT part of dlpl_jax (never imported by the package or the tests); run it in its own
venv:  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
       /tmp/torchvenv/bin/python benchmarks/torch_reference_step.py [--steps 5] [--warmup 2]
       [--channels_last] [--device cuda] [--bf16]

What is timed, per step: kekmodel's WRN-28-2 (leaky ReLU 0.1, BatchNorm momentum 0.001
in torch convention = 0.999 decay, dropout 0, its block quirks kept) forward on one
batch of 64 labeled + 448 weak + 448 strong = 960 random 32x32 float images (one
forward, as FixMatch does; interleave skipped), CE on the labeled part, FixMatch's
pseudo-label CE on the strong part (threshold 0.95), backward, SGD(lr 0.03, momentum
0.9, nesterov, wd 5e-4 on non-bias/non-BN params), the cosine LambdaLR step and the
EMA(0.999) model update. Augmentation is NOT included (kekmodel does it in DataLoader
workers with PIL). Seconds per step: median (p10, p90) after warm-up; each step ends
with ``loss.item()`` (as kekmodel's loop), which also synchronizes a GPU. On CUDA,
cudnn.benchmark is turned on and ``--bf16`` autocasts the forward (what a user would
do to make the references fast; kekmodel has an apex fp16 option).
"""

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride, activate_before_residual=False):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, momentum=0.001)
    self.relu1 = nn.LeakyReLU(0.1, inplace=True)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, momentum=0.001)
    self.relu2 = nn.LeakyReLU(0.1, inplace=True)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal = cin == cout
    self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
    self.abr = activate_before_residual

  def forward(self, x):  # as kekmodel/FixMatch-pytorch models/wideresnet.py
    if not self.equal and self.abr:
      x = self.relu1(self.bn1(x))
    else:
      out = self.relu1(self.bn1(x))
    out = self.relu2(self.bn2(self.conv1(out if self.equal else x)))
    out = self.conv2(out)
    return torch.add(x if self.equal else self.shortcut(x), out)


class WideResNet(nn.Module):
  def __init__(self, num_classes=10, depth=28, width=2):
    super().__init__()
    ch = [16, 16 * width, 32 * width, 64 * width]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
    blocks = []
    for g, stride in enumerate((1, 2, 2)):
      for i in range(n):
        blocks.append(BasicBlock(ch[g] if i == 0 else ch[g + 1], ch[g + 1],
                                 stride if i == 0 else 1, g == 0 and i == 0))
    self.blocks = nn.Sequential(*blocks)
    self.bn1 = nn.BatchNorm2d(ch[3], momentum=0.001)
    self.relu = nn.LeakyReLU(0.1, inplace=True)
    self.fc = nn.Linear(ch[3], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.fill_(1.0)
        m.bias.data.zero_()
      elif isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        m.bias.data.zero_()

  def forward(self, x):
    out = self.relu(self.bn1(self.blocks(self.conv1(x))))
    return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--mu", type=int, default=7)
  p.add_argument("--channels_last", action="store_true")
  p.add_argument("--device", default="cpu", help="cpu or cuda")
  p.add_argument("--bf16", action="store_true",
                 help="autocast the forward to bfloat16 (torch.autocast; params stay f32)")
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  dev = torch.device(args.device)
  if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True  # kekmodel leaves it off; on = the faster torch
  b, mu = args.batch, args.mu
  model = WideResNet().to(dev)
  fmt = torch.channels_last if args.channels_last else torch.contiguous_format
  model = model.to(memory_format=fmt).train()
  ema = copy.deepcopy(model)
  for q in ema.parameters():
    q.requires_grad_(False)
  no_decay = ["bias", "bn"]
  groups = [{"params": [q for n, q in model.named_parameters()
                        if not any(nd in n for nd in no_decay)], "weight_decay": 5e-4},
            {"params": [q for n, q in model.named_parameters()
                        if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
  opt = torch.optim.SGD(groups, lr=0.03, momentum=0.9, nesterov=True)
  total = 2**20
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: max(0.0, math.cos(math.pi * 7 / 16 * s / total)))
  n = b * (1 + 2 * mu)
  x = ((torch.rand(n, 3, 32, 32) * 255 - 127) / 64).to(dev)
  x = x.contiguous(memory_format=fmt)
  y = torch.randint(0, 10, (b,)).to(dev)

  def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
      logits = model(x).float()
    logits_x = logits[:b]
    logits_w, logits_s = logits[b:].chunk(2)
    lx = F.cross_entropy(logits_x, y)
    probs = torch.softmax(logits_w.detach(), dim=-1)
    maxp, yu = probs.max(dim=-1)
    mask = maxp.ge(0.95).float()
    lu = (F.cross_entropy(logits_s, yu, reduction="none") * mask).mean()
    loss = lx + lu
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():  # kekmodel ModelEMA.update
      msd, esd = model.state_dict(), ema.state_dict()
      for k in [k for k, _ in ema.named_parameters()]:
        esd[k].mul_(0.999).add_(msd[k].detach(), alpha=0.001)
      for k in [k for k, _ in ema.named_buffers()]:
        esd[k].copy_(msd[k])
    model.zero_grad()
    return loss.item()

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
  p10, p50, p90 = np.percentile(times, [10, 50, 90])
  where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
           else f"cpu, threads {torch.get_num_threads()}")
  print(f"torch {torch.__version__}, {where}, {'bf16 autocast' if args.bf16 else 'f32'}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, WRN-28-2, "
        f"{n} images/step (B={b}, mu={mu}), no augmentation")
  print(f"step: median {p50:.3f} s (p10 {p10:.3f}, p90 {p90:.3f}) over {args.steps} steps "
        f"after {args.warmup} warm-up -> {1 / p50:.4f} steps/s, {n / p50:.1f} images/s; "
        f"loss {loss:.3f}")
  print("per-step seconds:", " ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
  main()
