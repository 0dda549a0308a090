"""The key invariant read back from a log (shared with the simulator: plane.testing.keyhold)."""

from plane.testing.keyhold import overlaps

__all__ = ["overlaps"]
