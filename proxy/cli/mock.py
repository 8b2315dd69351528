"""``quotagate mock-upstream``: the OpenAI-compatible mock provider (proxy/mock/) on its own."""

from __future__ import annotations

import argparse

FAULTS = """\
fault modes and behaviour, per request: a `mock` object in the JSON body, or `x-mock-<name>` headers
(`-` or `_` in names; the body wins):
  status=N             answer HTTP N with an error body
  error_shape=S        that error body's shape: openai | vllm | sglang | anthropic | azure | text (default: openai;
                       anthropic on /v1/messages)
  delay_s=F            sleep F seconds before the response headers (timeouts)
  cut_after=N          streams: drop the connection after N content chunks
  error_after=N        streams: an in-band error event after N content chunks
  output_tokens=N      generate N tokens (default: --output-tokens; still capped by max_tokens)
  no_usage=true        leave usage out of the response entirely
  cached_tokens=N      report N cached prompt tokens
  reasoning_tokens=N   add N reasoning tokens (part of the completion tokens)
  tpot_s=F             seconds per output token for this request (default: --tpot)
  service_tier=NAME    say the answer was served at this tier (default: the tier asked for, else standard)
example: curl -H 'x-mock-status: 429' ...   or   {"model": ..., "mock": {"cut_after": 3}}
the last requests received are at GET /_mock/requests (DELETE clears them)
"""


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from ..mock import MockConfig, run

    run(
        args.host,
        args.port,
        MockConfig(
            ttft_per_1k_input_s=args.ttft_per_1k,
            base_ttft_s=args.base_ttft,
            tpot_s=args.tpot,
            default_output_tokens=args.output_tokens,
            api_key=args.api_key,
            tokenizer=args.tokenizer,
        ),
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "mock-upstream",
        help="an OpenAI-compatible mock provider with a latency model and fault modes",
        description="An OpenAI-compatible mock provider for demos, tests and benchmarks (`quotagate serve` "
        "starts one itself for a `kind: mock` provider with no base_url).",
        epilog=FAULTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    m.add_argument("--port", type=int, default=9000, help="listen port (default: %(default)s)")
    m.add_argument(
        "--ttft-per-1k", type=float, default=0.0, help="seconds of time-to-first-token per 1K input tokens (default: 0)"
    )
    m.add_argument("--base-ttft", type=float, default=0.0, help="fixed seconds before the first token (default: 0)")
    m.add_argument("--tpot", type=float, default=0.0, help="seconds per output token (default: 0)")
    m.add_argument("--output-tokens", type=int, default=16, help="tokens per answer (default: %(default)s)")
    m.add_argument("--api-key", help="require `Authorization: Bearer KEY` (default: accept any request)")
    m.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a Hugging Face tokenizer.json (its chat template beside it): serve vLLM's POST /tokenize and count "
        "prompt usage with it (default: none; usage counted with the bundled encodings)",
    )
    m.set_defaults(fn=cmd_mock_upstream)
