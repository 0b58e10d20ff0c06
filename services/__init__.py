"""slmserve: an OpenAI-compatible serving platform for small language models on Ray Serve + vLLM."""

__version__ = "0.1.0"
