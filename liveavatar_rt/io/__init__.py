"""Checkpoint loading, LoRA merge, media in/out."""
from .checkpoint import dit_shards, load_dit, published_config, read_safetensors
from .lora import merge_lora_weight, parse_lora

__all__ = ["dit_shards", "load_dit", "merge_lora_weight", "parse_lora", "published_config", "read_safetensors"]
