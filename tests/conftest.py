import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh-rlhf")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf_lab.models import load_tokenizer

    return load_tokenizer("tiny-random")
