"""The repository explains itself: nothing a user reads points outside it, and the docs' links hold.

In ``src/``, ``docs/`` and ``README.md``: no mention of the project's private specification
(``DESIGN``) and no path outside the repository (``../shared``, machine paths such as ``/work/`` or a
home directory). One exception: the test and benchmark instructions (``README.md``,
``docs/benchmarks.md``) may name ``../shared`` in a paragraph that says what is skipped without it.
Every relative markdown link between README.md and docs/*.md resolves inside the repository,
``#anchor`` included (GitHub's heading slugs), and every ``architecture.md §N.M`` reference in
src/, docs/, README.md, bench/ and tests/ names a numbered section that exists.

Each check is a function of the repository root, so the tests below also run it on small broken
repositories in a temporary folder and require it to find the fault.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = re.compile(r"DESIGN|\.\./shared|(?<![\w.~-])/(?:work|home|Users|root)/")
# where ../shared may appear (optional test and benchmark data), in a paragraph saying what is skipped
OPTIONAL_DATA_PAGES = {"README.md", "docs/benchmarks.md"}
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SECTION_REF = re.compile(r"architecture\.md §(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?")
FENCE = re.compile(r"^\s*(```|~~~)")


def user_facing_files(root: Path) -> list[Path]:
    """The text files a user reads: everything under src/ and docs/ that is UTF-8 text, and README.md."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    for folder in ("src", "docs"):
        for path in sorted((root / folder).rglob("*")):
            built = any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)  # not sources
            if path.is_file() and not built and read_text(path) is not None:
                files.append(path)
    return files


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a PNG, a compiled module)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def paragraphs(text: str):
    """``(first line number, paragraph text)`` for each blank-line separated block."""
    start, block = 1, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


def outside_references(root: Path) -> list[str]:
    """``file:line: text`` for each mention of DESIGN or of a path outside the repository."""
    problems = []
    for path in user_facing_files(root):
        rel = path.relative_to(root).as_posix()
        for start, paragraph in paragraphs(read_text(path)):
            for match in FORBIDDEN.finditer(paragraph):
                optional_data = (match.group() == "../shared" and rel in OPTIONAL_DATA_PAGES
                                 and "skip" in paragraph.lower())
                if not optional_data:
                    line = start + paragraph.count("\n", 0, match.start())
                    problems.append(f"{rel}:{line}: names {match.group()!r}")
    return problems


def prose_lines(text: str, blank_code: bool = True):
    """``(line number, line)`` outside fenced code blocks; inline code spans blanked out unless not
    ``blank_code`` (a heading's code span is part of its anchor, a link inside one is no link)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line) if blank_code else line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown page, repeated headings numbered as GitHub does (-1, -2 ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text, blank_code=False):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def doc_pages(root: Path) -> list[Path]:
    pages = sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    return ([root / "README.md"] if (root / "README.md").is_file() else []) + pages


def broken_links(root: Path) -> list[str]:
    """``file:line: target`` for each relative markdown link of the docs pages that leads nowhere."""
    root = root.resolve()
    problems = []
    for page in doc_pages(root):
        rel = page.relative_to(root).as_posix()
        text = page.read_text(encoding="utf-8")
        own_anchors = anchors(text)
        for number, line in prose_lines(text):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.is_relative_to(root):
                    problems.append(f"{rel}:{number}: {target} leaves the repository")
                elif not dest.exists():
                    problems.append(f"{rel}:{number}: {target} does not exist")
                elif anchor and dest.suffix == ".md":
                    names = own_anchors if dest == page else anchors(dest.read_text(encoding="utf-8"))
                    if anchor not in names:
                        problems.append(f"{rel}:{number}: {target} has no heading #{anchor}")
    return problems


def section_numbers(root: Path) -> set[str]:
    """Numbers of docs/architecture.md's numbered headings (``## 1. The layer`` -> 1, ``### 1.4 ...`` -> 1.4)."""
    page = root / "docs" / "architecture.md"
    if not page.is_file():
        return set()
    numbers = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8"), blank_code=False):
        match = re.match(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if match:
            numbers.add(match.group(1))
    return numbers


def broken_section_refs(root: Path) -> list[str]:
    """``file:line: §N`` for each ``architecture.md §N[-M]`` reference to a section that does not exist."""
    numbers = section_numbers(root)
    files = user_facing_files(root) + sorted((root / "bench").rglob("*.py")) + [
        path for path in sorted((root / "tests").glob("*.py")) if path.name != Path(__file__).name]
    problems = []
    for path in files:
        for number, line in enumerate(read_text(path).splitlines(), 1):
            for match in SECTION_REF.finditer(line):
                for section in filter(None, match.groups()):
                    if section not in numbers:
                        problems.append(f"{path.relative_to(root).as_posix()}:{number}: no section {section}")
    return problems


# ---- the repository itself -----------------------------------------------------------------


def test_nothing_user_facing_points_outside_the_repository():
    problems = outside_references(REPO)
    assert not problems, "\n".join(problems)


def test_links_between_docs_pages_resolve():
    problems = broken_links(REPO)
    assert not problems, "\n".join(problems)


def test_architecture_section_references_exist():
    assert {"1", "1.4", "2.3", "3.3", "4.4", "5"} <= section_numbers(REPO)
    problems = broken_section_refs(REPO)
    assert not problems, "\n".join(problems)


# ---- the checks find what they are meant to find ---------------------------------------------


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


GOOD = {
    "README.md": "# Title\n\nSee [the layer](docs/architecture.md#14-wave-masks) and [train](docs/train.md).\n\n"
                 "Tests: `../shared/` beside the repository enables the data tests; without it they skip.\n",
    "docs/architecture.md": "# Arch\n\n## 1. The layer\n\n### 1.4 Wave masks\n\n## 2. `WDAConfig`: names\n"
                            "\n## Repeated\n\n## Repeated\n\n[self](#2-wdaconfig-names) [second](#repeated-1)\n",
    "docs/train.md": "# Train\n\nBack to the [README](../README.md), [figure](img/a.png).\n\n"
                     "```bash\n# a comment, not a heading\nlink [in code](missing.md)\n```\n",
    "docs/img/a.png": b"\x89PNG\r\n\x1a\n\0\0 DESIGN",  # binary: not read
    "src/pkg.egg-info/PKG-INFO": "a build output holding a copy of an old README: DESIGN, ../shared\n",
    "src/pkg/mod.py": '"""The mixer (docs/architecture.md §1.4, §1 and docs/architecture.md §1-2)."""\n',
}


@pytest.mark.parametrize("name,content,found", [
    ("src/pkg/a.py", '"""As DESIGN §3 says."""\n', "src/pkg/a.py:1: names 'DESIGN'"),
    ("docs/train.md", "# Train\n\nRun on `../shared/data/x.txt`; it is skipped otherwise.\n",
     "docs/train.md:3: names '../shared'"),  # allowed only in the test and benchmark instructions
    ("README.md", "# Title\n\nData in `../shared/data`.\n", "README.md:3: names '../shared'"),  # no word on skipping
    ("docs/evaluate.md", "# Eval\n\nline one\nwith /work/shared/data/wiki.raw\n", "docs/evaluate.md:4: names '/work/'"),
    ("src/pkg/b.py", "CACHE = '/home/me/.cache'\n", "src/pkg/b.py:1: names '/home/'"),
])
def test_outside_references_are_found(tmp_path, name, content, found):
    root = write(tmp_path, GOOD)
    assert outside_references(root) == []
    write(root, {name: content})
    assert outside_references(root) == [found]


@pytest.mark.parametrize("link,found", [
    ("[x](missing.md)", "missing.md does not exist"),
    ("[x](architecture.md#15-no-such-section)", "has no heading #15-no-such-section"),
    ("[x](#no-heading-here)", "has no heading #no-heading-here"),
    ("[x](../../outside.md)", "leaves the repository"),
    ("![fig](img/missing.png)", "img/missing.png does not exist"),
])
def test_broken_links_are_found(tmp_path, link, found):
    root = write(tmp_path, GOOD)
    assert broken_links(root) == []
    write(root, {"docs/page.md": f"# Page\n\ntext {link} and `[code](not-a-link.md)`\n"})
    (problem,) = broken_links(root)
    assert problem.startswith("docs/page.md:3: ") and problem.endswith(found)


def test_broken_section_references_are_found(tmp_path):
    root = write(tmp_path, GOOD)
    assert broken_section_refs(root) == []
    write(root, {"src/pkg/c.py": "# see docs/architecture.md §1.5 and docs/architecture.md §1.4-3\n"})
    assert broken_section_refs(root) == ["src/pkg/c.py:1: no section 1.5", "src/pkg/c.py:1: no section 3"]


@pytest.mark.parametrize("heading,anchor", [
    ("1. The layer", "1-the-layer"),
    ("1.4 Wave masks", "14-wave-masks"),
    ("Leak audit: how much pooled routing flatters its own loss (issue 4, item 7)",
     "leak-audit-how-much-pooled-routing-flatters-its-own-loss-issue-4-item-7"),
    ("With `transformers.Trainer` instead", "with-transformerstrainer-instead"),
    ("Device check: one GPU (issue 6) — awaits hardware", "device-check-one-gpu-issue-6--awaits-hardware"),
    ("LoRA on the teacher's q/k/v/o", "lora-on-the-teachers-qkvo"),
    ("`toeplitz_path` and **bold**", "toeplitz_path-and-bold"),
])
def test_slugs_follow_github(heading, anchor):
    assert slug(heading) == anchor
