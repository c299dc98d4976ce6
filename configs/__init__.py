"""Packaged OmegaConf YAML configurations."""
