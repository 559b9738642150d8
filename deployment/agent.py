"""The device agent: runs on an edge box with only onnxruntime, numpy and Pillow (no Django, no database).

    python -m deployment.agent --server https://ymir.example --device 3 --token ymd_... [--port 9100]

It beats to the platform (``/api/v1/devices/<id>/agent/heartbeat`` with its device token; the first beat
registers it), downloads the algorithms switched on for it into its cache, and serves them on its own port
with the platform's interface: ``POST /api/v1/algorithms/<id>/predict`` (raw image bytes, or JSON with
``image_base64``) answers ``{"results": [{"boxes": [...]}], "timing_ms": ...}``. An algorithm switched off
on the device page is dropped at the next beat and answers 404 from then on. ``GET /healthz`` lists what it
serves.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from models_app import onnx_predict

logger = logging.getLogger("ymir.device_agent")
AGENT_VERSION = "ymir-device-agent/1"
MAX_BODY = 20 << 20


class Agent:
    def __init__(self, server: str, device: int, token: str, cache: Path, address: str = "") -> None:
        self.server, self.device, self.token, self.cache, self.address = (
            server.rstrip("/"),
            device,
            token,
            cache,
            address,
        )
        self.serving: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.interval = 10.0
        self._lock = threading.Lock()

    def _call(self, path: str, body: dict[str, Any] | None = None) -> bytes:
        request = urllib.request.Request(  # noqa: S310 (the platform's own address, given by its operator)
            self.server + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Device-Token": self.token, "Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return bytes(answer.read())

    def beat(self) -> None:
        """One heartbeat: report, then serve exactly what the platform lists (download what is new)."""
        with self._lock:
            status = {
                "serving": sorted(self.serving),
                "agent": AGENT_VERSION,
                "address": self.address,
                "errors": self.errors[-5:],
            }
        answer = json.loads(self._call(f"/api/v1/devices/{self.device}/agent/heartbeat", status))
        self.interval = float(answer.get("heartbeat_seconds") or self.interval)
        wanted: dict[int, dict[str, Any]] = {}
        for entry in answer.get("algorithms", []):
            algorithm_id = int(entry["id"])
            path = self.cache / f"{algorithm_id}-{entry['version']}.onnx"
            if not path.exists():
                data = self._call(f"/api/v1/devices/{self.device}/agent/algorithms/{algorithm_id}/model")
                partial = path.with_suffix(".partial")
                partial.write_bytes(data)
                partial.rename(path)
            wanted[algorithm_id] = {**entry, "path": path}
        with self._lock:
            self.serving = wanted

    def run_beats(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.beat()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                logger.warning("heartbeat failed: %s", exc)
                with self._lock:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {exc}")
            stop.wait(self.interval)

    def predict(self, algorithm_id: int, data: bytes, threshold: float | None) -> dict[str, Any] | None:
        with self._lock:
            entry = self.serving.get(algorithm_id)
        if entry is None:
            return None
        started = time.perf_counter()
        image = onnx_predict.decode_image(data)
        boxes, seconds = onnx_predict.predict(
            entry["path"], [image], score_threshold=entry["score_threshold"] if threshold is None else threshold
        )
        return {
            "algorithm": algorithm_id,
            "device": self.device,
            "results": [{"boxes": boxes[0], "width": image.width, "height": image.height}],
            "timing_ms": {
                "inference": round(1000 * seconds, 2),
                "total": round(1000 * (time.perf_counter() - started), 2),
            },
        }


def handler_for(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = AGENT_VERSION

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/healthz":
                self._send(200, {"device": agent.device, "serving": sorted(agent.serving)})
            else:
                self._send(404, {"error": {"code": "not_found", "message": "not found"}})

        def do_POST(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if (
                len(parts) != 5
                or parts[:3] != ["api", "v1", "algorithms"]
                or parts[4] != "predict"
                or not parts[3].isdigit()
            ):
                self._send(404, {"error": {"code": "not_found", "message": "not found"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": {"code": "too_large", "message": "the body is too large"}})
                return
            body = self.rfile.read(length)
            if (self.headers.get("Content-Type") or "").startswith("application/json"):
                try:
                    body = base64.b64decode(json.loads(body)["image_base64"], validate=True)
                except (ValueError, KeyError, TypeError):
                    self._send(422, {"error": {"code": "invalid_image", "message": "send image_base64"}})
                    return
            try:
                answer = agent.predict(int(parts[3]), body, None)
            except onnx_predict.PredictError as exc:
                self._send(422, {"error": {"code": "invalid_image", "message": str(exc)}})
                return
            if answer is None:
                self._send(404, {"error": {"code": "not_found", "message": "this algorithm is not served here"}})
                return
            self._send(200, answer)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug(format, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="YMIR device agent")
    parser.add_argument("--server", required=True)
    parser.add_argument("--device", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--cache", type=Path, default=Path("device-cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    args.cache.mkdir(parents=True, exist_ok=True)
    agent = Agent(args.server, args.device, args.token, args.cache, address=f"http://{args.host}:{args.port}")
    stop = threading.Event()
    httpd = ThreadingHTTPServer((args.host, args.port), handler_for(agent))
    threading.Thread(target=agent.run_beats, args=(stop,), daemon=True).start()
    logger.info("serving on %s:%s", args.host, args.port)
    try:
        httpd.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
