"""Real benchmark rows (GSO, SWE-Perf, SWE-fficiency) as tasks: the profiles, the rows
formats, the bundled *-mini datasets, image naming and early refusals. No Docker here:
tests/test_image_sandbox.py runs the images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agentfleet.fleet.run import RunRequest, build_config
from agentfleet.sandbox.base import CreateSandbox, SandboxError
from agentfleet.sandbox.image_box import ImageNaming, load_image_map
from agentfleet.sandbox.process import ProcessBackend
from agentfleet.sandbox.service import SandboxService
from agentfleet.sandbox.task_images import commit_hashes, repo_source
from agentfleet.tasks import TaskNotFound, load_dataset
from agentfleet.tasks.task import BUNDLED_DIR

MINIS = {"gso-mini": "gso", "swe-perf-mini": "swe-perf", "swefficiency-mini": "swefficiency"}


def _rows(name: str) -> list[dict[str, Any]]:
    text = (BUNDLED_DIR / name / "rows.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("name", MINIS)
def test_bundled_minis_load_by_name_and_by_profile_path(name: str) -> None:
    by_name = load_dataset(name).tasks()
    by_path = load_dataset(f"{MINIS[name]}:{BUNDLED_DIR / name / 'rows.jsonl'}").tasks()
    assert len(by_name) >= 3
    assert [t.id for t in by_name] == [r["instance_id"] for r in _rows(name)]
    for a, b in zip(by_name, by_path, strict=True):
        assert a.model_dump(exclude={"dataset", "task_dir"}) == b.model_dump(
            exclude={"dataset", "task_dir"}
        )
        assert a.is_image_task and a.workdir == "/testbed" and a.benchmark == MINIS[name]
        assert a.solution_patch.startswith("diff --git a/")


@pytest.mark.parametrize("name", MINIS)
def test_bundled_rows_match_their_repos(name: str) -> None:
    """Each row's base_commit (and GSO's opt_commit) is the history its image gets, and its
    gold patch applies to that repository."""
    for task in load_dataset(name).tasks():
        base, gold = commit_hashes(repo_source(task), task.solution_patch)  # applies it too
        assert task.benchmark_fields["base_commit"] == base
        if name == "gso-mini":
            assert task.benchmark_fields["opt_commit"] == gold != base


def test_minis_cover_native_code_and_pytest_timing() -> None:
    gso = {t.id: t for t in load_dataset("gso-mini").tasks()}
    c_row = gso["agentfleet__cprimes-102"]
    assert c_row.rebuild_cmd == "make -s" and "src/primes.c" in c_row.solution_patch
    assert c_row.workload_parser == "gso" and "Execution time" in c_row.workload_cmd
    perf = load_dataset("swe-perf-mini").tasks()
    assert all(t.workload_parser == "pytest" and "--durations=0" in t.workload_cmd for t in perf)
    assert perf[0].test_files == ["tests/test_intervals.py"]
    eff = {t.id: t for t in load_dataset("swefficiency-mini").tasks()}
    assert "src/dupes.c" in eff["agentfleet__cdupes-301"].solution_patch
    assert all(t.workload_parser == "mean" for t in eff.values())


def test_image_naming_rules() -> None:
    gso = load_dataset("gso-mini").task("agentfleet__wordfreq-101")
    assert gso.image is not None and gso.image.startswith("slimshetty/gso:gso.eval.")
    assert gso.image.endswith(".agentfleet__wordfreq-101")
    assert gso.env_activate == "source /testbed/.venv/bin/activate"
    perf = load_dataset("swe-perf-mini").task("agentfleet__pairs-202")
    assert perf.image == "betty1202/sweb.eval.x86_64.agentfleet_s_pairs-202"
    assert perf.env_activate == "source /opt/miniconda3/bin/activate testbed"
    eff = load_dataset("swefficiency-mini").task("agentfleet__histo-302")
    assert eff.image == "ghcr.io/swefficiency/swefficiency-images:agentfleet__histo-302"


# each benchmark's own timing protocol, from its harness: (timed runs per side, untimed
# runs per arm before them, the output check included); SWE-fficiency's single run per
# side is too few readings: its tasks keep the evaluation's defaults
PROTOCOLS = {"gso-mini": (5, 1), "swe-perf-mini": (20, 3), "swefficiency-mini": (None, None)}


@pytest.mark.parametrize("name", MINIS)
def test_profiles_carry_their_benchmarks_timing_protocol(name: str) -> None:
    for task in load_dataset(name).tasks():
        assert (task.repeats, task.warmup) == PROTOCOLS[name], task.id
    # a folder task names none (perf-lite unchanged): the evaluation's defaults apply
    plain = load_dataset("perf-lite").tasks()[0]
    assert (plain.repeats, plain.warmup) == (None, None)


def test_timing_protocol_operator_wins_and_the_cap_holds() -> None:
    """EvalConfig.protocol: the operator's numbers when set; else the task's, its repeats
    at most max_repeats (a dataset cannot raise them past the server's cap); else 5 / 1."""
    from agentfleet.evaluation.config import EvalConfig

    perf = load_dataset("swe-perf-mini").task("agentfleet__pairs-202")
    plain = load_dataset("perf-lite").tasks()[0]
    assert EvalConfig().protocol(perf)[:2] == (20, 3)
    assert EvalConfig().protocol(perf).source == {"repeats": "task", "warmup": "task"}
    assert EvalConfig(repeats=7).protocol(perf)[:2] == (7, 3)
    assert EvalConfig(repeats=7, warmup=0).protocol(perf).source == {
        "repeats": "operator",
        "warmup": "operator",
    }
    assert EvalConfig(max_repeats=8).protocol(perf)[:2] == (8, 3)
    assert EvalConfig(repeats=30, max_repeats=8).protocol(perf)[:2] == (30, 3)  # explicit
    assert EvalConfig().protocol(plain) == (5, 1, {"repeats": "default", "warmup": "default"})
    # the bounds hold for a task's fields as for the config's
    with pytest.raises(ValueError, match="less than or equal to 100"):
        perf.model_validate({**perf.model_dump(), "repeats": 101})


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_image_choice_follows_mini_swe_agent(tmp_path: Path) -> None:
    row = _rows("swe-perf-mini")[0]
    rows = [
        {**row, "instance_id": "a__b-1", "image_name": "img/one"},
        {**row, "instance_id": "a__b-2", "docker_image": "img/two"},
        {**row, "instance_id": "A__B-3"},
    ]
    tasks = load_dataset(f"swe-perf:{_write_jsonl(tmp_path / 'r.jsonl', rows)}").tasks()
    assert [t.image for t in tasks] == [
        "img/one",
        "img/two",
        "betty1202/sweb.eval.x86_64.a_s_b-3",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_commit": None}, r"row 'agentfleet__wordfreq-101': missing base_commit"),
        ({"opt_commmit": "x"}, r"row 'agentfleet__wordfreq-101': unknown field\(s\) opt_commmit"),
        ({"tests": 3}, r"tests must be a list of strings"),
        ({"instance_id": "../up"}, r"instance_id must be"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    row = {k: v for k, v in {**_rows("gso-mini")[0], **change}.items() if v is not None}
    path = _write_jsonl(tmp_path / "rows.jsonl", [row])
    with pytest.raises(TaskNotFound, match=message):
        load_dataset(f"gso:{path}")


def test_repeated_ids_and_bad_files(tmp_path: Path) -> None:
    row = _rows("gso-mini")[0]
    with pytest.raises(TaskNotFound, match="appears twice"):
        load_dataset(f"gso:{_write_jsonl(tmp_path / 'twice.jsonl', [row, row])}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_id": "x"}\nnot json\n')
    with pytest.raises(TaskNotFound, match="line 2 is not JSON"):
        load_dataset(f"gso:{bad}")
    with pytest.raises(TaskNotFound, match=r"expected a \.jsonl"):
        load_dataset(f"gso:{_write_jsonl(tmp_path / 'rows.csv', [row])}")
    with pytest.raises(TaskNotFound, match="no file or folder"):
        load_dataset(f"gso:{tmp_path / 'missing.jsonl'}")


def test_json_list_and_object(tmp_path: Path) -> None:
    rows = _rows("swefficiency-mini")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"rows": rows}))
    for name in ("a.json", "b.json"):
        assert len(load_dataset(f"swefficiency:{tmp_path / name}").tasks()) == len(rows)


def test_parquet_and_datasets_folders(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="parquet and datasets folders need pyarrow (extra real)")
    datasets = pytest.importorskip("datasets", reason="writes a real save_to_disk folder")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows("gso-mini")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gso.parquet")
    assert len(load_dataset(f"gso:{tmp_path / 'gso.parquet'}").tasks()) == 3
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dict"))
    for folder in ("one", "dict"):
        tasks = load_dataset(f"gso:{tmp_path / folder}").tasks()
        assert [t.id for t in tasks] == [r["instance_id"] for r in rows]


def test_servers_load_rows_only_under_their_roots(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    for folder in (inside, outside):
        shutil.copy(BUNDLED_DIR / "gso-mini" / "rows.jsonl", folder / "gso.jsonl")
    assert load_dataset(f"gso:{inside / 'gso.jsonl'}", roots=[inside]).tasks()
    assert load_dataset("gso:gso.jsonl", roots=[inside]).tasks()  # relative to a root
    for spec in (f"gso:{outside / 'gso.jsonl'}", f"gso:{inside}/../out/gso.jsonl"):
        with pytest.raises(TaskNotFound, match="dataset roots"):
            load_dataset(spec, roots=[inside])
    assert load_dataset("swe-perf-mini", roots=[inside]).tasks()  # bundled: always


def test_image_naming_map_and_prefix(tmp_path: Path) -> None:
    mapping = load_image_map('{"a__b-1": "mirror/x:1", "orig/img:2": "mirror/y:2"}', "m")
    naming = ImageNaming(mapping, "registry.local:5000")
    assert naming.image_for("a__b-1", "orig/img:1") == "mirror/x:1"
    assert naming.image_for("other", "orig/img:2") == "mirror/y:2"
    assert naming.image_for("other", "orig/img:3") == "registry.local:5000/orig/img:3"
    with pytest.raises(ValueError, match="expected an object"):
        load_image_map("[1, 2]", "m")


@pytest.mark.parametrize("asked", [{"backend": "process"}, {"sandbox_backend": "process"}])
def test_run_refuses_image_tasks_on_the_process_backend(asked: dict[str, str]) -> None:
    req = RunRequest(dataset="gso-mini", model="oracle", **asked)
    with pytest.raises(ValueError, match=r"run in their own images.*docker sandbox backend"):
        build_config(req)


def test_run_picks_docker_for_image_tasks(tmp_path: Path) -> None:
    (tmp_path / "map.json").write_text('{"agentfleet__dedupe-103": "local/dedupe:1"}')
    req = RunRequest(
        dataset="gso-mini", model="oracle", image_map=tmp_path / "map.json", pull="never"
    )
    cfg, _ = build_config(req)
    assert cfg.sandbox_backend == "docker" and cfg.pull == "never"
    assert cfg.image_naming.image_for("agentfleet__dedupe-103", "x") == "local/dedupe:1"
    with pytest.raises(ValueError, match="--pull 'sometimes'"):
        build_config(RunRequest(dataset="gso-mini", model="oracle", pull="sometimes"))
    with pytest.raises(ValueError, match="for image tasks only"):
        build_config(RunRequest(dataset="perf-lite", model="oracle", pull="never"))


def test_resume_remembers_the_image_options(tmp_path: Path) -> None:
    from agentfleet.fleet.config import run_config
    from agentfleet.fleet.rundir import RunDir

    (tmp_path / "map.json").write_text('{"agentfleet__dedupe-103": "local/dedupe:1"}')
    run = tmp_path / "run"
    first, _ = build_config(
        RunRequest(
            dataset="gso-mini",
            model="oracle",
            run_dir=run,
            image_map=tmp_path / "map.json",
            registry_prefix="mirror:5000",
            pull="never",
        )
    )
    RunDir(run).merge_config(run_config(first, ["agentfleet__dedupe-103"], []))
    (tmp_path / "map.json").unlink()  # the map is kept in config.json, not its path
    resumed, _ = build_config(RunRequest(resume=run))
    assert resumed.sandbox_backend == "docker" and resumed.pull == "never"
    assert resumed.image_naming == first.image_naming
    assert resumed.image_naming.image_for("other", "x:1") == "mirror:5000/x:1"
    again, _ = build_config(RunRequest(resume=run, pull="always", registry_prefix="r2"))
    assert again.pull == "always" and again.image_naming.registry_prefix == "r2"
    assert again.image_naming.image_map == first.image_naming.image_map


async def test_process_backend_refuses_image_tasks(tmp_path: Path) -> None:
    async with SandboxService(ProcessBackend(tmp_path / "sb"), reap_period_s=0) as svc:
        req = CreateSandbox(task_id="agentfleet__cprimes-102", dataset="gso-mini")
        with pytest.raises(SandboxError, match="needs the docker backend") as err:
            await svc.create(req)
        assert err.value.status == 422
        assert len(svc) == 0
    assert not list((tmp_path / "sb").glob("*/work"))


def test_serve_settings_image_options(tmp_path: Path) -> None:
    from agentfleet.sandbox.cli import serve_settings

    (tmp_path / "map.yaml").write_text("a__b-1: mirror/a:1\n")
    docker_kw, _ = serve_settings(
        "docker", image_map=tmp_path / "map.yaml", registry_prefix="r:5000", pull="never"
    )
    assert docker_kw["pull"] == "never"
    assert docker_kw["image_naming"].image_for("a__b-1", "x") == "mirror/a:1"
    assert docker_kw["image_naming"].image_for("c", "x/y") == "r:5000/x/y"
    with pytest.raises(ValueError, match="--pull: only for --backend docker"):
        serve_settings("process", pull="never")
    with pytest.raises(ValueError, match="--pull 'often'"):
        serve_settings("docker", pull="often")


def test_tasks_cli_on_image_tasks() -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["tasks", "show", "agentfleet__cprimes-102", "-d", "gso-mini"])
    assert res.exit_code == 0
    assert "slimshetty/gso:gso.eval." in res.output and "make -s" in res.output
    res = runner.invoke(app, ["tasks", "check", "--dataset", "gso-mini"])
    assert res.exit_code == 2 and "run in their own images" in res.output
