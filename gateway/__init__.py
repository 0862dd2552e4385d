"""parrot-gateway: an OpenAI-compatible gateway with semantic variables."""

__version__ = "0.1.0"
