"""The stand-in engine of the scale runs (loadtests/scale.py): never a model a user can serve."""
