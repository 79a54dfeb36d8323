"""What OpenAI clients expect of an OpenAI-compatible server, when oversight is in the way.

`errors`: the OpenAI error shape for every gateway error on a `/v1` route. `completions`:
an answer a human wrote, built as a `chat.completion` (or `text_completion`), and any
complete answer replayed as the stream a streaming client asked for.
"""
