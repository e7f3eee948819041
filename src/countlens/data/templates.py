"""Prompt templates. The answer prefix `(` and the completion `(N)` belong to the template,
so every stage knows where the digit is read (after the prefix) without guessing."""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from countlens.data._yaml import Located, load_located
from countlens.errors import InputError

DEFAULT = "seed-v1"
FIELDS = ("prompt", "separator", "answer_prefix", "completion")


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str
    separator: str = " "
    answer_prefix: str = "("
    completion: str = "({n})"

    def render(self, category: str, words: list[str]) -> str:
        return self.prompt.replace("{category}", category).replace("{words}", self.separator.join(words))

    def expected_completion(self, n: int) -> str:
        return self.completion.replace("{n}", str(n))

    def to_dict(self) -> dict:
        return asdict(self)


def _placeholders(text: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(text.replace("{{", "").replace("}}", "")) if f is not None]


def parse_template(name: str, loc: Located, file: str) -> Template:
    if not isinstance(loc.value, dict):
        raise InputError("expected a mapping with 'prompt'", file=file, line=loc.line)
    data = loc.value
    unknown = set(data) - set(FIELDS) - {"name"}
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)}", file=file, line=loc.line)
    for key in FIELDS:
        if key in data and not isinstance(data[key].value, str):
            raise InputError("must be a string", file=file, line=data[key].line, field=key)
    if "prompt" not in data:
        raise InputError("missing", file=file, line=loc.line, field="prompt")
    t = Template(name=str(data["name"].value) if "name" in data else name,
                 **{k: data[k].value for k in FIELDS if k in data})
    line = lambda k: data[k].line if k in data else loc.line  # noqa: E731
    ph = sorted(_placeholders(t.prompt))
    if ph != ["category", "words"]:
        raise InputError(f"must hold {{category}} and {{words}} once each, found {ph}", file=file,
                         line=line("prompt"), field="prompt")
    if _placeholders(t.completion) != ["n"]:
        raise InputError("must hold {n} once, e.g. '({n})'", file=file, line=line("completion"), field="completion")
    if not t.answer_prefix or not t.completion.startswith(t.answer_prefix):
        raise InputError(f"completion '{t.completion}' must start with the answer prefix '{t.answer_prefix}'",
                         file=file, line=line("answer_prefix"), field="answer_prefix")
    return t


def builtin_templates() -> dict[str, Template]:
    ref = resources.files("countlens.data.resources").joinpath("templates.yaml")
    with resources.as_file(ref) as p:
        loc = load_located(p)
    return {name: parse_template(name, v, "templates.yaml") for name, v in loc.value.items()}


def load_template(name_or_path: str | Path | Template | None = None) -> Template:
    """A built-in template by name (`seed-v1`, `short`, `fewshot`) or a YAML/JSON file."""
    if isinstance(name_or_path, Template):
        return name_or_path
    name_or_path = str(name_or_path or DEFAULT)
    builtins = builtin_templates()
    if name_or_path in builtins:
        return builtins[name_or_path]
    if not Path(name_or_path).exists():
        raise InputError(f"no built-in template or file named '{name_or_path}' (built-ins: {', '.join(builtins)})")
    return parse_template(Path(name_or_path).stem, load_located(name_or_path), name_or_path)


def template_from_dict(d: dict) -> Template:
    """Rebuild a template stored in a result or model folder (no validation needed)."""
    return Template(**{k: d[k] for k in ("name", *FIELDS) if k in d})


def word_char_span(template: Template, category: str, words: list[str], index: int) -> tuple[int, int]:
    """Character span of words[index] inside template.render(category, words)."""
    head = template.prompt.split("{words}")[0].replace("{category}", category)
    start = len(head) + sum(len(w) + len(template.separator) for w in words[:index])
    return start, start + len(words[index])


def category_char_span(template: Template, category: str, words: list[str]) -> tuple[int, int]:
    """Character span of the category name inside template.render(category, words)."""
    head = template.prompt.split("{category}")[0].replace("{words}", template.separator.join(words))
    return len(head), len(head) + len(category)
