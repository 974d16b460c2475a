"""Tests of the handler without a server: run them with `python3 -m pytest`."""

from main import handler


def test_greets_whoever_the_event_names():
    assert handler({"name": "Ada"}, None) == {"message": "Hello, Ada!"}


def test_greets_the_world_without_a_name():
    assert handler({}, None) == {"message": "Hello, world!"}
