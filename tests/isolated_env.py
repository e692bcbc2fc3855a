"""A fresh virtual environment that holds only some installed distributions and their dependencies.

Installing torch and transformers into a new venv with pip takes 40 s or more on these machines
(and 1.2 GB); linking the already-installed files of exactly those distributions (and what they
require) into a new venv's site-packages takes about a second and is as strict about what is
importable: nothing else from the parent environment, in particular not ``wavedensity``, is there.
"""

import subprocess
import sys
import textwrap
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# What a user of the hub has: torch, transformers, safetensors and tokenizers (and what they require).
HUB_USER_PACKAGES = ["torch", "transformers", "safetensors", "tokenizers"]

# Runs in the isolated venv with the arguments EXPORT IDS_JSON OUT: load the export as a hub user
# would, then record logits, greedy generations with and without the cache, and token ids in OUT.
# A test may append code that uses ``model``, ``prompt`` and ``out``.
HUB_USER_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert importlib.util.find_spec("wavedensity") is None, "wavedensity is importable here"
    export, ids, out = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(export, trust_remote_code=True)  # transformers 5 reads config.json
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        prompt = dict(input_ids=ids[:, :6], attention_mask=torch.ones_like(ids[:, :6]))
        cached = model.generate(**prompt, max_new_tokens=20, do_sample=False)
        uncached = model.generate(**prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    save_file({"logits": logits, "cached": cached, "uncached": uncached,
               "encoded": tokenizer("the quick fox", return_tensors="pt").input_ids}, out)
""")


def dependency_closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The named distributions and, recursively, the ones they require (extras not included)."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        found[key] = metadata.distribution(name)
        for line in found[key].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def make_isolated_venv(path: Path, names: list[str]) -> Path:
    """A venv at ``path`` whose site-packages links the files of ``names`` and their dependencies;
    returns its python executable."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in dependency_closure(names).values():
        if dist.files is None:
            raise RuntimeError(f"{dist.metadata['Name']}: no RECORD of installed files to link")
        tops = {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            link = site / top
            if not link.exists():
                link.symlink_to(Path(dist.locate_file(top)).resolve())
    return python


def run_isolated(python: Path, script: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run ``script`` with the venv's python, no PYTHONPATH and no user site-packages."""
    clean = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    clean["PYTHONNOUSERSITE"] = "1"
    return subprocess.run([str(python), "-c", script, *args], cwd=cwd, env=clean, capture_output=True, text=True,
                          check=False, timeout=300)


if __name__ == "__main__":  # make one by hand: python tests/isolated_env.py DIR torch transformers ...
    print(make_isolated_venv(Path(sys.argv[1]), sys.argv[2:]))
