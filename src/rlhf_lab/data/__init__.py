"""Data: canonical records, format readers and prompt templates."""

from rlhf_lab.data.readers import (
    BAD_ROW_REASONS,
    FORMATS,
    LoadReport,
    embedded_names,
    load_pairs,
    load_prompts,
    load_sft_examples,
    split_indices,
)
from rlhf_lab.data.records import Message, Pair, Prompt, Sample
from rlhf_lab.data.templates import (
    TEMPLATES,
    render_prompt,
    render_response,
    response_end_marker,
    stop_strings,
)

__all__ = [
    "BAD_ROW_REASONS",
    "FORMATS",
    "TEMPLATES",
    "LoadReport",
    "Message",
    "Pair",
    "Prompt",
    "Sample",
    "embedded_names",
    "load_pairs",
    "load_prompts",
    "load_sft_examples",
    "render_prompt",
    "render_response",
    "response_end_marker",
    "split_indices",
    "stop_strings",
]
