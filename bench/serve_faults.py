"""Fault and soak suite for `liveavatar-rt serve` (issue 15): careless and hostile clients over
loopback, then a long run of sessions, against real server processes.

    nice .venv/bin/python bench/serve_faults.py                  # ~15 min on 2 shared cores
    nice .venv/bin/python bench/serve_faults.py --quick          # 5 stuck-slot runs, 20 + 8 soak sessions
    .venv/bin/python bench/serve_faults.py --json out/serve_faults.json

Starts `python -m liveavatar_rt serve --model tiny` three times (one at a time, 127.0.0.1,
OMP_NUM_THREADS=1): A `--max-sessions 2`, B `--token ... --max-sessions 2`, C `--max-sessions 4`
(the soak). Prints one table: case, result, detail, server RSS before/after the case (MiB), and
"freed": seconds from the moment the session's end was decided (the client left, or received
its error / done) to /healthz showing the slot free again (polled every 10 ms). Then the soak:
200 sequential sessions and rounds of 4 concurrent ones, with RSS and thread count over time.
Every loop is bounded; a case that raises is reported as FAIL with its exception.

Sessions use the example portrait at 64x64 (the smallest accepted side) and 1.5 s of the
example speech, so the suite measures the server, not the model; every tenth soak session uses
one of 6 other images, so the per-image conditioning cache (4 entries) both hits and evicts.
Soak samples (RSS, threads) are read 1 s after the last session's slot was freed: the server
at rest between sessions (its teardown trims the allocator once the worker thread is gone).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from liveavatar_rt.io.audio_file import read_audio  # noqa: E402
from liveavatar_rt.serve.client import ServerError, StreamClient  # noqa: E402

SECRET = "S3CRET-bench-token"
FREED_OK_S = 2.0  # the bound: no slot held longer than this after its client is gone
SETTLE_S = 1.0  # soak samples are taken this long after the last session's slot was freed
MiB = 2 ** 20


# ---- a server process ------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, *flags: str, token: str | None = None):
        self.name, self.token = name, token
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = Path(tempfile.mkstemp(prefix=f"serve_faults_{name}_", suffix=".log")[1])
        cmd = [sys.executable, "-m", "liveavatar_rt", "serve", "--model", "tiny", "--port", str(self.port),
               "--log-level", "info", *flags] + (["--token", token] if token else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server {name} exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"server {name} did not come up in 300 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return json.loads(r.read())

    def sessions(self) -> int:
        return self.health()["sessions"]

    def proc_status(self) -> tuple[float, int]:
        """(RSS MiB, threads) of the server process, from /proc."""
        rss, threads = float("nan"), -1
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        return rss, threads

    def rss(self) -> float:
        return self.proc_status()[0]

    def wait_free(self, since: float, target: int = 0, timeout: float = 60.0) -> float:
        """Seconds from `since` until /healthz shows `target` sessions (inf if it never does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sessions() <= target:
                return time.monotonic() - since
            time.sleep(0.01)
        return float("inf")

    def metrics(self) -> str:
        req = urllib.request.Request(self.url + "/metrics",
                                     headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def errors(self) -> dict[str, int]:
        out = {}
        for line in self.metrics().splitlines():
            if line.startswith("liveavatar_errors_total{code="):
                out[line.split('"')[1]] = int(float(line.split()[-1]))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


# ---- the table -------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    ok: bool = False
    detail: str = ""
    rss_before: float = float("nan")
    rss_after: float = float("nan")
    freed_s: float | None = None
    extra: dict = field(default_factory=dict)


ONLY: str | None = None  # --only: run the cases whose name contains this


def run_case(rows: list[Row], srv: Server, name: str, fn) -> Row | None:
    if ONLY and ONLY not in name:
        return None
    row = Row(f"{name} [{srv.name}]")
    row.rss_before = srv.rss()
    try:
        fn(row)
    except Exception as e:  # a probe that breaks is a failed case, and the suite goes on
        row.ok, row.detail = False, f"{type(e).__name__}: {e}"[:160]
    row.rss_after = srv.rss()
    rows.append(row)
    freed = "" if row.freed_s is None else f"{row.freed_s:.2f}"
    print(f"  {row.case:42s} {'ok' if row.ok else 'FAIL':4s} {freed:>6s}  {row.detail}", flush=True)
    return row


def print_table(rows: list[Row]) -> str:
    lines = ["| case | result | detail | RSS before MiB | RSS after MiB | slot freed s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        freed = "-" if r.freed_s is None else f"{r.freed_s:.2f}"
        lines.append(f"| {r.case} | {'ok' if r.ok else '**FAIL**'} | {r.detail} | {r.rss_before:.0f} | "
                     f"{r.rss_after:.0f} | {freed} |")
    return "\n".join(lines)


# ---- inputs ----------------------------------------------------------------------------------
def png(side: int = 64, seed: int | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    if seed is None:
        im = Image.open(ROOT / "assets/example/portrait.png").convert("RGB").resize((side, side))
    else:
        im = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def start_json(image: bytes, fmt: str = "s16le", rate: int = 16000, channels: int = 1) -> str:
    import base64

    return json.dumps({"type": "start", "image": base64.b64encode(image).decode(),
                       "audio": {"format": fmt, "sample_rate": rate, "channels": channels}})


def read_error(ws, timeout: float = 60.0) -> tuple[dict | None, int | None]:
    """Skip media until the first JSON error; then the close code that follows. (err, close)."""
    err = None
    try:
        for _ in range(1000):
            msg = ws.recv(timeout=timeout)
            if isinstance(msg, str) and json.loads(msg).get("type") == "error":
                err = json.loads(msg)
                break
        for _ in range(100):
            ws.recv(timeout=timeout)
    except ConnectionClosed as e:
        return err, e.rcvd.code if e.rcvd is not None else None
    except TimeoutError:
        return err, None
    return err, None


def session(srv: Server, image: bytes, pcm: np.ndarray, rate: int, token: str | None = None) -> StreamClient:
    """A whole session with instant acks; returns the client after "done" (not closed)."""
    c = StreamClient(srv.ws_url, token=token, timeout=60)
    c.start(image, sample_rate=rate)
    c.send_audio(pcm)
    c.end()
    for _ in c.segments(timeout=60, limit=1000):
        pass
    return c


# ---- the probes ------------------------------------------------------------------------------
def probe_stuck_slot(srv, image, pcm, rate, runs):
    def fn(row):
        worst, stuck = 0.0, 0
        for _ in range(runs):
            srv.wait_free(time.monotonic(), timeout=30)
            c = session(srv, image, pcm, rate)
            t_done = time.monotonic()
            try:
                c.ws.recv(timeout=5)  # the page does not close after done: the server must
                closed = False
            except ConnectionClosed:
                closed = True
            except TimeoutError:
                closed = False
            freed = srv.wait_free(t_done, timeout=10)
            stuck += (not closed) or freed > FREED_OK_S
            worst = max(worst, freed)
            c.close()
        row.ok, row.freed_s = stuck == 0, worst
        row.detail = f"{runs - stuck}/{runs} closed by the server and freed (worst {worst:.2f} s)"
    return fn


def probe_refusal(srv, code, close_code, connect_kw, messages=(), http=None):
    """Connect (connect_kw), send messages, expect {"type": "error", "code": code} + close."""
    def fn(row):
        if http is not None:
            req = urllib.request.Request(srv.url + http[0], headers=http[1])
            try:
                urllib.request.urlopen(req, timeout=10)
                status, body = 200, ""
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read().decode()
            got = json.loads(body).get("code") if body.startswith("{") else None
            row.ok, row.detail = status == 400 and got == code, f"HTTP {status} code={got}"
            return
        kw = dict(open_timeout=10, close_timeout=10, max_size=2 ** 24, **connect_kw)
        url = kw.pop("url", srv.ws_url)
        with connect(url, **kw) as ws:
            try:
                for m in messages:
                    ws.send(m)
            except ConnectionClosed:
                pass
            err, closed = read_error(ws)
            t = time.monotonic()
        row.freed_s = srv.wait_free(t, timeout=30)
        got = err and err.get("code")
        row.ok = got == code and closed == close_code and row.freed_s <= FREED_OK_S
        row.detail = f"error {got}, close {closed}"
    return fn


def probe_oversize(srv, n=18, size=50 * 10 ** 6):
    def fn(row):
        got, deflate = [], None
        zeros = b"\x00" * size
        for _ in range(n):
            with connect(srv.ws_url, open_timeout=10, close_timeout=10) as ws:  # offers permessage-deflate
                deflate = ws.response.headers.get("Sec-WebSocket-Extensions")
                try:
                    ws.send(zeros)
                except ConnectionClosed:
                    pass
                err, closed = read_error(ws, 30)
                got.append((err or {}).get("code") == "message_too_large" and closed == 1009)
        row.freed_s = srv.wait_free(time.monotonic(), timeout=30)
        growth = srv.rss() - row.rss_before
        row.ok = all(got) and deflate is None and growth < 50
        row.detail = (f"{sum(got)}/{n} JSON message_too_large + 1009; deflate "
                      f"{'off' if deflate is None else 'ON'}; RSS {growth:+.0f} MiB")
    return fn


def probe_timeout(srv, image, pcm, rate, code, audio_s=0.0, end=False, ack=True):
    def fn(row):
        t0 = time.monotonic()
        c = StreamClient(srv.ws_url, timeout=120)
        try:
            c.start(image, sample_rate=rate)
            if audio_s:
                c.send_audio(pcm[:int(audio_s * rate)])
            if end:
                c.end()
            try:
                for _ in range(10000):
                    c.next_segment(timeout=120, ack=ack)
                err = None
            except ServerError as e:
                err = e.code
            t_err = time.monotonic()
            row.freed_s = srv.wait_free(t_err, timeout=30)
        finally:
            c.close()
        row.ok = err == code and row.freed_s <= FREED_OK_S
        row.detail = f"error {err} after {t_err - t0:.1f} s"
    return fn


def probe_no_start(srv):
    def fn(row):
        t0 = time.monotonic()
        with connect(srv.ws_url, open_timeout=10, close_timeout=10) as ws:
            err, closed = read_error(ws, 60)
            t_err = time.monotonic()
        row.freed_s = srv.wait_free(t_err, timeout=30)
        got = err and err.get("code")
        row.ok = got == "start_timeout" and closed == 1008 and row.freed_s <= FREED_OK_S
        row.detail = f"error {got} after {t_err - t0:.1f} s, close {closed}"
    return fn


def probe_heavy_audio(srv, image, seconds=10.0):
    """96 kHz stereo f32 as fast as the socket takes it, /healthz latency meanwhile; then the
    client vanishes (no close handshake)."""
    def fn(row):
        lat_idle = latencies(srv, 2.0)
        rate = 96000
        chunk = (np.random.default_rng(0).standard_normal((rate // 10, 2)) * 0.1).astype("<f4").tobytes()
        c = StreamClient(srv.ws_url, timeout=60, max_size=2 ** 24)
        c.start(image, sample_rate=rate, fmt="f32le", channels=2)
        stop, sent = threading.Event(), [0]

        def push():
            try:
                while not stop.is_set():
                    c.ws.send(chunk)
                    sent[0] += 1
            except (ConnectionClosed, OSError):
                pass

        def drain():  # read (and ack) what comes back, like a player
            try:
                while not stop.is_set():
                    c.next_segment(timeout=1)
            except (ConnectionClosed, OSError, TimeoutError, RuntimeError, ServerError):
                pass

        threads = [threading.Thread(target=push, daemon=True), threading.Thread(target=drain, daemon=True)]
        for t in threads:
            t.start()
        lat_busy = latencies(srv, seconds)
        stop.set()
        c.ws.socket.shutdown(socket.SHUT_RDWR)
        c.ws.socket.close()
        t_gone = time.monotonic()
        row.freed_s = srv.wait_free(t_gone, timeout=60)
        for t in threads:
            t.join(5)
        p99_idle, p99_busy = np.percentile(lat_idle, 99) * 1e3, np.percentile(lat_busy, 99) * 1e3
        row.ok = p99_busy < 100 and row.freed_s <= FREED_OK_S
        row.detail = (f"{sent[0] / 10:.0f} s of audio sent; /healthz p99 {p99_idle:.0f} ms idle, "
                      f"{p99_busy:.0f} ms while pushing (p50 {np.median(lat_busy) * 1e3:.0f})")
        row.extra = {"p99_idle_ms": p99_idle, "p99_busy_ms": p99_busy, "audio_s_sent": sent[0] / 10}
    return fn


def latencies(srv: Server, seconds: float) -> list[float]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        srv.health()
        out.append(time.perf_counter() - t)
        time.sleep(0.02)
    return out


def probe_abrupt(srv, image, pcm, rate):
    def fn(row):
        c = StreamClient(srv.ws_url, timeout=60)
        c.start(image, sample_rate=rate)
        c.send_audio(pcm)
        c.next_segment(timeout=60)
        c.ws.socket.shutdown(socket.SHUT_RDWR)
        c.ws.socket.close()
        row.freed_s = srv.wait_free(time.monotonic(), timeout=30)
        row.ok, row.detail = row.freed_s <= FREED_OK_S, "TCP dropped mid-stream"
    return fn


def probe_busy(srv, capacity):
    def fn(row):
        with contextlib.ExitStack() as stack:
            for _ in range(capacity):
                stack.enter_context(connect(srv.ws_url, open_timeout=10))
            t0 = time.monotonic()
            with connect(srv.ws_url, open_timeout=10) as ws:
                err, closed = read_error(ws, 10)
            took = time.monotonic() - t0
        row.freed_s = srv.wait_free(time.monotonic(), timeout=30)
        got = err and err.get("code")
        row.ok = got == "busy" and closed == 1013 and took < 1 and row.freed_s <= FREED_OK_S
        row.detail = f"error {got}, close {closed} in {took * 1e3:.0f} ms"
    return fn


def probe_log(srv):
    def fn(row):
        urllib.request.urlopen(srv.url + f"/metrics?token={SECRET}", timeout=10).read()
        with connect(srv.ws_url + f"?token={SECRET}", open_timeout=10) as ws:
            ws.send(start_json(b"not an image"))
            read_error(ws, 30)
        time.sleep(0.5)
        log = srv.log_path.read_text(errors="replace")
        row.ok = SECRET not in log and "?token=***" in log
        row.detail = (f"token {'FOUND' if SECRET in log else 'absent'} in {len(log.splitlines())} log lines; "
                      f"'?token=***' x{log.count('?token=***')}")
    return fn


def probe_counted(srv, expected: dict[str, int]):
    def fn(row):
        got = srv.errors()
        short = {k: (got.get(k, 0), v) for k, v in expected.items() if got.get(k, 0) < v}
        row.ok = not short
        row.detail = ", ".join(f"{k} {got.get(k, 0)}" for k in sorted(expected)) + (f"; SHORT {short}" if short else "")
    return fn


def probe_tracebacks(srv):
    def fn(row):
        log = srv.log_path.read_text(errors="replace")
        n = log.count("Traceback (most recent call last)")
        row.ok, row.detail = n == 0, f"{n} tracebacks in the server log"
    return fn


# ---- the soak ----------------------------------------------------------------------------------
def soak(srv, image, others, pcm, rate, sequential, rounds, concurrent=4):
    samples = []

    def sample(label, done):
        time.sleep(SETTLE_S)  # the state between sessions, not the moment a teardown finishes
        rss, threads = srv.proc_status()
        samples.append({"phase": label, "sessions": done, "rss_mib": round(rss, 1), "threads": threads})
        print(f"  soak {label:10s} {done:4d} sessions  RSS {rss:6.0f} MiB  threads {threads}", flush=True)

    sample("start", 0)
    failures, worst_freed = 0, 0.0
    marks = {1, 10, 20, sequential} | set(range(25, sequential + 1, 25))
    for i in range(1, sequential + 1):
        img = others[(i // 10) % len(others)] if i % 10 == 0 else image
        try:
            c = session(srv, img, pcm, rate)
            t_done = time.monotonic()
            c.close()
            worst_freed = max(worst_freed, srv.wait_free(t_done, timeout=30))
        except Exception as e:  # counted; the soak goes on
            failures += 1
            print(f"  soak session {i} failed: {e!r}", flush=True)
        if i in marks:
            sample("sequential", i)
    for r in range(1, rounds + 1):
        results = [None] * concurrent

        def one(k):
            try:
                c = session(srv, others[k % len(others)] if k else image, pcm, rate)
                c.close()
                results[k] = True
            except Exception as e:  # reported below
                results[k] = e

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        t_done = time.monotonic()
        worst_freed = max(worst_freed, srv.wait_free(t_done, timeout=30))
        bad = [x for x in results if x is not True]
        failures += len(bad)
        for x in bad:
            print(f"  soak round {r} failed: {x!r}", flush=True)
        sample("concurrent", sequential + r * concurrent)
    return samples, failures, worst_freed


# ---- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the suite itself)")
    ap.add_argument("--stuck-runs", type=int, default=50)
    ap.add_argument("--sequential", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of 4 concurrent sessions")
    ap.add_argument("--only", default=None, help="run only the probes whose name contains this (no soak)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    global ONLY
    ONLY = args.only
    if args.only:
        args.sequential = args.rounds = 0
    if args.quick:
        args.stuck_runs, args.sequential, args.rounds = 5, 20, 2
    t_start = time.monotonic()
    speech, rate = read_audio(ROOT / "assets/example/speech.wav")
    pcm = speech[:int(1.5 * rate)]
    image = png()
    others = [png(seed=s) for s in range(6)]
    rows: list[Row] = []
    deep = "[" * 100000 + "]" * 100000

    print("server A: --max-sessions 2, no token", flush=True)
    a = Server("A", "--max-sessions", "2")
    try:
        evil = {"origin": "http://evil.example"}
        run_case(rows, a, f"stuck slot after done x{args.stuck_runs}", probe_stuck_slot(a, image, pcm, rate,
                                                                                        args.stuck_runs))
        run_case(rows, a, "cross-origin websocket", probe_refusal(a, "bad_origin", 1008, evil))
        sock = socket.create_connection(("127.0.0.1", a.port))
        run_case(rows, a, "foreign Host on /ws", probe_refusal(
            a, "bad_host", 1008, {"url": f"ws://rebind.evil.example:{a.port}/ws", "sock": sock}))
        run_case(rows, a, "foreign Host on /metrics", probe_refusal(
            a, "bad_host", None, {}, http=("/metrics", {"Host": f"rebind.evil.example:{a.port}"})))
        run_case(rows, a, "50 MB zeros (deflate offered) x18", probe_oversize(a))
        run_case(rows, a, "nested JSON before start", probe_refusal(a, "bad_json", 1003, {}, [deep]))
        run_case(rows, a, "nested JSON after ready", probe_refusal(
            a, "bad_json", 1003, {}, [start_json(image), '{"a":' * 5000]))
        for fmt in ("GIF", "TIFF"):
            run_case(rows, a, f"{fmt} portrait", probe_refusal(a, "bad_image", 1008, {}, [start_json(png(fmt=fmt))]))
        run_case(rows, a, "no start (squat)", probe_no_start(a))
        run_case(rows, a, "start, no audio (squat)", probe_timeout(a, image, pcm, rate, "audio_timeout"))
        run_case(rows, a, "audio then nothing (silence cap)", probe_timeout(a, image, pcm, rate, "idle_timeout",
                                                                            audio_s=0.5))
        run_case(rows, a, "end, never ack", probe_timeout(a, image, pcm, rate, "ack_timeout", audio_s=1.5,
                                                          end=True, ack=False))
        run_case(rows, a, "96 kHz stereo f32 flood, then vanish", probe_heavy_audio(a, image))
        run_case(rows, a, "TCP drop mid-stream", probe_abrupt(a, image, pcm, rate))
        run_case(rows, a, "capacity (busy)", probe_busy(a, 2))
        run_case(rows, a, "every refusal counted in /metrics", probe_counted(a, {
            "bad_origin": 1, "bad_host": 2, "message_too_large": 18, "bad_json": 2, "bad_image": 2,
            "start_timeout": 1, "audio_timeout": 1, "idle_timeout": 1, "ack_timeout": 1, "busy": 1}))
        run_case(rows, a, "no tracebacks", probe_tracebacks(a))
    finally:
        a.stop()

    print("server B: --token, --max-sessions 2", flush=True)
    b = Server("B", "--max-sessions", "2", token=SECRET)
    try:
        auth = {"additional_headers": {"Authorization": f"Bearer {SECRET}"}}
        run_case(rows, b, "cross-origin websocket with the token", probe_refusal(
            b, "bad_origin", 1008, {"origin": "http://evil.example", **auth}))
        run_case(rows, b, "no token", probe_refusal(b, "unauthorized", 1008, {}))
        run_case(rows, b, "token never in the log", probe_log(b))
        run_case(rows, b, "every refusal counted in /metrics", probe_counted(b, {"bad_origin": 1, "unauthorized": 1}))
    finally:
        b.stop()

    samples = []
    if args.sequential or args.rounds:
        samples = run_soak(rows, args, image, others, pcm, rate)
    report(rows, samples, args, t_start)


def run_soak(rows, args, image, others, pcm, rate) -> list[dict]:
    print(f"server C: --max-sessions 4; soak of {args.sequential} sequential + {args.rounds} x 4 concurrent",
          flush=True)
    c = Server("C", "--max-sessions", "4")
    try:
        soak_row = Row(f"soak {args.sequential} sequential + {args.rounds}x4 concurrent [C]")
        soak_row.rss_before = c.rss()
        samples, failures, worst = soak(c, image, others, pcm, rate, args.sequential, args.rounds)
        soak_row.rss_after, soak_row.freed_s = c.rss(), worst
        by = {s["sessions"]: s for s in samples if s["phase"] == "sequential"}
        ref = by.get(20, samples[1] if len(samples) > 1 else samples[0])
        last = by.get(args.sequential, samples[-1])
        growth = (last["rss_mib"] - ref["rss_mib"]) / ref["rss_mib"]
        start_threads = samples[0]["threads"]
        soak_row.ok = failures == 0 and abs(growth) <= 0.15 and worst <= FREED_OK_S
        soak_row.detail = (f"{failures} failed; RSS {ref['rss_mib']:.0f} MiB after {ref['sessions']} -> "
                           f"{last['rss_mib']:.0f} after {last['sessions']} ({growth * 100:+.1f} %); threads "
                           f"{start_threads} at start, {samples[-1]['threads']} at the end")
        soak_row.extra = {"samples": samples}
        rows.append(soak_row)
        print(f"  {soak_row.case:42s} {'ok' if soak_row.ok else 'FAIL'}  {soak_row.detail}", flush=True)
        run_case(rows, c, "no tracebacks", probe_tracebacks(c))
    finally:
        c.stop()
    return samples


def report(rows, samples, args, t_start) -> None:
    table = print_table(rows)
    print("\n" + table)
    print("\nsoak samples (sessions, RSS MiB, threads):")
    for s in samples:
        print(f"  {s['phase']:10s} {s['sessions']:4d}  {s['rss_mib']:7.1f}  {s['threads']}")
    n_ok = sum(r.ok for r in rows)
    load = os.getloadavg()
    print(f"\n{n_ok}/{len(rows)} ok in {time.monotonic() - t_start:.0f} s; load average {load[0]:.1f} on "
          f"{os.cpu_count()} CPUs; python {platform.python_version()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "rows": [asdict(r) for r in rows], "soak": samples, "args": vars(args),
            "machine": {"cpus": os.cpu_count(), "load_average_1m": load[0], "python": platform.python_version(),
                        "platform": platform.platform()}}, indent=1, default=str))
    sys.exit(0 if n_ok == len(rows) else 1)


if __name__ == "__main__":
    main()
