"""``--weights imagenet`` offline: one clear error in seconds, not after ~50 s of hub retries."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from mammolab.errors import MammoLabError
from mammolab.models.hub import hub_offline_reason, offline_if_unreachable
from mammolab.models.registry import create_model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["unset-this-machine", "unset-closed-port", "set"])
def test_imagenet_offline_fails_in_under_5_s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> None:
    import huggingface_hub.constants as hf_constants
    import timm  # noqa: F401  (imported before the clock starts: the import is not what is timed)

    hf_offline = mode == "set"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", hf_offline)
    if hf_offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if mode == "unset-this-machine" and hub_offline_reason() is None:
        pytest.skip("this machine reaches the Hugging Face hub: nothing offline to time")
    if mode == "unset-closed-port":  # offline for certain, whatever network this machine has
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(MammoLabError) as err:
        create_model("resnet18", regime="opw", weights="imagenet")
    elapsed = time.perf_counter() - start
    msg = str(err.value)
    assert elapsed < 5.0, elapsed
    assert "--weights imagenet" in msg and "--weights /path/to/model.safetensors" in msg
    assert {"set": "HF_HUB_OFFLINE is set", "unset-closed-port": "cannot connect to 127.0.0.1"}.get(
        mode, "offline: ") in msg
    assert hf_constants.HF_HUB_OFFLINE is hf_offline  # the temporary offline mode was undone


def test_probe_answers_for_online_offline_proxy_and_a_hanging_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_offline_reason() is None
        with offline_if_unreachable() as reason:
            assert reason is None and hf_constants.HF_HUB_OFFLINE is False
        # Behind a proxy it is the proxy that must answer.
        closed = _closed_port()
        monkeypatch.setattr(hf_constants, "ENDPOINT", "https://huggingface.co")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
        assert f"cannot connect to 127.0.0.1:{closed}" in (hub_offline_reason() or "")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        assert hub_offline_reason() is None
    monkeypatch.delenv("HTTPS_PROXY")

    def hang(*args: object, **kwargs: object) -> None:
        time.sleep(3)
        raise OSError("never reached in time")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub_offline_reason(timeout=0.3) == "no answer from huggingface.co:443 within 0.3 s"
    assert time.perf_counter() - start < 1.5
    with offline_if_unreachable(timeout=0.3) as reason:
        assert reason and hf_constants.HF_HUB_OFFLINE is True
    assert hf_constants.HF_HUB_OFFLINE is False
