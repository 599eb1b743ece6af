"""Weight-only quantization to INT8 / INT4 / INT2 with packed weights (see README.md beside this file).

mobile-mm quantize --bits 2 --method gptq --out src/mobile_multimodal/weights/default/int2
MobileMultiModalLLM.from_pretrained("default", quantization="int2")
"""
