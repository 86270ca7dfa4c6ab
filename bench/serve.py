#!/usr/bin/env python3
"""`rotary serve` speed, measured against `rotary run` in the same session.

    python3 bench/serve.py path/to/rotary [-m MODEL] [--reps 5]

1. Time to first token on turn 5 of a conversation, with the prompt cache (turns 1-4 went
   before on the same server) and without (another conversation evicted it first).
2. Decode tok/s of a 128-token greedy completion through the server (streamed; tokens after
   the first over the time after the first) against `rotary run --temp 0 -n 128`'s own decode
   tok/s on the same prompt. Each figure: min and median of --reps runs, interleaved.
"""
import argparse
import json
import re
import statistics
import subprocess
import time
import urllib.request


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)


def stream_times(base, path, body):
    """(seconds to the first content chunk, seconds to the end, chunks with text)."""
    t0 = time.perf_counter()
    first, n = None, 0
    with post(base, path, dict(body, stream=True)) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            ch = c["choices"][0] if c.get("choices") else {}
            text = ch.get("text") or (ch.get("delta") or {}).get("content")
            if text:
                n += 1
                first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rotary")
    ap.add_argument("-m", "--model")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    model = ["-m", a.model] if a.model else []
    p = subprocess.Popen([a.rotary, "serve", "--port", "0", *model], stderr=subprocess.PIPE, text=True)
    base = None
    for line in p.stderr:
        if "listening on http://" in line:
            base = line.split("listening on ")[1].split()[0]
            break
    try:
        convo = [{"role": "system", "content": "You are a helpful assistant."}]
        for turn in range(4):
            convo.append({"role": "user", "content": f"Tell me about topic number {turn} in a few words, please."})
            r = json.load(post(base, "/v1/chat/completions", {"messages": convo, "max_tokens": 24, "temperature": 0}))
            convo.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
        turn5 = convo + [{"role": "user", "content": "And now the fifth question, briefly?"}]
        other = [{"role": "user", "content": "Something else entirely."}]
        cached, cold = [], []
        for _ in range(a.reps):
            # Cold: another conversation first, so nothing of turn 5's prompt is cached.
            json.load(post(base, "/v1/chat/completions", {"messages": other, "max_tokens": 1, "temperature": 0}))
            cold.append(stream_times(base, "/v1/chat/completions", {"messages": turn5, "max_tokens": 1, "temperature": 0})[0])
            # Warm: turns 1-4 (and turn 5's own prompt) again, then turn 5 from the cache.
            json.load(post(base, "/v1/chat/completions", {"messages": convo[:-1], "max_tokens": 1, "temperature": 0}))
            cached.append(stream_times(base, "/v1/chat/completions", {"messages": turn5, "max_tokens": 1, "temperature": 0})[0])
        usage = json.load(post(base, "/v1/chat/completions", {"messages": turn5, "max_tokens": 1, "temperature": 0}))["usage"]
        prompt = "Once upon a time"
        served, ran = [], []
        for _ in range(a.reps):
            first, total, n = stream_times(base, "/v1/completions", {"prompt": prompt, "max_tokens": 128, "temperature": 0})
            served.append((n - 1) / (total - first))
            out = subprocess.run([a.rotary, "run", *model, "-p", prompt, "-n", "128", "--temp", "0"], capture_output=True, text=True)
            ran.append(float(re.search(r"decode: \d+ tokens, ([\d.]+) tok/s", out.stderr).group(1)))
    finally:
        p.terminate()
        p.wait()
    ms = lambda xs: f"min {min(xs) * 1e3:.1f} ms, median {statistics.median(xs) * 1e3:.1f} ms"
    print(f"turn-5 prompt: {usage['prompt_tokens']} tokens")
    print(f"time to first token, turn 5, prompt cache: {ms(cached)}")
    print(f"time to first token, turn 5, no cache:     {ms(cold)}")
    med_s, med_r = statistics.median(served), statistics.median(ran)
    print(f"decode through the server: median {med_s:.1f} tok/s (max {max(served):.1f}); rotary run: median {med_r:.1f} tok/s (max {max(ran):.1f})")
    print(f"server / run: {med_s / med_r:.3f} (overhead {100 * (1 - med_s / med_r):.1f}%)")


if __name__ == "__main__":
    main()
