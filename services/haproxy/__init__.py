"""HAProxy's part in the direct data plane: the rule that picks a model's application from the
request body (`rules.py`) and the wrapper Ray starts instead of the binary (`wrapper.py`)."""
