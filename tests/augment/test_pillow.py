"""Tests for dlpl_jax.augment.pillow: the reference's level -> magnitude map, against the
Pillow reference (benchmarks/pil_reference.py, a port of kekmodel/FixMatch-pytorch's
RandAugmentMC), and the ranges its docstring's table gives."""

import pytest

from benchmarks import pil_reference as R
from dlpl_jax.augment import pillow


@pytest.mark.parametrize("name", pillow.OP_NAMES)
def test_level_to_arg_matches_reference(name):
  for v in range(1, 10):
    for neg in (False, True):
      assert pillow.level_to_arg(name, v, neg) == R.level_to_arg(name, v, neg)


def test_magnitude_ranges():
  args = lambda n: [pillow.level_to_arg(n, v, s) for v in range(1, 10) for s in (0, 1)]
  assert set(args("Posterize")) == {4, 5, 6, 7}
  assert max(args("Rotate")) == 27 and min(args("Rotate")) == -27
  assert max(args("TranslateX")) == 8 and min(args("TranslateY")) == -8
  assert min(args("Solarize")) == 26 and max(args("Solarize")) == 231
  f = args("Brightness")
  assert min(f) == pytest.approx(0.14) and max(f) == pytest.approx(0.86)
  assert max(args("ShearX")) == pytest.approx(0.27)
