"""Helpers for tests that start and kill processes."""

from __future__ import annotations


def running(process, psutil) -> bool:
    """Alive and not a zombie (an orphan that died is a zombie until whoever adopted it reaps it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
