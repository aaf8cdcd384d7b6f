"""Imagen ablation lab: the library behind train.py (Saharia et al., 2022, arXiv:2205.11487)."""

from imagen.config import register_resolvers

register_resolvers()
