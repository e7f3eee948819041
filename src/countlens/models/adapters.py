"""A LoRA adapter merged into its base model, cached as a plain Hugging Face folder.

The shipped `smollm2-135m-count` adapter (peft format, a few MB) is merged into the installed
base once (`merge_and_unload`) and saved under the countlens cache, keyed by the base folder,
the adapter's bytes and the transformers version; built in a temporary sibling and renamed into
place, like GGUF conversions, so every stage then loads an ordinary folder with plain transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MERGED_MARKER = "countlens-merged.json"


def merged_dir(base_folder: Path, adapter: Path, name: str) -> Path:
    import transformers

    from countlens.models.gguf import cache_root

    h = hashlib.sha256(f"{base_folder.name}:{transformers.__version__}".encode())
    for f in sorted(adapter.glob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return cache_root() / f"{name}-{h.hexdigest()[:12]}"


def merge(base_folder: str | Path, adapter: str | Path, name: str, *, log=None) -> Path:
    """The cached folder of `adapter` merged into the base model, built the first time."""
    base_folder, adapter = Path(base_folder), Path(adapter)
    out = merged_dir(base_folder, adapter, name)
    if (out / MERGED_MARKER).exists():
        return out
    if log:
        log(f"merging the {name} adapter into {base_folder.name} once (cached in {out.parent})")
    return build_merged(base_folder, adapter, out)


def build_merged(base_folder: Path, adapter: Path, out: Path, *, log=None) -> Path:
    """Write base + adapter (merge_and_unload) to `out`, atomically: a temporary sibling renamed into place."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(str(base_folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if (adapter / "countlens.json").exists():  # the native template and how the adapter was made
            shutil.copy(adapter / "countlens.json", tmp / "countlens.json")
        from countlens.models.gguf import MARKER

        if (base_folder / MARKER).exists():  # the weights still carry the base GGUF's quantization error
            shutil.copy(base_folder / MARKER, tmp / MARKER)
        (tmp / MERGED_MARKER).write_text(json.dumps({"base": str(base_folder), "adapter": str(adapter)}, indent=1))
        os.chmod(tmp, 0o755)
        if out.exists():  # a rerun of `countlens finetune` replaces its own merged folder, nothing else
            if not (out / MERGED_MARKER).exists():
                from countlens.errors import InputError

                raise InputError(f"{out} exists and is not a merged model folder; move it away")
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not (out / MERGED_MARKER).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
