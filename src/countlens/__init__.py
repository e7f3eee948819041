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

__all__ = [
    "InputError",
    "Lexicon",
    "Template",
    "build_pairs",
    "generate_dataset",
    "load_lexicon",
    "load_template",
    "validate_dataset",
]
