"""Model handle and the shipped counting organism."""
