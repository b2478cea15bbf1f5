"""The models of RLHF as plain Hugging Face models: loading, heads, the scoring convention, generation.

Nothing here is an optimisation: these are the reference forwards that core.backends' fast
paths are checked against (docs/architecture.md, "Layers")."""
