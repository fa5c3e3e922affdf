"""Questions to the person at the terminal (only asked when there is one)."""

from __future__ import annotations


def ask_yes_no(question: str) -> bool:
    """Ask a yes/no question on the terminal; anything but y/yes is no, and so is no input at all."""
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
