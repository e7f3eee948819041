"""The model handle every stage uses: tokenizer, model, decoder blocks, answer tokens, encoding.

The shipped organism loads through exactly this path, like `Qwen/Qwen2.5-1.5B-Instruct`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from countlens.data.templates import Template, load_template, template_from_dict
from countlens.errors import InputError
from countlens.models import devices, gguf, prompts
from countlens.models.hub import from_pretrained
from countlens.models.registry import preflight, read_meta, resolve

# Where decoder blocks live, by architecture family (attribute path from the CausalLM).
BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
               "model.decoder.layers", "transformer.blocks")


def find_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks, found generically (Llama, Qwen2, Mistral, Gemma, GPT-2, GPT-NeoX, OPT)."""
    for path in BLOCK_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return list(obj)
    raise InputError(f"cannot find the decoder blocks of {type(model).__name__}: supported layouts are "
                     f"{', '.join(BLOCK_PATHS)}")


@dataclass
class ModelHandle:
    model: Any
    tokenizer: Any
    blocks: list[torch.nn.Module]
    name: str
    path: str
    prompt_format: str
    native_template: Template | None = None
    info: dict = field(default_factory=dict)
    hooks: Any = None            # the hook backend (models.hooks.backend): None = PyTorch hooks
    # score-mode log-probs computed as a by-product of generation (generation.greedy_generate's
    # `score`), {formatted text + answer prefix: (answer token ids, log-probs)}: a later score-mode
    # run of the same prompts on this handle reads them instead of running the same forward again
    scored: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return devices.input_device(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def template(self, override: str | Template | None = None) -> Template:
        """--template if given, else the model's native template, else seed-v1."""
        if override is not None:
            return load_template(override)
        return self.native_template or load_template("seed-v1")

    def format(self, prompt: str, system: str | None = None) -> str:
        return prompts.format_prompt(self.tokenizer, prompt, self.prompt_format, system)

    def encode_text(self, text: str) -> list[int]:
        return prompts.encode(self.tokenizer, text)

    def answer_tokens(self, k_max: int, answer_prefix: str = "(") -> list[list[int]]:
        """Token ids of each answer 0..k_max as it follows the answer prefix (several for 10+)."""
        base_text = self.format("Type: fruit\nList: apple\nAnswer: ") + answer_prefix
        base = self.encode_text(base_text)
        out = []
        for n in range(k_max + 1):
            ids = self.encode_text(base_text + str(n))
            if ids[:len(base)] != base or len(ids) == len(base):
                raise InputError(f"answer '{n}' does not tokenise as a continuation of '{answer_prefix}' "
                                 f"for {self.name}")
            out.append(ids[len(base):])
        return out

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)

    @property
    def stop_ids(self) -> list[int]:
        """End-of-turn ids: the tokenizer's EOS and the generation config's eos ids."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos])
        return sorted(i for i in ids if i is not None)


@lru_cache(maxsize=None)
def _has_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def keep_logits(model: torch.nn.Module, n: int = 1) -> dict:
    """Forward kwargs asking for the last `n` positions' logits only, where the model supports it:
    a 150k-token vocabulary makes full [batch, seq, vocab] logits ~15 % of a 1.5 B model's forward."""
    return {"logits_to_keep": n} if _has_logits_to_keep(type(devices.hf_model(model))) else {}


def forward_reduced(handle: "ModelHandle", reduce: Any, **kwargs: Any) -> torch.Tensor:
    """reduce(last-position logits [B, V]) of one forward. Under the nnsight engine the reduction runs
    inside the trace (on NDIF with --remote), so a request returns [B, few] numbers, not [B, vocab]."""
    kwargs |= keep_logits(handle.model)
    if getattr(handle.model, "reduces", False):
        return handle.model(**kwargs, reduce=reduce)
    return reduce(handle.model(**kwargs).logits[:, -1])


def pad_left(seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}


def weights_hash(path: str) -> str:
    """A short hash of a local model folder's weights (identifies the model in result stores)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin"))) if p.is_dir() else []
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16] if files else "remote"


def best_device() -> str:
    """CUDA, then Apple's MPS, then the CPU: the default device of every stage."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def parse_max_memory(text: str | None) -> dict | None:
    """"0=20GiB,1=20GiB,cpu=64GiB" -> accelerate's max_memory {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}."""
    if not text:
        return None
    out: dict[Any, str] = {}
    for part in text.split(","):
        dev, sep, size = part.strip().partition("=")
        if not sep or not size.strip():
            raise InputError(f"bad --max-memory entry '{part}': write DEVICE=SIZE, e.g. 0=20GiB,cpu=64GiB")
        out[int(dev) if dev.strip().isdigit() else dev.strip()] = size.strip()
    return out


def load(name_or_path: str = "organism", *, device: str | None = None, dtype: str | torch.dtype | None = None,
         device_map: str | None = None, max_memory: str | dict | None = None, offload_folder: str | None = None,
         engine: str = "native", remote: bool = False, prompt_format: str = "auto", log=None) -> ModelHandle:
    """Load tokenizer + model from `organism`, a named model, a folder, a .gguf file or a hub name.

    device_map / max_memory / offload_folder go to accelerate's dispatch (`device_map="auto"` splits
    the layers over GPUs, CPU and disk). engine "nnsight" runs every forward as an nnsight trace
    (models.nnsight_engine); `remote` runs them on NDIF, without loading weights here."""
    from transformers import AutoModelForCausalLM

    from countlens.models.hub import load_tokenizer

    if engine not in ("native", "nnsight"):
        raise InputError(f"unknown engine '{engine}' (native, nnsight)")
    if remote:
        if engine != "nnsight":
            raise InputError("--remote runs on NDIF through nnsight: add --engine nnsight")
        return _load_remote(name_or_path, prompt_format)
    preflight(name_or_path)
    path = resolve(name_or_path, log=log)
    tokenizer = load_tokenizer(path)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
                 "auto": "auto"}.get(dtype) or _bad_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    elif max_memory or offload_folder:
        raise InputError("--max-memory and --offload-folder go with --device-map (e.g. --device-map auto)")
    model = from_pretrained(AutoModelForCausalLM.from_pretrained, path, "model", **kwargs)
    if not device_map:
        model.to(device or best_device())
    model.eval()
    native = None
    info = read_meta(path)
    if (Path(path) / gguf.MARKER).exists():
        info["gguf"] = json.loads((Path(path) / gguf.MARKER).read_text())
    if "template" in info:
        native = template_from_dict(info["template"]) if isinstance(info["template"], dict) \
                else load_template(info["template"])
    fmt = prompts.resolve_format(tokenizer, prompt_format)
    handle = ModelHandle(model=model, tokenizer=tokenizer, blocks=find_blocks(model), name=name_or_path,
                         path=path, prompt_format=fmt, native_template=native, info=info)
    if engine == "nnsight":
        from countlens.models import nnsight_engine

        handle.model = nnsight_engine.local(model, tokenizer, handle.blocks)
        handle.hooks = nnsight_engine.NNSIGHT
        handle.info = {**info, "engine": "nnsight"}
    return handle


def _load_remote(name: str, prompt_format: str) -> ModelHandle:
    """A handle on a model NDIF hosts: nnsight's meta-device copy here, every forward a request."""
    from countlens.models import nnsight_engine

    requests = gguf.cache_root().parent / "ndif" / name.replace("/", "--")   # finished requests (resume)
    model, tokenizer = nnsight_engine.remote(name, find_blocks, cache_dir=requests)
    fmt = prompts.resolve_format(tokenizer, prompt_format)
    return ModelHandle(model=model, tokenizer=tokenizer, blocks=model.blocks, name=name, path=name,
                       prompt_format=fmt, info={"engine": "nnsight", "remote": True}, hooks=nnsight_engine.NNSIGHT)


def _bad_dtype(d: str):
    raise InputError(f"unknown dtype '{d}' (float32, bfloat16, float16, auto)")
