"""Checkpoint key-name tables (STYLE rule 5): one module per component layout."""
