"""Structured configs: one schema per task, YAML files with ``base:`` inheritance, dotted overrides."""

from survival3d.config.loader import CONFIG_ROOT, config_to_yaml, load_config, parse_overrides, save_config
from survival3d.config.schema import ExperimentConfig

__all__ = ["CONFIG_ROOT", "ExperimentConfig", "config_to_yaml", "load_config", "parse_overrides", "save_config"]
