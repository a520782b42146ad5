"""Every relative link of the README and the docs pages points at a file that exists and,
with a '#fragment', at a heading of that file (GitHub's anchor rule)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str):
  """The lines of a markdown text that are not inside ``` fences or indented code."""
  fenced = False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    if not fenced and not line.startswith("    "):
      yield line


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_'
  dropped, spaces to '-'."""
  s = heading.strip().lower()
  s = re.sub(r"[^\w\- ]", "", s)
  return s.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  seen = {}
  out = set()
  for line in _outside_code(path.read_text()):
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    base = slug(m.group(1))
    n = seen.get(base, 0)
    out.add(base if n == 0 else f"{base}-{n}")
    seen[base] = n + 1
  return out


def test_slug_follows_githubs_rule():
  assert slug("Library API (`csm_jax/restore/`)") == "library-api-csm_jaxrestore"
  assert slug("CIFAR-10, salt-and-pepper, PixelCNN++ prior (the paper's Fig. 5 setting)") == (
      "cifar-10-salt-and-pepper-pixelcnn-prior-the-papers-fig-5-setting")


def test_anchors_skip_code_and_number_duplicates(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("# A b\n```python\n# not a heading\n```\n## A b\n    # indented code\n")
  assert anchors(page) == {"a-b", "a-b-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
  bad = []
  for line in _outside_code(page.read_text()):
    for target in LINK.findall(line):
      if re.match(r"^[a-z]+:", target):
        continue  # http(s), mailto: not checked offline
      file_part, _, frag = target.partition("#")
      dest = (page.parent / file_part).resolve() if file_part else page
      if not dest.exists():
        bad.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        continue
      if frag and dest.suffix == ".md" and frag not in anchors(dest):
        bad.append(f"{target}: no heading with anchor #{frag} in {dest.name}")
  assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)
