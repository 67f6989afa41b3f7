"""The one-line messages the CLI and the servers share: a model's validation errors (and
the options of ``eval submit`` and ``serve-eval`` that they name), a file not UTF-8, the
server URLs of ``serve-eval``, ``eval preds`` and ``eval-worker``, and what an evaluation
server tells a client of a dataset whose files are wrong (the dataset and the file in it,
never the server's own path)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator
from typer.testing import CliRunner

from agentfleet.cli import app
from agentfleet.evaluation import create_app
from agentfleet.evaluation.config import EvalConfig
from agentfleet.evaluation.evaluator import Evaluator
from agentfleet.http import NO_RETRY, HttpPool
from agentfleet.serving import serve_in_loop
from agentfleet.tasks.oneline import not_utf8, one_line


def _refused(args: list[str], code: int = 2) -> str:
    """Run the CLI; its one ``error:`` line."""
    out = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert out.exit_code == code, (out.output, out.exception)
    assert "Traceback" not in out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.output
    return errors[0]


# one_line -----------------------------------------------------------------------------
class Inner(BaseModel):
    n: int


class Form(BaseModel):
    a: int
    b: int = 0
    c: int = 0
    d: int = 0
    inner: Inner | None = None


class Whole(BaseModel):
    x: int = 0

    @model_validator(mode="after")
    def never(self) -> Whole:
        raise ValueError("never valid")


def _error(model: type[BaseModel], data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


def test_one_line_joins_the_first_three_and_counts_the_rest() -> None:
    exc = _error(Form, {"b": "x", "c": "x", "d": "x"})
    line = one_line(exc)
    assert "\n" not in line
    assert line == (
        "a: Field required; b: Input should be a valid integer, unable to parse string as an "
        "integer; c: Input should be a valid integer, unable to parse string as an integer "
        "(and 1 more)"
    )
    assert one_line(exc, limit=1) == "a: Field required (and 3 more)"
    assert one_line(exc, limit=4).count(";") == 3 and "more" not in one_line(exc, limit=4)


def test_one_line_names_fields_as_given_and_dots_nested_ones() -> None:
    exc = _error(Form, {"a": 1, "inner": {}})
    assert one_line(exc) == "inner.n: Field required"
    assert one_line(exc, {"inner": "--inner"}) == "--inner.n: Field required"
    assert one_line(_error(Whole, {})) == "value: Value error, never valid"


def test_eval_submit_names_the_option(tmp_path: Path) -> None:
    patch = tmp_path / "p.diff"
    patch.write_text("diff --git a/x b/x\n")
    args = ["eval", "submit", "-i", "t", "--patch", str(patch), "--key", "k" * 201]
    assert _refused(args) == "error: --key: String should have at most 200 characters"


def test_serve_eval_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range of EvalConfig narrower than its option's: refused before serving."""

    class Narrow(EvalConfig):
        repeats: int | None = Field(default=None, le=2)

    def serve(**kw: Any) -> None:
        raise AssertionError("served")

    monkeypatch.setattr("agentfleet.evaluation.evaluator.EvalConfig", Narrow)
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", serve)
    assert _refused(["serve-eval", "--repeats", "5"]) == (
        "error: invalid evaluation settings: repeats: Input should be less than or equal to 2"
    )


# not UTF-8 ----------------------------------------------------------------------------
NOT_UTF8 = b"abc\xff"  # byte 3 does not decode


def test_not_utf8_names_the_byte() -> None:
    with pytest.raises(UnicodeDecodeError) as info:
        NOT_UTF8.decode("utf-8")
    assert not_utf8(info.value) == "not UTF-8 text (byte 3)"


def _in_run_folder(tmp_path: Path) -> tuple[list[str], Path]:
    run = tmp_path / "run"
    (run / "trajectories").mkdir(parents=True)
    (run / "results.jsonl").write_text('{"instance_id": "t1", "exit_status": "Submitted"}\n')
    return ["show", str(run), "t1"], run / "trajectories" / "t1.traj.json"


def _in_dataset(tmp_path: Path) -> tuple[list[str], Path]:
    (tmp_path / "ds" / "t1").mkdir(parents=True)
    (tmp_path / "ds" / "dataset.yaml").write_text("splits: {test: [t1]}\n")
    return ["tasks", "list", "-d", str(tmp_path / "ds")], tmp_path / "ds" / "t1" / "task.yaml"


def _mini_config(tmp_path: Path) -> tuple[list[str], Path]:
    pytest.importorskip("minisweagent")
    bad = tmp_path / "mini.yaml"
    run = ["run", "--run-dir", str(tmp_path / "run"), "--progress", "none", "--agent", "mini"]
    return [*run, "--agent-config", str(bad)], bad


@pytest.mark.parametrize(
    ("where", "suffix"),
    [
        ("patch", "; a patch is a git diff"),
        ("preds", ""),
        ("trajectory", ""),
        ("task.yaml", ""),
        ("mini config", ""),
    ],
)
def test_every_file_not_utf8_says_so_alike(tmp_path: Path, where: str, suffix: str) -> None:
    if where == "patch":
        bad = tmp_path / "fix.patch"
        args = ["eval", "submit", "-i", "t", "--patch", str(bad)]
    elif where == "preds":
        bad = tmp_path / "preds.json"
        args = ["eval", "preds", str(bad)]
    elif where == "trajectory":
        args, bad = _in_run_folder(tmp_path)
    elif where == "task.yaml":
        args, bad = _in_dataset(tmp_path)
    else:
        args, bad = _mini_config(tmp_path)
    bad.write_bytes(NOT_UTF8)
    assert _refused(args) == f"error: {bad}: not UTF-8 text (byte 3){suffix}"


# server URLs: serve-eval, eval preds, eval-worker ---------------------------------------
NOT_HTTP = ["ftp://x", "localhost:8000", "http://127.0.0.1:99999", "http://", "127.0.0.1"]
GOOD_URLS = ["http://127.0.0.1:9527", "https://sandboxes.example/api"]


def _not_http(option: str, url: str) -> str:
    return f"error: {option} {url!r}: not an http(s) URL (e.g. http://host:port)"


@pytest.mark.parametrize("url", NOT_HTTP)
def test_serve_eval_sandbox_url_must_be_http(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    def serve(**kw: Any) -> None:
        raise AssertionError("served")

    monkeypatch.setattr("agentfleet.evaluation.server.run_server", serve)
    assert _refused(["serve-eval", "--sandbox-url", url]) == _not_http("--sandbox-url", url)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_serve_eval_sandbox_url_passes_through(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", lambda **kw: seen.update(kw))
    out = CliRunner().invoke(app, ["serve-eval", "--sandbox-url", url])
    assert out.exit_code == 0, out.output
    assert seen["sandbox_url"] == url


class _Ran(Exception):
    """Raised by a stand-in for what a command would start: it got that far."""


def _eval_preds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[Any]]:
    """``eval preds`` of one good prediction of perf-lite, its run replaced: the command's
    arguments, and the configs it would have run."""
    preds = tmp_path / "preds.json"
    patch = "diff --git a/x b/x\n"
    preds.write_text(json.dumps({"dedupe-pairs": {"instance_id": "dedupe-pairs",
                                                  "model_name_or_path": "m",
                                                  "model_patch": patch}}))  # fmt: skip
    runs: list[Any] = []

    def run(cfg: Any, **kw: Any) -> None:
        runs.append(cfg)
        raise _Ran

    monkeypatch.setattr("agentfleet.fleet.run.run", run)
    return ["eval", "preds", str(preds), "-d", "perf-lite", "--run-dir", str(tmp_path / "r")], runs


@pytest.mark.parametrize("option", ["--sandbox-url", "--eval-url"])
@pytest.mark.parametrize("url", NOT_HTTP)
def test_eval_preds_urls_must_be_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, url: str
) -> None:
    args, runs = _eval_preds(tmp_path, monkeypatch)
    assert _refused([*args, option, url]) == _not_http(option, url)
    assert runs == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("url", GOOD_URLS)
def test_eval_preds_urls_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    args, runs = _eval_preds(tmp_path, monkeypatch)
    out = CliRunner().invoke(app, [*args, "--sandbox-url", url, "--eval-url", url])
    assert isinstance(out.exception, _Ran), out.output
    assert (runs[0].sandbox_url, runs[0].eval_url) == (url, url)


def _eval_worker(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str | None]]:
    """``eval-worker`` with its serving loop replaced: the command's arguments, and the
    ``--sandbox-url`` of each loop it would have started."""
    served: list[str | None] = []

    async def serve(server: str, evaluators: Any, **kw: Any) -> int:
        served.append(evaluators.sandbox_url)
        return 0

    monkeypatch.setattr("agentfleet.evaluation.worker.serve_worker", serve)
    return ["eval-worker", "--server", "http://127.0.0.1:9528"], served


@pytest.mark.parametrize("url", NOT_HTTP)
def test_eval_worker_sandbox_url_must_be_http(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    args, served = _eval_worker(monkeypatch)
    assert _refused([*args, "--sandbox-url", url]) == _not_http("--sandbox-url", url)
    assert served == []


@pytest.mark.parametrize("url", GOOD_URLS)
def test_eval_worker_sandbox_url_passes_through(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    args, served = _eval_worker(monkeypatch)
    out = CliRunner().invoke(app, [*args, "--sandbox-url", url])
    assert out.exit_code == 0, out.output
    assert served == [url]


# an evaluation server's datasets whose files are wrong ---------------------------------
GOOD_TASK = "prompt: p\ntest_cmd: 'true'\nworkload_cmd: 'true'\n"
BROKEN: dict[str, tuple[dict[str, bytes], str]] = {
    # case: the dataset's files, what the client is told
    "task-fields-missing": (
        {"t1/task.yaml": b"title: t\n"},
        "t1/task.yaml: prompt: Field required; test_cmd: Field required; "
        "workload_cmd: Field required",
    ),
    "task-not-yaml": (
        {"t1/task.yaml": b"prompt: [x\n"},
        "t1/task.yaml: not valid YAML: while parsing a flow sequence (line 1, column 9): "
        "expected ',' or ']', but got '<stream end>' (line 2, column 1)",
    ),
    "task-not-utf8": ({"t1/task.yaml": NOT_UTF8}, "t1/task.yaml: not UTF-8 text (byte 3)"),
    "task-a-list": (
        {"t1/task.yaml": b"- x\n"},
        "t1/task.yaml: expected a mapping of fields, not list",
    ),
    "no-task-yaml": (
        {"t1/repo/x": b""},
        "dataset.yaml: its splits list task 't1', but t1 has no task.yaml",
    ),
    "dataset-splits-bad": (
        {"dataset.yaml": b"splits: {test: 3}\n"},
        "dataset.yaml: splits.test: Input should be a valid list",
    ),
}


class NoSandboxes:
    """The requests here are refused before any sandbox is made."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"sandboxes.{name} used")


class Unchecked:
    """The real evaluator without its submit-time check: the job itself meets the file."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluate = evaluator.evaluate


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    async with HttpPool(retry=NO_RETRY) as p:
        yield p


def _broken_dataset(root: Path, files: dict[str, bytes]) -> None:
    ds = root / "sub" / "mine"
    for name, data in {"dataset.yaml": b"splits: {test: [t1]}\n", **files}.items():
        (ds / name).parent.mkdir(parents=True, exist_ok=True)
        (ds / name).write_bytes(data)


def _request(dataset: str = "sub/mine") -> dict[str, Any]:
    return {
        "exit_status": "Submitted",
        "result": "diff --git a/x b/x\n",
        "instance_id": "t1",
        "dataset_name": dataset,
        "split": "test",
    }


@pytest.mark.parametrize("case", list(BROKEN))
async def test_server_names_a_broken_file_by_its_dataset_not_its_path(
    pool: HttpPool, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    files, problem = BROKEN[case]
    _broken_dataset(tmp_path, files)
    evaluator = Evaluator(NoSandboxes(), dataset_roots=[tmp_path])  # type: ignore[arg-type]
    expected = f"dataset 'sub/mine': {problem}"
    caplog.set_level(logging.WARNING, "agentfleet.evaluation")
    async with serve_in_loop(create_app(evaluator, workers=1)) as srv:
        for path in ("/evaluate", "/evaluations"):
            resp = await pool.request("POST", f"{srv.url}{path}", json=_request())
            assert (resp.status, resp.json()) == (404, {"error": expected})
            assert str(tmp_path) not in resp.text()
    # the operator's log says where the file is
    logged = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert logged and all(str(tmp_path / "sub" / "mine") in line for line in logged)


async def test_a_job_meeting_a_broken_file_fails_without_the_path(
    pool: HttpPool, tmp_path: Path
) -> None:
    files, problem = BROKEN["task-fields-missing"]
    _broken_dataset(tmp_path, files)
    evaluator = Evaluator(NoSandboxes(), dataset_roots=[tmp_path])  # type: ignore[arg-type]
    async with serve_in_loop(create_app(Unchecked(evaluator), workers=1)) as srv:
        job = (await pool.request("POST", f"{srv.url}/evaluate", json=_request())).json()
    assert job["info"]["status_code"] == 404
    assert job["info"]["error"] == f"DatasetFileError: dataset 'sub/mine': {problem}"
    assert str(tmp_path) not in str(job)


def test_the_cli_still_names_the_full_path(tmp_path: Path) -> None:
    """Loaded here (no dataset roots), the file is named by its path."""
    _broken_dataset(tmp_path, BROKEN["task-fields-missing"][0])
    line = _refused(["tasks", "list", "-d", str(tmp_path / "sub" / "mine")])
    assert line.startswith(f"error: {tmp_path / 'sub' / 'mine' / 't1' / 'task.yaml'}: prompt: ")


# ... and rows datasets (a real benchmark's rows) whose rows file is wrong
BAD_JSONL = b'{"instance_id": "t1"}\nnot json\n'
ROWS_BROKEN: dict[str, tuple[str, dict[str, bytes], str]] = {
    # case: the dataset a request names, the files under the root, what the client is told
    "jsonl-line": ("gso:rows.jsonl", {"rows.jsonl": BAD_JSONL}, "rows.jsonl: line 2 is not JSON"),
    "json-no-list": (
        "swe-perf:sub/rows.json",
        {"sub/rows.json": b'{"a": 1}'},
        "sub/rows.json: expected a list of rows",
    ),
    "row-a-list": (
        "swefficiency:rows.jsonl",
        {"rows.jsonl": b'{"instance_id": "t1"}\n[1]\n'},
        "rows.jsonl: row 2 is not an object",
    ),
    "not-utf8": ("gso:rows.jsonl", {"rows.jsonl": NOT_UTF8}, "rows.jsonl: not UTF-8 text (byte 3)"),
    "suffix": (
        "gso:rows.csv",
        {"rows.csv": b""},
        "rows.csv: expected a .jsonl, .json or .parquet file or a datasets folder",
    ),
    "hf-folder": (
        "gso:hf",
        {"hf/x.arrow": b""},
        "hf: not a datasets folder (no state.json nor dataset_dict.json)",
    ),
    "hf-state": ("gso:hf", {"hf/state.json": b"[1]"}, "hf/state.json: expected a JSON object"),
    # pyarrow's own errors (parquet, a datasets folder's Arrow files) named the file too
    "arrow-parquet": (
        "gso:bad.parquet",
        {"bad.parquet": b"not a parquet file"},
        "bad.parquet: cannot read: ",
    ),
    "arrow-data-missing": (
        "gso:hf",
        {"hf/state.json": b'{"_data_files": [{"filename": "d.arrow"}]}'},
        "hf/d.arrow: cannot read: No such file or directory",
    ),
    "folder-with-profile": (
        "sub/mine",
        {
            "sub/mine/dataset.yaml": b"profile: gso\nrows: rows.jsonl\n",
            "sub/mine/rows.jsonl": BAD_JSONL,
        },
        "rows.jsonl: line 2 is not JSON",
    ),
}


def _files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@pytest.mark.parametrize("case", list(ROWS_BROKEN))
async def test_server_names_a_broken_rows_file_by_its_dataset_not_its_path(
    pool: HttpPool, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    if case.startswith("arrow-"):
        pytest.importorskip("pyarrow", reason="parquet and datasets folders need pyarrow")
    dataset, files, problem = ROWS_BROKEN[case]
    _files(tmp_path, files)
    evaluator = Evaluator(NoSandboxes(), dataset_roots=[tmp_path])  # type: ignore[arg-type]
    expected = f"dataset {dataset!r}: {problem}"
    caplog.set_level(logging.WARNING, "agentfleet.evaluation")
    async with serve_in_loop(create_app(evaluator, workers=1)) as srv:
        for path in ("/evaluate", "/evaluations"):
            resp = await pool.request("POST", f"{srv.url}{path}", json=_request(dataset))
            assert resp.status == 404, resp.text()
            assert resp.json()["error"].startswith(expected), resp.text()
            assert str(tmp_path) not in resp.text()
    # the operator's log says where the file is
    logged = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    full = tmp_path / ("sub/mine" if case == "folder-with-profile" else "") / problem.split(":")[0]
    assert logged and all(f"refused a request: {full}: " in line for line in logged)


async def test_a_job_meeting_a_broken_rows_file_fails_without_the_path(
    pool: HttpPool, tmp_path: Path
) -> None:
    dataset, files, problem = ROWS_BROKEN["jsonl-line"]
    _files(tmp_path, files)
    evaluator = Evaluator(NoSandboxes(), dataset_roots=[tmp_path])  # type: ignore[arg-type]
    async with serve_in_loop(create_app(Unchecked(evaluator), workers=1)) as srv:
        resp = await pool.request("POST", f"{srv.url}/evaluate", json=_request(dataset))
        job = resp.json()
    assert job["info"]["status_code"] == 404
    assert job["info"]["error"] == (
        f"DatasetFileError: dataset {dataset!r}: {problem}: Expecting value"
    )
    assert str(tmp_path) not in str(job)


@pytest.mark.parametrize("case", ["jsonl-line", "folder-with-profile"])
def test_the_cli_still_names_the_full_path_of_a_rows_file(tmp_path: Path, case: str) -> None:
    """Loaded here (no dataset roots), the rows file is named by its path."""
    _files(tmp_path, ROWS_BROKEN[case][1])
    if case == "jsonl-line":
        rows = tmp_path / "rows.jsonl"
        dataset, shown = f"gso:{rows}", f"gso:{rows}"
    else:
        rows = tmp_path / "sub" / "mine" / "rows.jsonl"
        dataset, shown = str(tmp_path / "sub" / "mine"), "mine"  # its name: the folder's
    line = _refused(["tasks", "list", "-d", dataset])
    assert line == f"error: dataset {shown!r}: {rows}: line 2 is not JSON: Expecting value"
