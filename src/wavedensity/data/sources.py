"""Reading examples from text files, folders, JSON Lines, JSON and Hugging Face datasets.

Every problem raises DataError naming the file (and line or row); no row is ever skipped silently.
Blank lines of a JSONL file are not rows, so passing over them loses nothing.
"""

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

from .default import default_corpus
from .errors import DataError, describe, located
from .examples import Example, row_to_example

TEXT_SUFFIXES = (".txt", ".md", ".raw")  # .raw: the WikiText files
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# datasets builders that read local files: hf:BUILDER:PATH[:SPLIT] passes PATH as data_files.
LOCAL_BUILDERS = ("json", "text", "csv", "parquet")
SPEC_HELP = ("expected a .txt/.md/.raw file or a folder of them, a .jsonl/.jsonl.gz/.json file, embedded[:train|:val], "
             "hf:NAME[:SUBSET]:SPLIT or hf:BUILDER:PATH[:SPLIT]")


def read_examples(spec: str | os.PathLike, *, text_field: str = "text",
                  assistant_only: bool = True) -> Iterator[Example]:
    """Examples from ``spec``, checked now and read lazily as iterated.

    ``spec``: a .txt/.md file (one example); a folder (each .txt/.md file under it, sorted, recursively;
    other files there are not text sources); a .jsonl/.jsonl.gz file or a .json list of rows, each
    row's format detected by its fields (see ``row_to_example``); ``hf:NAME[:SUBSET]:SPLIT``, a Hugging
    Face dataset streamed from the hub; ``hf:BUILDER:PATH[:SPLIT]``, local files streamed by a
    ``datasets`` builder (json, text, csv, parquet) through the same code; ``embedded`` (every play of
    the shipped corpus), ``embedded:train`` or ``embedded:val`` (its held-out plays).
    """
    if isinstance(spec, str) and spec.split(":")[0] == "embedded":
        split = spec.partition(":")[2] or None
        return iter(default_corpus(split))
    if isinstance(spec, str) and spec.startswith("hf:"):
        return _read_hf(spec, text_field, assistant_only)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder holds no {', '.join(TEXT_SUFFIXES)} files")
        return (_read_text_file(f) for f in files)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.name.endswith(JSONL_SUFFIXES):
        return _read_jsonl(path, text_field, assistant_only)
    if path.suffix == ".json":
        return _read_json(path, text_field, assistant_only)
    if path.suffix in TEXT_SUFFIXES:
        return iter([_read_text_file(path)])
    raise DataError(f"{path}: unknown source type ({SPEC_HELP})")


def _decode(data: bytes, where: Any, first_line: int = 1) -> str:
    """Strict UTF-8; a NUL byte means binary data (valid UTF-8, but never text anyone meant to train on)."""
    if b"\0" in data:
        line = first_line + data.count(b"\n", 0, data.index(b"\0"))
        raise DataError(f"{located(where, line)}: binary content (NUL byte), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise DataError(f"{located(where, line)}: not UTF-8 text (byte 0x{data[err.start]:02x})") from None


def _read_text_file(path: Path) -> Example:
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return Example(text, None)


def _to_example(row: Any, where: str, text_field: str, assistant_only: bool) -> Example:
    try:
        return row_to_example(row, text_field, assistant_only)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def _read_jsonl(path: Path, text_field: str, assistant_only: bool) -> Iterator[Example]:
    rows = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as lines:
            for lineno, raw in enumerate(lines, 1):
                line = _decode(raw, path, lineno)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{located(path, lineno)}: not JSON ({err.msg}, column {err.colno})") from None
                yield _to_example(row, located(path, lineno), text_field, assistant_only)
                rows += 1
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err})") from None
    if not rows:
        raise DataError(f"{path}: empty file (no JSON rows)")


def _read_json(path: Path, text_field: str, assistant_only: bool) -> Iterator[Example]:
    """A JSON file holding a list of rows (or one row object)."""
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{located(path, err.lineno)}: not JSON ({err.msg}, column {err.colno})") from None
    rows = data if isinstance(data, list) else [data]
    if not rows:
        raise DataError(f"{path}: empty list of rows")
    for index, row in enumerate(rows, 1):
        yield _to_example(row, f"{path}: row {index}", text_field, assistant_only)


def parse_hf_spec(spec: str) -> tuple[str, str | None, str, str | None]:
    """``hf:NAME[:SUBSET]:SPLIT`` or ``hf:BUILDER:PATH[:SPLIT]`` -> (name, subset, split, data_files)."""
    parts = spec.removeprefix("hf:").split(":")
    if parts[0] in LOCAL_BUILDERS and len(parts) in (2, 3) and all(parts):
        return parts[0], None, parts[2] if len(parts) == 3 else "train", parts[1]
    if parts[0] not in LOCAL_BUILDERS and len(parts) in (2, 3) and all(parts):
        return parts[0], parts[1] if len(parts) == 3 else None, parts[-1], None
    raise DataError(f"{spec}: malformed Hugging Face spec ({SPEC_HELP})")


def _read_hf(spec: str, text_field: str, assistant_only: bool) -> Iterator[Example]:
    """Stream a Hugging Face dataset (``allenai/c4``, ``HuggingFaceH4/ultrachat_200k``, ... or a local
    file through the json/text builders: the same code path either way)."""
    name, subset, split, data_files = parse_hf_spec(spec)
    if data_files is not None and not Path(data_files).exists():
        raise DataError(f"{spec}: {data_files}: no such file or directory")
    return _stream_hf(spec, name, subset, split, data_files, text_field, assistant_only)


def _stream_hf(spec: str, name: str, subset: str | None, split: str, data_files: str | None,
               text_field: str, assistant_only: bool) -> Iterator[Example]:
    import datasets  # here, not at module level: it takes a second to import and only hf: specs need it

    try:
        rows = iter(datasets.load_dataset(name, subset, split=split, data_files=data_files, streaming=True))
    except Exception as err:  # hub unreachable, unknown name/subset/split, unreadable files, ...
        raise DataError(f"{spec}: cannot load the dataset ({describe(err)})") from err
    for index in count(1):
        try:
            row = next(rows)
        except StopIteration:
            break
        except Exception as err:  # a malformed file surfaces here, while its block is parsed
            raise DataError(f"{spec}: cannot read past row {index - 1} ({describe(err)})") from err
        yield _to_example(row, f"{spec}: row {index}", text_field, assistant_only)
    if index == 1:  # the first next() already ended the stream
        raise DataError(f"{spec}: empty (no rows)")
