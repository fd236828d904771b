"""Shared fixtures: a synthetic cohort in the Sleep-EDF cassette layout."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sleep-edf"
