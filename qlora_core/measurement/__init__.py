"""What a run measures and the row it records: memory and parameters (`memory`), FLOPs and MFU
(`flops`), perplexity (`quality`), bitsandbytes' quantization itself (`quantization`), the
`Result` row (`result`) and what a row derives from its own measurements (`row_summary`).
"""
