"""Data: canonical records, raw rows of data files (``rows``), one converter per format (``formats``), loading
with the bad-row policy and the split (``loading``), and prompt templates."""

from rlhf_lab.data.formats import FORMATS
from rlhf_lab.data.loading import (
    LoadReport,
    embedded_names,
    load_pairs,
    load_prompts,
    load_sft_examples,
    split_indices,
)
from rlhf_lab.data.records import Message, Pair, Prompt, Sample
from rlhf_lab.data.rows import BAD_ROW_REASONS
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
