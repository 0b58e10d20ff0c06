"""Engine deployments: one Ray Serve deployment per catalog model, each hosting a vLLM engine."""
