"""Data sets embedded in perpclip (see SOURCE.md in this folder)."""
