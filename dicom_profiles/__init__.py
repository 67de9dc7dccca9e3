"""Data, not code: the TOML files in this folder say what the node accepts and how it reads body parts."""
