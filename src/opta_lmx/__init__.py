"""Opta-LMX: local LLM server behind the OpenAI HTTP API, one supervised process per model."""

__version__ = "0.1.0"
