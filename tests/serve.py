#!/usr/bin/env python3
"""`rotary serve` against real clients, on the embedded tiny model (CI: tests/serve.sh).

    python3 tests/serve.py path/to/rotary

- curl: /health, /metrics, /v1/models, and the error cases (bad JSON, wrong key, too-large
  body, an unknown field type, an unknown endpoint), each with OpenAI's error shape;
- the official `openai` client when it imports (tests/serve.sh installs it in a venv; a SKIP
  line otherwise): chat completion streamed and not, /v1/completions, a tool call round trip
  (tools rendered by the template; a synthesized <tool_call> answer parsed back as tool_calls);
- greedy /v1/completions text equals `rotary run --temp 0` on the same prompt;
- the prompt cache: turn 5 of a conversation evaluates only its new tokens;
- load: 8 concurrent clients x 10 requests, each gets its own greedy answer; with a queue of 1
  some requests get 429; a client that disconnects mid-stream cancels its generation; the
  server's RSS is steady after the run.
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROTARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/rotary")
KEY = "sekrit"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def start(*extra):
    """Start the server on a free port; returns (process, base URL)."""
    p = subprocess.Popen([ROTARY, "serve", "--port", "0", *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        if "listening on http://" in line:
            base = line.split("listening on ")[1].split()[0]
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, base
    p.kill()
    raise SystemExit("rotary serve did not start")


def request(base, path, body=None, key=None, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def curl(*args):
    return subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=120).stdout


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def greedy_run(prompt, n):
    out = subprocess.run([ROTARY, "run", "-p", prompt, "-n", str(n), "--temp", "0"], capture_output=True, text=True, timeout=300)
    return out.stdout.rstrip("\n")[len(prompt):]


QWEN3_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data/qwen3/tokenizer_config.json")


def main():
    proc, base = start("--api-key", KEY)
    try:
        # curl: health without a key, the rest with it; errors in OpenAI's shape.
        out = curl(base + "/health")
        check(out.endswith("200") and '"ok"' in out, "curl /health without a key: 200")
        out = curl(base + "/v1/models")
        check(out.endswith("401") and '"authentication_error"' in out, "curl /v1/models without the key: 401")
        out = curl("-H", "Authorization: Bearer wrong", base + "/v1/models")
        check(out.endswith("401"), "a wrong key: 401")
        out = curl("-H", "Authorization: Bearer " + KEY, base + "/v1/models")
        check(out.endswith("200") and "rotary-tiny" in out, "curl /v1/models with the key: 200")
        out = curl("-H", "Authorization: Bearer " + KEY, "-d", "{bad json", base + "/v1/chat/completions")
        check(out.endswith("400") and '"invalid_request_error"' in out, "bad JSON: 400 invalid_request_error")
        out = curl("-H", "Authorization: Bearer " + KEY, "-d", '{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}', base + "/v1/chat/completions")
        check(out.endswith("400") and '"temperature"' in out, "a field of the wrong type: 400 naming it")
        big = b'{"prompt":"' + b"a" * (5 << 20) + b'"}'
        status, text = request(base, "/v1/completions", raw=big, key=KEY)
        check(status == 413 and "error" in json.loads(text), "a 5 MiB body: 413")
        out = curl("-H", "Authorization: Bearer " + KEY, base + "/v2/nothing")
        check(out.endswith("404"), "an unknown endpoint: 404")
        status, text = request(base, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, key=KEY)
        check(status == 400 and "max_tokens" in text, "max_tokens over the context: 400")

        # Greedy completion = rotary run --temp 0.
        prompt = "Once upon a time"
        status, text = request(base, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0}, key=KEY)
        got = json.loads(text)["choices"][0]["text"] if status == 200 else None
        want = greedy_run(prompt, 12)
        check(got == want, f"greedy /v1/completions equals `rotary run --temp 0` ({got!r})")

        # The prompt cache over five turns.
        messages = [{"role": "system", "content": "You are terse."}]
        cached = []
        for turn in range(5):
            messages.append({"role": "user", "content": f"Question number {turn}: what comes next?"})
            status, text = request(base, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0}, key=KEY)
            r = json.loads(text)
            messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
            cached.append((r["usage"]["prompt_tokens"], r["usage"]["prompt_tokens_details"]["cached_tokens"]))
        print("prompt / cached tokens per turn:", cached)
        # Turn 5 reuses the whole of turn 4's prompt; what it evaluates is the previous answer
        # (re-tokenized from its text) and the new question.
        check(cached[4][1] == cached[3][0], f"turn 5 evaluates only its new tokens ({cached[4][0] - cached[4][1]} of {cached[4][0]})")

        out = curl("-H", "Authorization: Bearer " + KEY, base + "/metrics")
        check("rotary_completion_tokens_total" in out and out.endswith("200"), "/metrics in Prometheus text")

        openai_client(base)
        slow_clients(base)
    finally:
        proc.terminate()
        rc = proc.wait(timeout=60)
        check(rc == 0, f"SIGTERM stops the server cleanly (exit {rc})")

    tool_round_trip()
    chat_test()
    load_test()


def slow_clients(base):
    """A client that sends half its headers and stalls is dropped after the header timeout
    (src/limits.rs: 20 s), and a 100 KiB header is refused; the server keeps answering."""
    import socket
    host, port = base.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    s.settimeout(40)
    t0 = time.time()
    try:
        data = s.recv(1024)
    except OSError:
        data = b""
    waited = time.time() - t0
    s.close()
    check(waited < 35 and not data.startswith(b"HTTP/1.1 200"), f"a stalled client is dropped after {waited:.0f} s")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n")
    s.settimeout(10)
    try:
        data = s.recv(1024)
    except OSError:
        data = b""
    s.close()
    check(data.startswith(b"HTTP/1.1 431"), f"a 100 KiB header is refused ({data[:12]!r})")
    check(request(base, "/health")[0] == 200, "the server still answers")


def openai_client(base):
    try:
        import openai
    except ImportError:
        print("SKIP openai client: the package is not installed (tests/serve.sh installs it)")
        return
    c = openai.OpenAI(base_url=base + "/v1", api_key=KEY)
    r = c.chat.completions.create(model="rotary-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8, "openai: chat completion")
    parts = []
    usage = None
    for chunk in c.chat.completions.create(model="rotary-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
                                           temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    check("".join(parts) == r.choices[0].message.content and usage and usage.completion_tokens == 8,
          "openai: streamed chat equals the non-streamed answer, usage at the end")
    r = c.completions.create(model="rotary-tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    check(len(r.choices[0].text) > 0 and r.usage.completion_tokens == 6, "openai: /v1/completions")

def tool_round_trip():
    """Tools through the official Qwen3 template (--chat-template-file; tests/fetch_data.py
    fetches it): the tools, the client's tool call and its result are all in the prompt. Random
    weights never write a <tool_call>; parsing one back is src/serve/text.rs's unit test."""
    if not os.path.exists(QWEN3_CONFIG):
        print("SKIP tool round trip: tests/data/qwen3 missing (run tests/fetch_data.py)")
        return
    try:
        import openai
    except ImportError:
        print("SKIP tool round trip: no openai package")
        return
    template = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rotary-qwen3-template-{os.getpid()}.jinja")
    with open(QWEN3_CONFIG) as f, open(template, "w") as out:
        out.write(json.load(f)["chat_template"])
    proc, base = start("--chat-template-file", template)
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="none")
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        r = c.chat.completions.create(model="rotary-tiny", messages=messages, tools=tools, max_tokens=4, temperature=0)
        plain = c.chat.completions.create(model="rotary-tiny", messages=messages[:1], max_tokens=4, temperature=0)
        check(r.usage.prompt_tokens > plain.usage.prompt_tokens + 100 and r.choices[0].finish_reason in ("length", "stop", "tool_calls"),
              f"openai: tools, a tool call and its result render through Qwen3's template ({r.usage.prompt_tokens} vs {plain.usage.prompt_tokens} prompt tokens)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        os.remove(template)


def chat_test():
    """`rotary chat` through a pseudo-terminal: two turns; the second evaluates only its new
    tokens (the first turn's prompt comes from the cache)."""
    import pty
    import re
    master, slave = pty.openpty()
    p = subprocess.Popen([ROTARY, "chat", "-n", "8", "--temp", "0"], stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    def drain():  # the terminal's output (the answers), read so that the pty never fills
        try:
            while os.read(master, 4096):
                pass
        except OSError:
            pass  # the chat ended and closed its side

    threading.Thread(target=drain, daemon=True).start()
    stats = []
    try:
        for line in ["Hello there\n", "And a second question?\n", "/exit\n"]:
            os.write(master, line.encode())
            if line.startswith("/"):
                break
            while True:
                err = p.stderr.readline()
                if not err:
                    break
                m = re.search(r"\(prompt (\d+) tokens, (\d+) from the cache", err)
                if m:
                    stats.append((int(m.group(1)), int(m.group(2))))
                    break
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    print("chat turns (prompt, cached):", stats)
    check(len(stats) == 2 and stats[0][1] == 0 and stats[1][1] >= stats[0][0], "rotary chat: turn 2 reuses turn 1's prompt from the cache")
    check(rc == 0, f"rotary chat: /exit ends it (exit {rc})")


def load_test():
    proc, base = start("--queue", "64")
    try:
        prompts = [f"Story {i}:" for i in range(8)]
        want = {}
        for p in prompts:
            s, t = request(base, "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0})
            want[p] = json.loads(t)["choices"][0]["text"]
        rss0 = rss_kib(proc.pid)
        results, lock = [], threading.Lock()

        def client(p):
            for _ in range(10):
                s, t = request(base, "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0})
                with lock:
                    results.append((p, s, json.loads(t)["choices"][0]["text"] if s == 200 else t))

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(p,)) for p in prompts]
        [t.start() for t in threads]
        [t.join(timeout=600) for t in threads]
        ok = [r for r in results if r[1] == 200 and r[2] == want[r[0]]]
        check(len(results) == 80 and len(ok) == 80, f"load: 8 clients x 10 requests, {len(ok)} of {len(results)} right in {time.time() - t0:.1f} s")
        rss1 = rss_kib(proc.pid)
        check(rss1 < rss0 * 1.25 + 20 * 1024, f"RSS steady over the load ({rss0} -> {rss1} KiB)")

        # Disconnect: a long streamed answer, dropped after the first chunk, must stop early.
        def generated():
            m = request(base, "/metrics")[1]
            return float(m.split("\nrotary_completion_tokens_total ")[1].split("\n")[0])

        before = generated()
        req = urllib.request.Request(base + "/v1/completions", data=json.dumps({"prompt": "Long", "max_tokens": 3000, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        r = urllib.request.urlopen(req, timeout=60)
        r.readline()
        r.close()
        time.sleep(2)
        s, t = request(base, "/v1/completions", {"prompt": "After", "max_tokens": 2, "temperature": 0})
        dropped = generated() - before - 2
        check(s == 200 and dropped < 1500, f"a disconnected client cancels its generation ({dropped:.0f} of 3000 tokens generated)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    # A queue of one: a burst gets some 429s, none lost.
    proc, base = start("--queue", "1")
    try:
        codes, lock = [], threading.Lock()

        def burst():
            s, _ = request(base, "/v1/completions", {"prompt": "Burst", "max_tokens": 32, "temperature": 0})
            with lock:
                codes.append(s)

        threads = [threading.Thread(target=burst) for _ in range(8)]
        [t.start() for t in threads]
        [t.join(timeout=300) for t in threads]
        check(len(codes) == 8 and 429 in codes and 200 in codes and set(codes) <= {200, 429},
              f"queue of 1: a burst of 8 gets 200s and 429s ({sorted(codes)})")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
    print(f"serve tests: {len(failures)} failed" + ("".join("\n  " + f for f in failures)))
    sys.exit(1 if failures else 0)
