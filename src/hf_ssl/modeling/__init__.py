"""Shared modeling core (backbones, heads, masks, losses, EMA, outputs, base classes) and one sub-package
per method."""
