"""The HTTP ingress: OpenAI routes, model -> engine handle, SSE pass-through, errors, health."""
