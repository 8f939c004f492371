"""A runtime that speaks the SD WebUI API and takes a fixed time per image: the agent's measuring instrument.

It isolates the agent's own cost (with a real runtime, generation time hides it) and can misbehave on request,
for fault-injection runs. A prompt starting with `fault:` picks a behaviour for calls carrying that prompt:

- `fault:500x<N>:<tag>`  answer 500 to the first N calls with this prompt, then succeed
- `fault:500:<tag>`      always answer 500
- `fault:hang:<tag>`     sleep far past any agent timeout (until interrupted)
- `fault:garbage:<tag>`  answer 200 with a body that is not JSON
- `fault:reject:<tag>`   answer 422 like a validation error
- `fault:exit:<tag>`     exit the process at once (a runtime crash), on the first call only (with `--state-dir`,
                         the first call across restarts, so the runtime restarted on the same port serves the retry)
- `fault:slow<S>:<tag>`  take S seconds instead of the fixed time

`GET /_stats` returns calls per prompt, so tests can count how often a task really ran.
Run: `python -m agent.bench.fixed_runtime --port N --seconds-per-image 0.2`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


class FixedRuntime:
    def __init__(self, seconds_per_image: float, state_dir: str | None = None) -> None:
        self.seconds_per_image = seconds_per_image
        self.state_dir = state_dir
        self.calls: Counter[str] = Counter()
        self.interrupt = threading.Event()
        self.lock = threading.Lock()
        self.busy = threading.Lock()  # one generation at a time, like a GPU runtime
        self.png = base64.b64encode(_tiny_png()).decode()

    def first_exit(self, prompt: str) -> bool:
        """True the first time `prompt` asks to exit (per process, or per `state_dir` when one is given)."""
        if self.state_dir is None:
            return True
        marker = os.path.join(self.state_dir, "exited-" + hashlib.sha256(prompt.encode()).hexdigest()[:16])
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


LISTINGS = {  # what SD WebUI 1.10 answers, abridged
    "/sdapi/v1/samplers": [{"name": n, "aliases": a, "options": {}} for n, a in (
        ("DPM++ 2M", ["k_dpmpp_2m"]), ("Euler a", ["k_euler_a"]), ("Euler", ["k_euler"]), ("DDIM", []))],
    "/sdapi/v1/schedulers": [{"name": n, "label": n.title(), "aliases": None} for n in ("automatic", "karras", "exponential")],
}


def make_handler(rt: FixedRuntime) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: without this, delayed ACKs add 40 ms

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path in ("/sdapi/v1/options", "/healthz", "/internal/ping"):
                self._send(200, json.dumps({"sd_model_checkpoint": "fixed"}).encode())
            elif self.path in LISTINGS:  # like SD WebUI, it then generates whatever sampler a request names
                with rt.lock:
                    rt.calls[f"GET {self.path}"] += 1
                self._send(200, json.dumps(LISTINGS[self.path]).encode())
            elif self.path == "/_stats":
                with rt.lock:
                    self._send(200, json.dumps(dict(rt.calls)).encode())
            else:
                self._send(404, b'{"detail": "Not Found"}')

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/sdapi/v1/interrupt":
                rt.interrupt.set()
                self._send(200, b"{}")
            elif self.path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
                self._generate(body)
            else:
                self._send(404, b'{"detail": "Not Found"}')

        def _generate(self, body: dict) -> None:
            prompt = str(body.get("prompt", ""))
            with rt.lock:
                rt.calls[prompt] += 1
                n_call = rt.calls[prompt]
            n = int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))
            seconds = rt.seconds_per_image * n
            fault = re.match(r"fault:([a-z]*)(\d*(?:\.\d+)?)(?:x(\d+))?:", prompt)
            if fault:
                kind, number, times = fault.group(1), fault.group(2), fault.group(3)
                if prompt.startswith("fault:500") and (times is None or n_call <= int(times)):
                    self._send(500, json.dumps({"error": "RuntimeError", "detail": "injected failure"}).encode())
                    return
                if kind == "garbage":
                    self._send(200, b"<html>not json</html>", "text/html")
                    return
                if kind == "reject":
                    self._send(422, json.dumps({"detail": [{"loc": ["body", "steps"], "msg": "injected"}]}).encode())
                    return
                if kind == "exit" and n_call == 1 and rt.first_exit(prompt):
                    os._exit(17)
                if kind == "hang":
                    seconds = 3600.0
                if kind == "slow":
                    seconds = float(number)
            with rt.busy:
                rt.interrupt.clear()
                interrupted = rt.interrupt.wait(seconds)
            info = {"seed": body.get("seed", -1), "all_seeds": [body.get("seed", -1)] * n, "interrupted": interrupted,
                    "sd_model_name": "fixed"}
            reply = {"images": [rt.png] * n, "parameters": body, "info": json.dumps(info)}
            self._send(200, json.dumps(reply).encode())

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SD WebUI API runtime with a fixed time per image")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds-per-image", type=float, default=0.2)
    parser.add_argument("--state-dir", default=None, help="remembers `fault:exit` crashes across restarts")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(FixedRuntime(args.seconds_per_image, args.state_dir)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
