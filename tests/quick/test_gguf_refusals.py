"""GGUF files llmx cannot convert faithfully are refused in one line naming the key, the file and what is
supported, before paddle is imported (GGUFs written here with the gguf package's GGUFWriter)."""
import pytest
from gguf_files import write_other_gguf
from helpers import config_error

from llmx.errors import ConfigError
from llmx.sources import resolve

pytest.importorskip("gguf", reason="gguf is a dependency of llmx: pip install -e .")


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_other_architecture_is_refused_in_one_line(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("LLMX_CACHE", str(tmp_path / "cache"))
    path = write_other_gguf(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(ConfigError) as error:
        resolve(str(path))
    assert str(error.value) == (f"model.name_or_path={path}: general.architecture={arch!r}: llmx converts GGUF "
                                "files of architecture llama only")
    assert not (tmp_path / "cache" / "hf").exists() or not [p for p in (tmp_path / "cache" / "hf").iterdir()
                                                            if p.is_dir()], "nothing is converted"


@pytest.mark.parametrize("content, message", [
    (b"not a gguf at all, just text", "not a readable GGUF file"),
    (None, "a file, but not a .gguf checkpoint"),
])
def test_unreadable_or_foreign_files(tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("LLMX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / ("broken.gguf" if content else "weights.bin")
    path.write_bytes(content or b"\0" * 16)
    with pytest.raises(ConfigError) as error:
        resolve(str(path))
    line = str(error.value)
    assert line.startswith(f"model.name_or_path={path}: {message}") and "\n" not in line


def test_launch_refuses_a_qwen_gguf_without_paddle(tmp_path, monkeypatch):
    """`python launch.py model.name_or_path=x.gguf`: exit 2, one config-error line, paddle never imported."""
    monkeypatch.setenv("LLMX_CACHE", str(tmp_path / "cache"))
    path = write_other_gguf(tmp_path / "q.gguf")
    line = config_error(f"model.name_or_path={path}", tmp_path=tmp_path)
    assert line == (f"llmx: config error: model.name_or_path={path}: general.architecture='qwen2': llmx converts "
                    "GGUF files of architecture llama only")
