import torch

# Tiny CPU ops run much faster on one thread than on two contended ones, and results stay
# identical between a test process and the subprocesses it starts (OMP_NUM_THREADS=1 there).
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch):
    """Tests never download: --pretrained torchvision|timm fails like an offline machine unless a test
    replaces the download itself."""
    def offline(*args, **kwargs):
        raise OSError("tests never download (tests/conftest.py)")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    try:
        import huggingface_hub
    except ImportError:
        return
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
