"""Thin integrations: a diffusers scheduler and a k-diffusion-style sampling function."""
