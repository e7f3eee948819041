"""countlens: how does a language model count?

The Python API mirrors the CLI: each command is one function here.
"""

from countlens.data.generate import generate_dataset
from countlens.data.lexicon import Lexicon, load_lexicon
from countlens.data.templates import Template, load_template
from countlens.data.validate import validate_dataset
from countlens.errors import InputError

__version__ = "0.1.0"


def plot(result, out_dir="."):
    """Draw a stage result's figures into out_dir (also `result.plot(out_dir)`); returns their paths."""
    from countlens.report.figures import plot as _plot

    return _plot(result, out_dir)


def _bind_plot() -> None:
    # Figures live in report/, results in the bottom-layer countlens.results: the face joins them.
    from countlens.report.figures import PLOTTABLE

    def method(self, out_dir="."):
        return plot(self, out_dir)

    for cls in PLOTTABLE:
        cls.plot = method


_bind_plot()

_LAZY = {"run_bench": "countlens.bench.runner", "collect_activations": "countlens.interp.acts",
         "run_probes": "countlens.interp.probes",
         "run_patching": "countlens.interp.patching", "run_steering": "countlens.interp.steering",
         "run_study": "countlens.study.run", "run_analyses": "countlens.study.analyses", "build_config": "countlens.study.config",
         "StudyConfig": "countlens.study.config", "load_model": "countlens.models.handle",
         **{o: "countlens.options" for o in ("PatchOptions", "SteerOptions", "ProbeOptions", "ActsOptions",
                                            "BenchOptions", "DataOptions", "PairsOptions", "AnalysesOptions",
                                            "LoadOptions")}}


def build_pairs(data, tokenizer, n: int, out, **kwargs) -> dict:
    """Write `n` token-aligned minimal pairs to `out`; `tokenizer` is a model name, a folder or a tokenizer."""
    from countlens.data.pairs import build_pairs as _build

    if isinstance(tokenizer, str):
        from countlens.models.hub import load_tokenizer

        kwargs.setdefault("tokenizer_name", tokenizer)
        tokenizer = load_tokenizer(tokenizer)
    return _build(data, tokenizer, n, out, **kwargs)


def __getattr__(name: str):
    # Lazy, so importing a light submodule (e.g. in a probe worker process) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), "load" if name == "load_model" else name)
    raise AttributeError(name)


__all__ = [
    "InputError",
    "PatchOptions",
    "SteerOptions",
    "ProbeOptions",
    "StudyConfig",
    "build_config",
    "load_model",
    "run_patching",
    "run_steering",
    "run_study",
    "run_analyses",
    "Lexicon",
    "Template",
    "build_pairs",
    "collect_activations",
    "generate_dataset",
    "load_lexicon",
    "load_template",
    "run_probes",
    "run_bench",
    "plot",
    "validate_dataset",
]
