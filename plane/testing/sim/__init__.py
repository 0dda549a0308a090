"""The deterministic simulator of issue #17 (see :mod:`plane.testing.simulate`)."""
