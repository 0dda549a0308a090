"""plane: session backends on trio, driven by an append-only event log."""

__version__ = "0.1.0"
