"""Data: lexicon, templates, balanced generation, audit/import, token-aligned minimal pairs."""
