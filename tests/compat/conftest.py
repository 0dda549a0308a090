"""The compatibility suite reuses the API harness (a real socket over a supervisor
with the fake executor)."""

from tests.api.conftest import api

__all__ = ["api"]
