"""compresskit.models"""
