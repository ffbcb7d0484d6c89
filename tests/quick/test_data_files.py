"""llmx.data.files: the same records from JSON Lines, a JSON array, parquet and Hugging Face datasets
directories (Dataset and DatasetDict), each error naming the record's place in its file."""
from __future__ import annotations

import json

import pytest

from llmx.data.files import read_records
from llmx.data.formats import read_preference, read_prompts, read_sft
from llmx.errors import DataError

TOOL = {"type": "function", "function": {"name": "add", "description": "adds",
                                         "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
# Columnar files give every row every field: a message without tool_calls, a record without tools, must
# still read as the JSON line it was made from.
SFT = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 1"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
                  {"role": "tool", "content": "2", "tool_call_id": "c1"},
                  {"role": "assistant", "content": "It is 2."}],
     "tools": [TOOL]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
]
ALPACA = [{"instruction": "do", "input": "this", "output": "done", "history": [["q1", "a1"]]},
          {"instruction": "q", "output": "a"}]
SHAREGPT = [{"conversations": [{"from": "human", "value": "add 1"},
                               {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1}}'},
                               {"from": "observation", "value": "2"}, {"from": "gpt", "value": "It is 2."}],
             "tools": json.dumps([TOOL["function"]])},
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"}]
DPO = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}]}]
PROMPTS = [{"src": ["q1", "q2"], "tgt": ["a1"], "id": 1}, {"src": ["q"], "tgt": [], "id": 2}]


def write(tmp_path, records, kind, name="d"):
    """`records` as a file (or directory) of `kind`; its path and the place of record 2 in it."""
    if kind == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path, f"{path}:2"
    if kind == "json":
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(records, indent=2))
        return path, f"{path}:record 2"
    # A table has the same columns in every row (from_list would take the first row's only): null where absent.
    columns = list(dict.fromkeys(k for r in records for k in r))
    records = [{k: r.get(k) for k in columns} for r in records]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
        return path, f"{path}:row 2"
    import datasets

    path = tmp_path / name
    data = datasets.Dataset.from_list(records)
    if kind == "datasetdict":
        data = datasets.DatasetDict({"train": data, "test": data.select([0])})
    data.save_to_disk(str(path))
    return path, f"{path}:row 2"


KINDS = ("jsonl", "json", "parquet", "dataset", "datasetdict")


@pytest.mark.parametrize("kind", KINDS)
def test_sft_formats_read_alike_from_every_file_type(tmp_path, kind):
    for name, records in (("messages", SFT), ("alpaca", ALPACA), ("sharegpt", SHAREGPT)):
        reference = read_sft(write(tmp_path, records, "jsonl", f"ref_{name}")[0])
        path, _ = write(tmp_path, records, kind, name)
        assert read_sft(path) == reference, name
        assert len(reference) == 2 and reference[1].tools is None
    [with_tools, _] = read_sft(write(tmp_path, SFT, kind, "again")[0])
    assert with_tools.tools == (TOOL,) and with_tools.messages[3] == {"role": "tool", "content": "2", "tool_call_id": "c1"}
    assert with_tools.messages[2]["tool_calls"] == SFT[0]["messages"][2]["tool_calls"]


@pytest.mark.parametrize("kind", KINDS)
def test_preference_and_prompts_read_alike_from_every_file_type(tmp_path, kind):
    assert read_preference(write(tmp_path, DPO, kind, "dpo")[0]) == read_preference(write(tmp_path, DPO, "jsonl", "r")[0])
    prompts = read_prompts(write(tmp_path, PROMPTS, kind, "prompts")[0])
    assert prompts == read_prompts(write(tmp_path, PROMPTS, "jsonl", "rp")[0])
    assert [p.record["id"] for p in prompts] == [1, 2]  # the other keys come back with the output


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_record_is_named_by_its_place_in_the_file(tmp_path, kind):
    records = [ALPACA[1], {"instruction": "q", "output": " "}]
    path, second = write(tmp_path, records, kind)
    with pytest.raises(DataError, match=rf"^{second}: the last assistant message is empty \(nothing to learn\)$"):
        read_sft(path)


def test_jsonl_lines_blank_lines_and_invalid_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"b": "x\u2028y"}\n{"c": \n')
    with pytest.raises(DataError, match=rf"^{path}:4: invalid JSON \(Expecting value at column 7\)$"):
        read_records(path)
    path.write_text('{"a": 1}\n\n{"b": "x\u2028y"}\n')
    assert read_records(path) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"b": "x\u2028y"})]


def test_a_json_file_may_be_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}\n{"b": 2}\n')
    assert read_records(path) == [(f"{path}:1", {"a": 1}), (f"{path}:2", {"b": 2})]
    path.write_text('{"a": 1}\n')
    assert read_records(path) == [(f"{path}:1", {"a": 1})]
    path.write_text('[{"a": 1}, {"b": 2}]')
    assert read_records(path) == [(f"{path}:record 1", {"a": 1}), (f"{path}:record 2", {"b": 2})]
    path.write_text('{\n "a": 1\n}\n')
    with pytest.raises(DataError, match=rf"^{path}: holds a JSON dict; expected an array of objects"):
        read_records(path)
    path.write_text('[{"a": 1},')
    with pytest.raises(DataError, match=rf"^{path}: invalid JSON \(Expecting value at line 1 column 11\)$"):
        read_records(path)


@pytest.mark.parametrize("kind", ("jsonl", "json", "parquet", "dataset"))
def test_an_empty_source_is_refused(tmp_path, kind):
    if kind in ("parquet", "dataset"):
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = tmp_path / "e.parquet"
            pq.write_table(pa.table({"src": pa.array([], pa.string())}), path)
        else:
            import datasets

            path = tmp_path / "e"
            datasets.Dataset.from_dict({"src": []}).save_to_disk(str(path))
    else:
        path = tmp_path / f"e.{kind}"
        path.write_text("\n\n" if kind == "jsonl" else "[]")
    with pytest.raises(DataError, match=rf"^{path}: no examples \(the file is empty\)$"):
        read_records(path)


def test_unknown_file_types_and_directories(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match=rf"^{path}: unknown file type '.csv'; llmx reads JSON Lines \(.jsonl\), "
                                        r"JSON .* parquet .* Hugging Face datasets directories \(save_to_disk\)$"):
        read_records(path)
    with pytest.raises(DataError, match=rf"^{tmp_path}: a directory that is not a Hugging Face dataset"):
        read_records(tmp_path)
    with pytest.raises(DataError, match=rf"^{tmp_path}/missing.jsonl: no such file$"):
        read_records(tmp_path / "missing.jsonl")


def test_dataset_dict_splits(tmp_path):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list([{"src": "v"}]),
                          "test": datasets.Dataset.from_list([{"src": "t"}])}).save_to_disk(str(path))
    with pytest.raises(DataError, match=rf"^{path}: has no train split; its splits: validation, test "
                                        rf"\(name one as {path}:SPLIT\)$"):
        read_records(path)
    assert read_records(f"{path}:test") == [(f"{path}:test:row 1", {"src": "t"})]
    with pytest.raises(DataError, match=rf"^{path}: has no split 'dev'; its splits: validation, test"):
        read_records(f"{path}:dev")
    only = tmp_path / "only"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"src": "t"}])}).save_to_disk(str(only))
    assert read_records(only) == [(f"{only}:row 1", {"src": "t"})]
