"""Quantization: RTN, GPTQ, AWQ, SmoothQuant, LLM.int8 and dynamic int8 (see ``config.py``).

Kept light: importing the package imports no torch; the methods live in their own modules.
"""
