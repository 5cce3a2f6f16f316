"""Serving: the deployment stage and its OpenAI-compatible server, the chat loop, and whether vLLM loads an export."""
