"""plane.api."""
