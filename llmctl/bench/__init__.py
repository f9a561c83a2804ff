"""Benchmarks: the engine (llama.cpp through llama-cpp-python, measured as llama-bench does) and a
running OpenAI-compatible endpoint (HTTP streaming). Core only: results are frozen dataclasses,
progress goes through a callback, rendering lives in `report`, pass/fail in `gates`.
"""
