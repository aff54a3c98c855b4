"""The HTTP front: OpenAI API on Starlette/hypercorn, forwarding to workers over ZeroMQ.

Never imports mlx or llama_cpp: it stays small, starts fast and survives any model's crash.
"""
