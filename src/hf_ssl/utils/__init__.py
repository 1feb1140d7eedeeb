"""Utilities shared across hf_ssl (plotting, ...)."""
