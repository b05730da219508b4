"""Network modules (DiT, audio encoder, frame packer, VAE). They call ops, never a backend."""
from .dit import CausalWanS2V

__all__ = ["CausalWanS2V"]
