"""The counting organism: a small Llama trained here to count, shipped as the default model."""
