"""The soak test (bench/soak.py) in its 60-second version: the real checkpoint served by `stage=serve` under 1-64
clients, disconnects, malformed and oversized requests; and what the soak found: a non-streaming client that gives up
(a timeout) frees its row at once."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import REPO, start_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.slow
def test_soak_one_minute_passes(real_model_dir, tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO / "bench"))
    out = tmp_path / "soak.json"
    code = soak.main(["--minutes", "1", "--model", str(real_model_dir), "--json", str(out)])
    s = json.loads(out.read_text())
    assert code == 0 and s["passed"] and not s["reasons"], s["reasons"]
    by_kind = s["by_kind"]
    # the mix happened: well-formed answers, every kind of refusal, disconnects both ways
    assert s["well_formed_ok"] >= 20, by_kind
    assert sum(by_kind.get(k, 0) for k in soak.EXPECTED) >= 8, by_kind
    assert by_kind.get("httpx_abandoned", 0) >= 1 and by_kind.get("openai_disconnect", 0) + by_kind.get(
        "httpx_disconnect", 0) >= 1, by_kind
    m = s["metrics"]
    assert (m["active_rows"], m["running_requests"], m["queue_length"]) == (0, 0, 0)
    assert m["cancelled"] == s["disconnects"] > 0
    assert m["peak_rows"] == s["max_batch"]  # the batch filled: the warm-up met the largest shapes
    assert s["rss_growth"] < 0.05 and s["windows"][0]["clients"] == 64
    assert {w["clients"] for w in s["windows"] if w["start_s"] < s["duration_s"]} >= {64, 1}


def test_a_client_that_gives_up_frees_its_row(tiny_model_dir, tmp_path):
    """A plain (non-streaming) request whose client closes the connection (here: a 1 s timeout) is cancelled at once;
    it used to decode on to its last token."""
    server = start_server(["launch.py", f"model.name_or_path={tiny_model_dir}"], tmp_path / "run", key=KEY)
    try:
        body = {"model": "paddlenlp", "prompt": "the quick brown fox", "max_tokens": 4000, "temperature": 0}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server['base']}/v1/completions", headers=AUTH, json=body, timeout=1.0)
        deadline = time.time() + 10
        while time.time() < deadline:
            m = httpx.get(f"{server['base']}/metrics", headers=AUTH).json()
            if m["cancelled"]:
                break
            time.sleep(0.2)
        assert (m["cancelled"], m["active_rows"], m["running_requests"]) == (1, 0, 0), m
        assert m["generated_tokens"] < 1000, m  # left long before its answer's end
        # and the server answers the next one
        r = httpx.post(f"{server['base']}/v1/completions", headers=AUTH, json={**body, "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(timeout=60)
    assert server["proc"].returncode == 0
    assert Path(tmp_path / "run").is_dir()
