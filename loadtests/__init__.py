"""Load tests (locust) and the side-by-side benchmark of slmserve, bare vLLM and Ray Serve LLM."""
