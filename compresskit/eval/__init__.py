"""compresskit.eval"""
