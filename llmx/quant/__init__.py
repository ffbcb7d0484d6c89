"""Post-training quantization, llmx's own (Paddle's quant kernels have no CPU implementation and
paddleslim's GPTQ crashes on CPU; see DESIGN.md "Quantization"): round-to-nearest, GPTQ, AWQ,
SmoothQuant, int8 KV cache and fp8 e4m3, checked against the papers' formulas.

llmx.quant.formats   numpy: int8/int4 round-to-nearest (per channel or per group), int4 packing, e4m3
llmx.quant.algorithms  GPTQ, AWQ scale search, SmoothQuant alpha search (numpy, per layer)
llmx.quant.checkpoint  the quantized checkpoint (packed ints + scales + quant_config.json) and its loader,
                     which llmx.engine.model.build_model calls for a directory holding quant_config.json
"""
QUANT_FILE = "quant_config.json"
