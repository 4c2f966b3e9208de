"""The frozen downstream model: T5 v1.1 with per-example PEFT slots."""

from hyperflax.model.config import PRESETS, T5Config, preset
from hyperflax.model.transformer import T5, abstract_params, fuse, init_params

__all__ = ["PRESETS", "T5", "T5Config", "abstract_params", "fuse", "init_params", "preset"]
