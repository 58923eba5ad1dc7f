"""rlhf-lab: run the whole RLHF pipeline and measure what goes wrong in it."""

__version__ = "0.1.0"
