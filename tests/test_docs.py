"""The documents match the repository: the README's example prints what the README says,
its links lead to files that exist, and no tracked text file holds control characters."""

import contextlib
import io
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _numbers_and_words(text: str):
  tokens = re.findall(r"-?\d+\.\d+|\S+", text)
  return [float(t) if re.fullmatch(r"-?\d+\.\d+", t) else t for t in tokens]


def test_readme_example_prints_what_the_readme_shows():
  code = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
  expected = re.search(r"It prints.*?```\n(.*?)```", README, flags=re.S).group(1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  got, want = _numbers_and_words(out.getvalue()), _numbers_and_words(expected)
  assert len(got) == len(want), out.getvalue()
  for g, w in zip(got, want):
    if isinstance(w, float):
      assert abs(g - w) <= 1.5e-3, (out.getvalue(), expected)
    else:
      assert g == w, (out.getvalue(), expected)
  # The example shows the method at work: confident pseudo-labels, a moving marginal.
  assert 0 < want[want.index("rate") + 1] < 1 and want.count(0.1) < 10


def test_readme_links_exist():
  links = re.findall(r"\]\(((?!https?://|#)[^)]+)\)", README)
  assert links
  missing = [l for l in links if not (REPO / l.split("#")[0]).exists()]
  assert not missing, missing


def test_no_control_characters_in_tracked_text_files():
  files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
  bad = []
  for name in files:
    path = REPO / name
    if path.suffix in (".png", ".npz") or not path.is_file():
      continue
    data = path.read_bytes()
    if re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", data):
      bad.append(name)
  assert not bad, bad
