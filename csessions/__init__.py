"""Drop-in Django session engines whose hot paths run in C (``csessions._core``)."""

__version__ = "0.1.0"
