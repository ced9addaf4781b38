"""compresskit command line (installed as compresskit.cli)."""
