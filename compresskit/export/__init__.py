"""compresskit.export"""
