"""The few fields of a multipart `/v1` request the gateway reads: which model, and whether it streams.

OpenAI's file endpoints (`/v1/audio/transcriptions`, `/v1/audio/translations`,
`/v1/images/edits`) take `multipart/form-data` with the model as a form field. The body
is parsed once (python-multipart, the parser Starlette uses) and the bytes pass on
unchanged; where a field's value lies in the body is kept, so a served name can be
spliced in without re-encoding the file parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

_SMALL = 1024  # a field we read is a short text value


@dataclass(frozen=True, slots=True)
class FormField:
    value: str
    start: int  # where its value lies in the body (-1: not in one piece)
    end: int


class FormError(ValueError):
    pass


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a `multipart/form-data` content type; None for any other type."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("multipart/form-data without a boundary")
    return boundary


def form_fields(body: bytes, boundary: bytes, wanted: frozenset[str]) -> dict[str, FormField]:
    """The `wanted` text fields of a multipart body, with where each value lies."""
    found: dict[str, FormField] = {}
    state: dict = {"name": None, "header": b"", "value": b"", "header_field": b"", "start": None, "end": None}

    def on_part_begin() -> None:
        state.update(name=None, value=b"", start=None, end=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_end() -> None:
        if state["header_field"].lower() == b"content-disposition":
            _, options = parse_options_header(state["header"])
            name = options.get(b"name")
            state["name"] = name.decode("utf-8", "replace") if name is not None else None
        state["header_field"] = state["header"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] in wanted and len(state["value"]) <= _SMALL:
            if state["start"] is None:
                state["start"] = start
            state["value"] += data[start:end]
            state["end"] = end

    def on_part_end() -> None:
        name = state["name"]
        if name in wanted and name not in found and state["start"] is not None and len(state["value"]) <= _SMALL:
            start, end = state["start"], state["end"]
            if body[start:end] != state["value"]:  # pieces came from the parser's own buffer: no single span
                start = end = -1
            found[name] = FormField(state["value"].decode("utf-8", "replace"), start, end)

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        parser.write(body)  # one write: the offsets the callbacks give are offsets into `body`
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(f"the multipart body cannot be read: {exc}") from None
    return found
