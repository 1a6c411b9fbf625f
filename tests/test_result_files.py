"""The result-file owner (nvcim.evaluate.files): one writer and one reader for every kind, versioned."""

import json

import pytest

from nvcim.evaluate import MCResult, summarize
from nvcim.evaluate.files import (FORMAT, EvaluationFile, FailedCellFile, WriteVerifyFile, read_result_file,
                                  write_result_file)


def _mc(sigma=0.2):
    stats = summarize([40, 42, 45], 50, 3.0, 120)
    return MCResult(sigma=sigma, runs=3, seed=0, n_samples=50, clean_accuracy=90.0, quantized_accuracy=89.0,
                    per_run_correct=[40, 42, 45], wall_time_s=0.1, path="loop", device_config={"sigma": sigma}, **stats)


@pytest.mark.parametrize("record", [
    EvaluationFile(results=[_mc(0.1), _mc(0.2)], checkpoint="ck", checkpoint_config={"model": {"name": "tiny"}},
                   dataset="mnist5k", device_config={"sigma": 0.1}, cell={"id": "a/b"}, label="arm"),
    WriteVerifyFile(points=[{"fraction": 0.0, "verified_weights": 0, "verified_devices": 0, "result": _mc()}],
                    write_verify={"by": "magnitude"}, checkpoint="ck", dataset="mnist5k"),
    FailedCellFile(cell={"id": "x"}, error="boom", traceback="tb"),
])
def test_round_trip(tmp_path, record):
    path = write_result_file(tmp_path / "r.json", record)
    back = read_result_file(path)
    assert type(back) is type(record) and back.to_dict() == json.loads(path.read_text())
    if isinstance(record, EvaluationFile):
        assert back.mc_results()[1].mean == record.results[1].mean and back.format == FORMAT


def test_files_of_earlier_versions_read_as_format_1_and_newer_formats_are_refused(tmp_path):
    old = EvaluationFile(results=[_mc()]).to_dict()
    del old["format"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_result_file(tmp_path / "old.json").format == 1
    (tmp_path / "new.json").write_text(json.dumps({**old, "format": FORMAT + 1}))
    with pytest.raises(ValueError, match="newer than this nvcim reads"):
        read_result_file(tmp_path / "new.json")


def test_malformed_files_name_the_file_and_field(tmp_path):
    for payload, text in (({"kind": "mc_eval", "results": []}, "no 'results' list"),
                          ({"kind": "mc_eval", "results": [{"sigma": "x", "mean": 1}]}, r"results\[0\] lacks"),
                          ({"kind": "mc_eval", "results": [{"sigma": 0.1, "mean": 1}], "checkpoint_config": [1]},
                           "'checkpoint_config' is not an object"),
                          ({"kind": "write_verify", "points": [{"fraction": 0}], "write_verify": {}}, "'points'")):
        f = tmp_path / "bad.json"
        f.write_text(json.dumps(payload))
        with pytest.raises(ValueError, match=text) as e:
            read_result_file(f)
        assert str(f) in str(e.value)
    (tmp_path / "t.json").write_text('{"kind": "mc_eval", ')
    with pytest.raises(ValueError, match="not a readable JSON"):
        read_result_file(tmp_path / "t.json")
    (tmp_path / "o.json").write_text('{"kind": "something else"}')
    assert read_result_file(tmp_path / "o.json") is None
