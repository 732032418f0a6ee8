"""hardmask: two-stage Vision Transformers with hard attention masks, as a reproducible study."""

__version__ = "0.1.0"
