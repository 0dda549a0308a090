"""plane.testing."""
