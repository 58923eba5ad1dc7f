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


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (its results then do not depend on the machine's core count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    """16 "Count to n." prompt/completion rows: SFT data small enough for kill-and-resume runs."""
    import json

    path = tmp_path_factory.mktemp("sft") / "data.jsonl"
    rows = [{"prompt": f"Count to {n}.", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(2, 18)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


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


# --------------------------------------------------------------------------------------------------------------
# The `slow` marker is kept honest: a test that loads the real SmolLM2 (hidden size 576) or launches a process,
# in its own body or through a fixture, fails unless it is marked slow — so `pytest -m "not slow"` stays quick.
# --------------------------------------------------------------------------------------------------------------
_HEAVY_FIXTURES: set[str] = set()  # fixtures whose setup loaded SmolLM2 or launched a process
_heavy_now: list[str] = []  # what the current setup / call did
_fixture_stack: list[str] = []


def _note(what: str) -> None:
    _heavy_now.append(what)
    _HEAVY_FIXTURES.update(_fixture_stack)


@pytest.fixture(scope="session", autouse=True)
def _watch_heavy_work():
    import subprocess

    from transformers import PreTrainedModel

    loader = PreTrainedModel.from_pretrained.__func__
    popen_init = subprocess.Popen.__init__

    def from_pretrained(cls, *args, **kwargs):
        model = loader(cls, *args, **kwargs)
        if getattr(model.config, "hidden_size", None) == 576:
            _note(f"loads SmolLM2 ({args[0] if args else ''})")
        return model

    def popen(self, args, *rest, **kwargs):
        command = args if isinstance(args, str) else " ".join(map(str, args[:3]))
        if "chromium" not in command:  # the report test's browser is a viewer, not our code
            _note(f"launches a process ({command})")
        return popen_init(self, args, *rest, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
    mp.setattr(subprocess.Popen, "__init__", popen)
    yield
    mp.undo()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _fixture_stack.append(fixturedef.argname)
    try:
        return (yield)
    finally:
        _fixture_stack.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _heavy_now.clear()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    heavy = list(_heavy_now) + [f"uses fixture {name!r}" for name in item.fixturenames if name in _HEAVY_FIXTURES]
    if heavy and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} {heavy[0]}: mark it @pytest.mark.slow", pytrace=False)
    return result
