"""Mediator routes (placeholder until the LTFU workflow lands)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
