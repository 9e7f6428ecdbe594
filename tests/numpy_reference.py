"""The official statements of the method in NumPy, float64: the references the step's and
the multiview loss's tests compare against (not a test module)."""

import numpy as np


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def cross_entropy(logits, labels):
  """Per-example cross-entropy (F.cross_entropy(..., reduction='none'))."""
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logz - logits[np.arange(len(labels)), labels]


def onehot(labels, n):
  return np.eye(n)[labels]


def unlabeled(w, s, marginal, tau, threshold, momentum):
  """DebiasPL's unlabeled loss on one view (FixMatch's with tau = 0):
  ``(loss, new marginal, labels, mask, dL/ds)``."""
  q = softmax(w - tau * np.log(marginal))
  labels, mask = q.argmax(-1), (q.max(-1) >= threshold).astype(float)
  qhat = momentum * marginal + (1 - momentum) * softmax(w).mean(0)
  shifted = s + tau * np.log(qhat)
  loss = (mask * cross_entropy(shifted, labels)).mean()
  grad = mask[:, None] * (softmax(shifted) - onehot(labels, w.shape[-1])) / len(w)
  return loss, qhat, labels, mask, grad


def multiview(weak, strong, marginal, tau, threshold, momentum):
  """The official multiviews branch (K = 2) in NumPy: pseudo-labels from the mean of
  the weak logits and from each weak view, each crossed with each strong view."""
  w1, w2 = weak
  s1, s2 = strong
  w = (w1 + w2) / 2
  targets = []
  for z in (w, w1, w2):
    q = softmax(z - tau * np.log(marginal))
    targets.append((q.argmax(-1), (q.max(-1) >= threshold).astype(float)))
  qhat = momentum * marginal + (1 - momentum) * softmax(w).mean(0)
  shifted = [s + tau * np.log(qhat) for s in (s1, s2)]
  loss = sum((cross_entropy(z, labels) * mask).mean() for labels, mask in targets for z in shifted)
  return loss / 6, qhat, targets[0]


def cld(prob_s, prob_w, temperature):
  """The official CLDLoss / get_centroids statements in NumPy."""
  d = prob_w.shape[1]
  cl = prob_w.argmin(axis=1)
  counts = np.ones(d)
  unique, cnt = np.unique(cl, return_counts=True)
  counts[unique] = cnt
  c = np.zeros((d, d))
  np.add.at(c, cl, prob_w)
  c = c / counts[:, None]
  return cross_entropy((prob_s @ c.T) / temperature, cl).mean()


def clip_fallback(weak, strong, marginal, new_marginal, clip_labels, clip_probs, tau, threshold,
             clip_threshold):
  """The zero-shot recipe's CLIP fallback: ``(L_clip, fallback mask)``."""
  masks = [softmax(z - tau * np.log(marginal)).max(-1) >= threshold
           for z in [weak.mean(0), *weak]]
  f = ((clip_probs >= clip_threshold) & ~np.any(masks, axis=0)).astype(float)
  loss = np.mean([np.mean(f * cross_entropy(s + tau * np.log(new_marginal), clip_labels))
                  for s in strong])
  return loss, f
