"""(being written: see tunelab/serve/__init__.py)"""
from __future__ import annotations

from fastapi import APIRouter


def router(state) -> APIRouter:
    return APIRouter()
