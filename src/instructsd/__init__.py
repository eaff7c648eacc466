"""instructsd: instruction-tune Stable Diffusion to follow image-editing instructions."""

__version__ = "0.1.0"
