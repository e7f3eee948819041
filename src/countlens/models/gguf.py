"""GGUF files as a model source: dequantized once into a cached Hugging Face folder.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`, through the `gguf`
package) by dequantizing every tensor, which takes ~30 s for a 135 M model on two cores,
mostly the tokenizer conversion. A model loaded that way refuses `save_pretrained`, so its
state dict is copied into a fresh model of the same class (without the GGUF
`quantization_config`) and saved as a normal folder. The folder is keyed by the GGUF's sha256
and the transformers version, built in a temporary sibling and renamed into place when
complete, so a half-written entry is never used and the second load takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from countlens.errors import InputError

MARKER = "countlens-gguf.json"


def cache_root() -> Path:
    """`COUNTLENS_CACHE`/models, else ~/.cache/countlens/models."""
    base = os.environ.get("COUNTLENS_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "countlens") / "models"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_cached(path: Path) -> str:
    """The file's sha256, remembered beside the cache by (path, size, mtime) so a load does not rehash."""
    st = path.stat()
    memo = cache_root() / "gguf-hashes.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = sha256_file(path)
    known[key] = digest
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(memo)
    except OSError:
        pass  # a read-only cache still works, it only rehashes
    return digest


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file a path names: the file itself, or the single .gguf in a folder without config.json."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise InputError(f"folder '{p}' holds {len(files)} .gguf files ({', '.join(f.name for f in files)}); "
                             "pass the file itself")
    return None


def cache_dir_for(gguf: Path, digest: str | None = None) -> Path:
    import transformers

    digest = digest or _hash_cached(gguf)
    key = hashlib.sha256(f"{digest}:{transformers.__version__}".encode()).hexdigest()[:12]
    return cache_root() / f"{gguf.stem}-{key}"


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).exists()


def convert(gguf: str | Path, *, log=None) -> Path:
    """The cached Hugging Face folder for a GGUF file, converting it the first time."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise InputError(f"no such GGUF file '{gguf}'")
    digest = _hash_cached(gguf)
    out = cache_dir_for(gguf, digest)
    if is_converted(out):
        return out
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise InputError("reading a .gguf file needs the gguf package: pip install gguf") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log:
        log(f"converting {gguf.name} to a Hugging Face folder once (cached in {out.parent})")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot read GGUF file '{gguf}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({
            "gguf": str(gguf), "sha256": digest, "size": gguf.stat().st_size,
            "transformers": transformers.__version__, "dtype": "float32",
            "note": "dequantized from the GGUF file; weights carry its quantization error"}, indent=1))
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not is_converted(out):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
