"""Generating text with a model behind an OpenAI-compatible server (vLLM on GPUs in
production, llama.cpp's llama-server in tests): the client backend and the stages that
use it (issue 15: caption generation)."""
