"""countlens: how does a language model count?

The Python API mirrors the CLI: each command is one function here.
"""

from countlens.data.generate import generate_dataset
from countlens.data.lexicon import Lexicon, load_lexicon
from countlens.data.pairs import build_pairs
from countlens.data.templates import Template, load_template
from countlens.data.validate import validate_dataset
from countlens.errors import InputError

__version__ = "0.1.0"

_LAZY = {"run_bench": "countlens.bench.runner", "collect_activations": "countlens.interp.acts",
         "run_probes": "countlens.interp.probes",
         "run_patching": "countlens.interp.patching", "run_steering": "countlens.interp.steering",
         "run_study": "countlens.study.run", "build_config": "countlens.study.config",
         "StudyConfig": "countlens.study.config", "load_model": "countlens.models.handle"}


def __getattr__(name: str):
    # Lazy, so importing a light submodule (e.g. in a probe worker process) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), "load" if name == "load_model" else name)
    raise AttributeError(name)


__all__ = [
    "InputError",
    "StudyConfig",
    "build_config",
    "load_model",
    "run_patching",
    "run_steering",
    "run_study",
    "Lexicon",
    "Template",
    "build_pairs",
    "collect_activations",
    "generate_dataset",
    "load_lexicon",
    "load_template",
    "run_probes",
    "run_bench",
    "validate_dataset",
]
