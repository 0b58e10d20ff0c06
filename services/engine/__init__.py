"""The engine: its contract with the edge (protocol, interface), the deployment that hosts vLLM,
and vLLM itself behind vllm_compat."""
