"""The package version, in a module of its own: subpackages read it from here, never from the ``hubedit``
facade (which imports them)."""

__version__ = "0.1.0"
