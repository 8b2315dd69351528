"""Per-message cache benchmark: first count of a 50-turn ~100K-token chat vs. the same chat re-sent
with one new user message (what every turn of an agent loop looks like to the proxy).

    .venv/bin/python bench/count_cache.py [--rounds 7]

Every re-send is a fresh JSON parse of the conversation (new str objects, so no cached str hashes),
done outside the timed region, exactly as a request body arrives. Target: re-send >= 20x faster.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import orjson

from proxy.count import Counter

VOCAB = (
    "the of and to in is that for it as with was on be by this are from at or an have not they which one "
    "you had his her all were there can when your more if will would about out up what into some than "
    "function return value error request token budget limit proxy stream upstream latency cache model "
    "2026 42 3.14 {} [] () => != == <= >= :: -> /api/v1 user_id snake_case CamelCase naïve café 東京"
)
WORDS = VOCAB.split()


def build_conversation(turns: int = 50, tokens_per_message: int = 1000, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a meticulous coding assistant."}]
    for turn in range(turns):
        for role in ("user", "assistant"):
            words = rng.choices(WORDS, k=int(tokens_per_message * 0.85))
            messages.append({"role": role, "content": f"[{role} turn {turn}] " + " ".join(words)})
    return messages


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()

    body = orjson.dumps(build_conversation())
    conversation = orjson.loads(body)
    tokens = Counter().chat(conversation, None, model=args.model, encoding=None).tokens
    print(f"conversation: {len(conversation)} messages, {len(body):,} bytes, {tokens:,} tokens ({args.model})")

    firsts = []
    for _ in range(args.rounds):
        fresh = orjson.loads(body)
        counter = Counter()
        firsts.append(timed(lambda c=counter, m=fresh: c.chat(m, None, model=args.model, encoding=None)))

    counter = Counter()
    counter.chat(orjson.loads(body), None, model=args.model, encoding=None)
    resends = []
    for i in range(args.rounds * 3):
        resent = orjson.loads(body)
        resent.append({"role": "user", "content": f"Round {i}: now please also handle the empty-input case."})
        resends.append(timed(lambda m=resent: counter.chat(m, None, model=args.model, encoding=None)))

    first, resend = statistics.median(firsts), statistics.median(resends)
    print(f"first count (fresh Counter), median of {len(firsts)}: {first * 1e3:8.2f} ms")
    print(f"re-send + 1 new message,     median of {len(resends)}: {resend * 1e3:8.2f} ms")
    print(f"ratio: {first / resend:.0f}x (target >= 20x)   cache: {counter.stats}")


if __name__ == "__main__":
    main()
