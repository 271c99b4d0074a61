"""The discovery file: its format and validation (pure), and the watcher's behaviour
(missing file, bad file logged once, last good view kept) with a real file on disk."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from router.config import WorkerSpec
from router.discovery.file_source import DiscoveryFileError, FileSource, parse_worker_file
from tests.discovery.conftest import eventually, write_atomically


def parse(text: str, name: str = "w.json", pd: bool = False) -> dict:
    return parse_worker_file(name, text, pd)


def test_a_list_or_a_workers_object():
    expected = {("http://a:1", "regular"): WorkerSpec("http://a:1", labels={"z": "1"})}
    assert parse('[{"url": "http://a:1", "labels": {"z": "1"}}]') == expected
    assert parse('{"workers": [{"url": "http://a:1", "labels": {"z": "1"}}]}') == expected
    assert parse("[]") == {} and parse('{"workers": []}') == {}


def test_yaml_by_file_name():
    text = "- url: http://p:1\n  role: prefill\n  bootstrap_port: 8998\n- url: http://d:1\n  role: decode\n"
    view = parse(text, "w.yaml", pd=True)
    assert view[("http://p:1", "prefill")].bootstrap_port == 8998 and ("http://d:1", "decode") in view
    assert parse("", "w.yml") == {}  # an empty YAML document: no workers


@pytest.mark.parametrize(
    ("text", "name", "pd", "message"),
    [
        ('[{"url": ', "w.json", False, "discovery file w.json: not valid JSON"),
        ("- url: [", "w.yaml", False, "discovery file w.yaml: not valid YAML"),
        ('"http://a:1"', "w.json", False, "must be a list of workers"),
        ('{"worker": []}', "w.json", False, "unknown key(s) ['worker']"),
        ('[{"url": "http://a:1"}, {"url": "ftp://b"}]', "w.json", False, "workers[1]: field 'url' must look like"),
        ('[{"url": "http://a:1", "port": 3}]', "w.json", False, "workers[0]: unknown field(s) ['port']"),
        ('[{"url": "http://a:1"}]', "w.json", True, "workers[0]: field 'role': this router runs with --pd-disaggregation"),
        ('[{"url": "http://a:1"}, {"url": "http://a:1/"}]', "w.json", False, "workers[1]: http://a:1 (regular) is already"),
    ],
)
def test_bad_files_name_the_file_entry_and_field(text, name, pd, message):
    with pytest.raises(DiscoveryFileError) as err:
        parse(text, name, pd)
    assert message in str(err.value)


async def test_watcher_waits_for_the_file_and_keeps_the_last_good_view(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="atom_mesh.discovery")
    path = tmp_path / "workers.json"
    views: list[dict] = []

    async def publish(view) -> None:
        views.append(dict(view))

    source = FileSource(str(path), False, check_interval_secs=0.01)  # reread at every poll
    task = asyncio.create_task(source.run(publish))
    try:

        async def logged(needle: str) -> int:
            return sum(needle in r.getMessage() for r in caplog.records)

        await eventually(lambda: logged("does not exist (yet)"), "missing file reported")
        assert views == []
        write_atomically(path, [{"url": "http://a:1"}])

        async def published(n: int) -> bool:
            return len(views) >= n

        await eventually(lambda: published(1), "first good file published")
        assert list(views[0]) == [("http://a:1", "regular")]

        write_atomically(path, [{"url": "http://a:1"}, {"url": "nope"}])
        await eventually(lambda: logged("workers[1]: field 'url'"), "bad entry reported")
        write_atomically(path, [{"url": "http://b:1"}])

        async def latest_is_b() -> bool:
            return bool(views) and list(views[-1]) == [("http://b:1", "regular")]

        await eventually(latest_is_b, "fixed file published")
        assert all(list(v) in ([("http://a:1", "regular")], [("http://b:1", "regular")]) for v in views)
        assert await logged("workers[1]: field 'url'") == 1  # reread at every poll, logged once
        assert await logged("good again") == 2  # after the missing file, and after the bad one

        path.unlink()  # deleted (or mid-replace): the last good view stays
        await eventually(lambda: logged("does not exist (yet)"), "missing file reported again")
        assert list(views[-1]) == [("http://b:1", "regular")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
