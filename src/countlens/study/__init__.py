"""The whole study in one command: config, stages, resumable runner."""
