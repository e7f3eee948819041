"""Loading from a local folder or the hub, with one clear line when the hub cannot be reached."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from countlens.errors import InputError


def from_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call `loader.from_pretrained`, turning hub/network failures into one InputError line."""
    try:
        return loader(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        if Path(name_or_path).exists():
            raise InputError(f"cannot load {what} from folder '{name_or_path}': {str(e).splitlines()[0]}") from None
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise InputError(
            f"cannot load {what} '{name_or_path}': it is not a local folder and the hub could not be reached"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}; download it where there is network "
            f"(huggingface-cli download {name_or_path} --local-dir DIR) and pass the folder path instead"
        ) from None


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a folder, a hub name, or the shipped organism."""
    from transformers import AutoTokenizer

    from countlens.models.registry import resolve

    path = resolve(name_or_path)
    return from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer")
