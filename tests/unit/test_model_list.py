"""Parsing a worker's GET /v1/models (one parser for registration and the router's /v1/models)."""

import pytest

from router.workers.model_list import ModelListUnavailable, parse_model_list


def test_entries_with_a_string_id_are_kept_whole():
    body = b'{"object": "list", "data": [{"id": "a", "owned_by": "x"}, {"id": 3}, "b", {"name": "c"}, {"id": "d"}]}'
    assert parse_model_list(body) == [{"id": "a", "owned_by": "x"}, {"id": "d"}]


@pytest.mark.parametrize("body", [b'{"object": "list"}', b'{"data": null}', b'{"data": {"id": "a"}}'])
def test_an_object_without_a_data_list_lists_nothing(body):
    assert parse_model_list(body) == []


@pytest.mark.parametrize("body", [b"<html>not found</html>", b"[]", b""])
def test_a_body_that_is_not_a_json_object_is_unavailable(body):
    with pytest.raises(ModelListUnavailable):
        parse_model_list(body)
