"""Validation of a provider's cost answer: what is applied, what stays pending, what is void."""

import json
import time

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


# --- defect 3 (issue 11): an answer can neither pin a worker nor crash the parse -----------------
def timed_parse(body: bytes, asked=ASKED):
    started = time.monotonic()
    parsed = parse_cost_answer(body, asked)
    return parsed, time.monotonic() - started


@pytest.mark.parametrize(
    "literal",
    [
        b"1e1000000",  # 43 s of int conversion before the fix
        b"1E+999999999999999999",
        b"-1e1000000",
        b"1" + b"0" * 100_000,  # a 100,000-digit integer
        b"0." + b"0" * 100_000 + b"1",
        b"NaN",
        b"Infinity",
    ],
)
def test_defect_3_a_huge_cost_literal_is_invalid_for_its_id_in_milliseconds(literal):
    body = (
        b'{"requests":[{"requestId":"a","costNanoUsd":' + literal + b"},"
        b'{"requestId":"b","costNanoUsd":7}]}'
    )
    parsed, elapsed_s = timed_parse(body)
    assert elapsed_s < 1.0
    assert parsed.costs == {"b": 7}
    assert "a" in parsed.invalid


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_defect_3_a_deeply_nested_cost_is_invalid_for_its_id_only(depth):
    deep = b"[" * depth + b"]" * depth
    body = (
        b'{"requests":[{"requestId":"a","costNanoUsd":' + deep + b"},"
        b'{"requestId":"b","costNanoUsd":7},{"requestId":"c","costNanoUsd":12.5}]}'
    )
    parsed, elapsed_s = timed_parse(body)
    assert elapsed_s < 5.0
    assert parsed.costs == {"b": 7, "c": 13}
    assert parsed.invalid["a"]  # not a number (its innermost value: too deep)


def test_defect_3_a_deep_object_with_strings_is_skipped_exactly():
    deep = b'{"x":' * 5000 + b'"}]{[\\"\\\\"' + b"}" * 5000
    body = (
        b'{"requests":[{"requestId":"a","meta":' + deep + b',"costNanoUsd":5},'
        b'{"requestId":"b","costNanoUsd":7}]}'
    )
    assert parse_cost_answer(body, ASKED).costs == {"a": 5, "b": 7}


def test_defect_3_a_deep_entry_counts_as_unknown_and_others_apply():
    body = (
        b'{"requests":[' + b"[" * 20_000 + b"]" * 20_000 + b',{"requestId":"b","costNanoUsd":7}]}'
    )
    parsed = parse_cost_answer(body, ASKED)
    assert (parsed.costs, parsed.unknown) == ({"b": 7}, 1)


@pytest.mark.parametrize(
    "body", [b'{"requests":[' + b"[" * 20_000, b'{"requests":[' + b"[" * 20_000 + b"]" * 19_999]
)
def test_defect_3_deep_and_broken_json_is_an_unusable_answer(body):
    with pytest.raises(CostAnswerError):
        parse_cost_answer(body, ASKED)


def test_defect_2_a_cost_above_the_cap_is_invalid_for_its_id(settings):
    settings.BILLING_COST_MAX_NANOUSD = 1_000
    parsed = parse(
        {
            "requests": [
                {"requestId": "a", "costNanoUsd": 1_001},
                {"requestId": "b", "costNanoUsd": 1_000},
                {"requestId": "c", "costNanoUsd": 2**63},
            ]
        }
    )
    assert parsed.costs == {"b": 1_000}
    assert "cap" in parsed.invalid["a"] and "cap" in parsed.invalid["c"]


def test_the_default_cap_is_a_thousand_dollars():
    parsed = parse(
        {
            "requests": [
                {"requestId": "a", "costNanoUsd": 10**17},  # $100M
                {"requestId": "b", "costNanoUsd": 10**12},
            ]
        }
    )
    assert parsed.costs == {"b": 10**12}
    assert "cap" in parsed.invalid["a"]
