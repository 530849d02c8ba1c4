"""Token conventions shared by data, models and training: the ignore index.

One name for it, so that a loss, a batch builder and a model agree on what "no target here" means.
"""
from __future__ import annotations

IGNORE_INDEX = -100
"""Target / label value that takes no loss (torch's `cross_entropy` default `ignore_index`)."""

