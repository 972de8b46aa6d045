"""FHIR REST routes (placeholder until the store lands)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
