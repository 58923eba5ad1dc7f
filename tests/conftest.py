import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh-rlhf")


@pytest.fixture(autouse=True)
def _release_run_dir_locks():
    """Each test stands for one process: the run-directory locks it took end with it, as they do at process exit."""
    yield
    from rlhf_lab.rundir import release_all

    release_all()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf_lab.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def tiny_gold_rm(tmp_path_factory):
    """A head-only reward model on tiny-random that prefers a helpful reply to "No." (a stand-in gold RM)."""
    import json

    from rlhf_lab.config import make_config
    from rlhf_lab.recipes import reward_model

    root = tmp_path_factory.mktemp("tiny-gold")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me about cats {i}.", "chosen": "Cats are lovely pets.",
                                        "rejected": "No."}) + "\n" for i in range(32)))
    reward_model.run(make_config(reward_model.RewardModelConfig, dict(
        model_name="tiny-random", dataset=str(data), split="all", eval_limit=0, output_dir=str(root / "rm"),
        trainable="head", max_steps=10, learning_rate=1e-2, progress=False, seed=0)))
    return str(root / "rm")
