"""compresskit.integrations"""
