"""Pretrained Llama-family models in and out of lcx: `python -m lcx.convert import|export`.

llama       the architecture record and the tensor mapping both directions share
hf_source   an HF model directory read (config.json, safetensors, tokenizer)
gguf_source a llama.cpp GGUF file read (dequantized, RoPE rows un-permuted, tokenizer rebuilt)
imported_run  either written as an lcx run directory
export      an lcx run written as an HF model directory
"""
