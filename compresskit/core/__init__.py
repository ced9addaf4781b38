"""compresskit.core"""
