"""plane.executors."""
