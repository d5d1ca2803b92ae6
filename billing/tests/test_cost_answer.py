"""Validation of a provider's cost answer: what is applied, what stays pending, what is void."""

import json

import pytest

from billing.polling import CostAnswerError, parse_cost_answer

ASKED = {"a", "b", "c"}


def parse(body) -> object:
    return parse_cost_answer(json.dumps(body).encode(), ASKED)


def test_non_negative_integers_are_costs_and_unasked_ids_are_ignored():
    parsed = parse(
        {
            "requests": [
                {"requestId": "a", "costNanoUsd": 12},
                {"requestId": "b", "costNanoUsd": 0},
                {"requestId": "zzz", "costNanoUsd": 5},
            ]
        }
    )
    assert parsed.costs == {"a": 12, "b": 0}
    assert parsed.unknown == 1
    assert parsed.invalid == {}


def test_a_non_integer_cost_is_rounded_up_exactly():
    body = (
        b'{"requests": [{"requestId": "a", "costNanoUsd": 12.000000001},'
        b' {"requestId": "b", "costNanoUsd": 1e3}]}'
    )
    assert parse_cost_answer(body, ASKED).costs == {"a": 13, "b": 1000}


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"requestId": "a", "costNanoUsd": -1}, "negative"),
        ({"requestId": "a", "costNanoUsd": "12"}, "not a number"),
        ({"requestId": "a", "costNanoUsd": True}, "not a number"),
        ({"requestId": "a", "costNanoUsd": None}, "null"),
        ({"requestId": "a"}, "missing"),
        ({"requestId": "a", "costNanoUsd": [1]}, "not a number"),
    ],
)
def test_a_bad_cost_is_not_applied_and_says_why(entry, reason):
    parsed = parse({"requests": [entry, {"requestId": "b", "costNanoUsd": 7}]})
    assert parsed.costs == {"b": 7}
    assert reason in parsed.invalid["a"]


def test_an_id_answered_twice_with_different_costs_stays_pending():
    parsed = parse(
        {
            "requests": [
                {"requestId": "a", "costNanoUsd": 1},
                {"requestId": "a", "costNanoUsd": 2},
                {"requestId": "b", "costNanoUsd": 3},
                {"requestId": "b", "costNanoUsd": 3},
            ]
        }
    )
    assert parsed.costs == {"b": 3}
    assert "twice" in parsed.invalid["a"]


def test_requests_null_means_nothing_yet():
    parsed = parse({"requests": None})
    assert parsed.nothing_yet and parsed.costs == {}


@pytest.mark.parametrize(
    "body", [b"<html>oops</html>", b"", b"[]", b'{"costs": []}', b'{"requests": {"a": 1}}']
)
def test_an_unusable_answer_is_rejected_as_a_whole(body):
    with pytest.raises(CostAnswerError):
        parse_cost_answer(body, ASKED)


def test_entries_that_are_not_objects_are_ignored():
    parsed = parse({"requests": ["a", 5, None, {"requestId": "c", "costNanoUsd": 9}]})
    assert parsed.costs == {"c": 9}
    assert parsed.unknown == 3
