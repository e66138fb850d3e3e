"""Test helpers: a Hub-compatible HTTP server on loopback (see :mod:`hubedit.testing.hub_server`)."""

from .hub_server import HubServer

__all__ = ["HubServer"]
