"""compresskit.kernels"""
