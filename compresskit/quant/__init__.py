"""compresskit.quant"""
