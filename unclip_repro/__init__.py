"""unclip-repro: unCLIP / DALL-E 2 (Ramesh et al. 2022) that trains and is measured on a CPU."""

__version__ = "0.1.0"
