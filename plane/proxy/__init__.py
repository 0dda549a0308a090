"""plane.proxy."""
