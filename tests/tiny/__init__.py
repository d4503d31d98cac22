"""Tiny Wan models that see: a tiny Wan 2.1 VAE and DiT trained here on scikit-image's sample photographs
(see tests/tiny/README.md for the recipe, the licences and the commands)."""
