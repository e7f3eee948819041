"""A word-level tokenizer for the organism, built with `tokenizers` and saved in HF format.

Words, digits and punctuation are single tokens, so `(` and each digit are one token and the
formatted prompt followed by `(` tokenises as the prompt's tokens plus `(`.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from countlens.data.lexicon import BUILTIN as LEXICONS, load_lexicon
from countlens.data.templates import builtin_templates

BOS, EOS, PAD, UNK = "<s>", "<|end|>", "<pad>", "<unk>"
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
EXTRA_WORDS = ["Word", "yes", "no", "none"]  # auxiliary membership and naming examples
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PUNCT = list("()[]{}<>.,:;!?'\"-_/\\|+*=#%&@$^~`")


def vocabulary() -> list[str]:
    words: dict[str, None] = {}
    for t in builtin_templates().values():
        for piece in re.findall(r"\w+", t.prompt.replace("{category}", "").replace("{words}", "")):
            if not piece.isdigit():
                words[piece] = None
    for name in LEXICONS:
        lex = load_lexicon(name)
        words.update(dict.fromkeys(lex.categories))
        words.update(dict.fromkeys(lex.words))
    words.update(dict.fromkeys(EXTRA_WORDS))
    return [PAD, UNK, BOS, EOS, *ROLES, *PUNCT, *map(str, range(10)), *sorted(words)]


def build_tokenizer():
    """A transformers PreTrainedTokenizerFast with the chat template set."""
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Fuse()  # "(", "3", ")" -> "(3)"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, additional_special_tokens=ROLES,
                                   padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast
