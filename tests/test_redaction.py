"""Redaction: secrets keep their names and lose their values, in headers and in JSON bodies."""

from __future__ import annotations

import json

from gateway.redaction import REDACTED, header_names, redact_body, redact_headers


def test_listed_headers_keep_their_name_and_lose_their_value():
    names = header_names(["Authorization", "Cookie"])
    headers = [(b"authorization", b"Bearer gw_secret"), (b"content-type", b"application/json"), (b"cookie", b"s=1")]
    assert redact_headers(headers, names) == [["authorization", REDACTED], ["content-type", "application/json"],
                                              ["cookie", REDACTED]]


def test_body_fields_named_by_pointer_are_replaced_and_others_kept():
    body = json.dumps({"applicant": {"ssn": "123-45-6789", "income": 5}, "items": ["a", "b"]}).encode()
    out = json.loads(redact_body(body, ("/applicant/ssn", "/items/1", "/missing/field")))
    assert out == {"applicant": {"ssn": REDACTED, "income": 5}, "items": ["a", REDACTED]}


def test_bodies_that_are_not_json_or_have_nothing_to_redact_pass_unchanged():
    for body in (b"not json", b"", b'{"a": 1}', b"[" * 50_000):
        assert redact_body(body, ("/a/b",)) == body
    assert redact_body(b'{"a": 1}', ()) == b'{"a": 1}'
