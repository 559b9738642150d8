"""The HTTP inference service against raw onnxruntime on the same image, model and cores.

The model is the built-in detector's graph (small configuration, 256 px input, the same compute as a trained
one; its weights are random). Baselines in the same run, in this process: the image decoded and run through
onnxruntime (``models_app.onnx_predict``, the service's own path minus HTTP), one call at a time (latency) and
from 1 and 2 threads for 20 s (throughput, the better of the two).

Service: gunicorn (1 worker, 8 threads, the production image's server) on loopback, token auth and every check
on, the rate limit off; first as the inference service runs in production (the ``deployment`` compose service,
``ymir.settings_serving``: the API alone, plain predictions answered in front of Django by
``deployment/fastpath.py``), then, single client only, as the web process (every page
middleware). Single-client latency: in turns, nine rounds of raw calls, one keep-alive http.client connection
and wrk on one connection (``single_client``). Images: the demo's 640x480 JPEG (the target is judged on it)
and, for the service, a 1920x1080 frame as a camera sends (more decoding, so the service's fixed cost weighs
less). Load: wrk with 50 connections for 30 s (``apt-get install wrk``, client timeout 30 s); requests/s,
p50/p99 latency, non-2xx responses and socket errors.

    DATABASE_URL=postgres://... .venv/bin/python benchmarks/serving_speed.py [--seconds 30 --connections 50]
        [--server granian (a Rust HTTP front, for comparison: pip install granian)]
        [--server uwsgi (uWSGI's own HTTP/1.1 socket, for comparison: pip install uwsgi, or UWSGI=path)]
        [--service-only]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _setup import ROOT, django_on_scratch_database


def export_graph(path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'executors');"
        "from ymir_detector.model import Detector; from ymir_detector.train import export_onnx;"
        "m = Detector(8, 's'); m.class_names = [f'c{i}' for i in range(8)];"
        f"export_onnx(m, Path({str(path)!r}), 256)"
    )
    subprocess.run([str(ROOT / ".venv-detector" / "bin" / "python"), "-c", code], cwd=ROOT, check=True)


def raw_throughput(path: Path, data: bytes, threads: int, seconds: float) -> float:
    from models_app import onnx_predict

    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            onnx_predict.predict(path, [onnx_predict.decode_image(data)])
            done[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--server", choices=("gunicorn", "granian", "uwsgi"), default="gunicorn")
    parser.add_argument("--service-only", action="store_true", help="skip the web process")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed for the load part: apt-get install wrk")
    os.environ["YMIR_PREDICT_RATE"] = "0"
    django_on_scratch_database()
    from core.tokens import token_issue
    from datasets.demo import make_image
    from deployment.services import algorithm_path, algorithm_publish
    from models_app import landing, onnx_predict
    from models_app.models import ModelGroup, ModelStage, ModelVersion
    from projects.models import Project

    user = __import__("core.models", fromlist=["User"]).User.objects.create_user(username="bench_serving")
    project = Project.objects.create(owner=user, name="serving")
    version = ModelVersion.objects.create(group=ModelGroup.objects.create(project=project, name="m"), number=1)
    folder = landing.model_dir(version.pk)
    folder.mkdir(parents=True, exist_ok=True)
    export_graph(folder / "model.onnx")
    stage = ModelStage.objects.create(version=version, name="best", files=["model.onnx"])
    algorithm = algorithm_publish(user=user, stage=stage)
    _token, secret = token_issue(user=user, name="bench", kind="personal", days=None)
    data, _boxes = make_image(5, 1, 640, 480)
    camera, _boxes = make_image(5, 1, 1920, 1080)
    path = algorithm_path(algorithm)

    def raw_call(image: bytes = data) -> float:  # decode + onnxruntime, in this process
        started = time.perf_counter()
        onnx_predict.predict(path, [onnx_predict.decode_image(image)])
        return time.perf_counter() - started

    for _ in range(20):
        raw_call()
        raw_call(camera)
    raw_rate = max(raw_throughput(path, data, n, 20) for n in (1, 2))

    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "image/jpeg"}
    url = f"/api/v1/algorithms/{algorithm.pk}/predict"
    for label, settings_module, load in (
        ("inference service (ymir.settings_serving)", "ymir.settings_serving", True),
        ("web process (ymir.settings, every page middleware)", "ymir.settings", False),
    ):
        if args.service_only and not load:
            continue
        print(label, f"[{args.server}]")
        with served_by(settings_module, args.server) as port:
            print("  640x480 image:")
            single_client(port, url, data, headers, raw_call, args.requests)
            if load:  # the same for a camera's frame: decoding it costs more, the service's share less
                print("  1920x1080 image:")
                single_client(port, url, camera, headers, functools.partial(raw_call, camera), args.requests)
                under_load(port, url, data, headers, raw_rate, args.seconds, args.connections)


@contextlib.contextmanager
def served_by(settings_module: str, server_kind: str) -> Iterator[int]:
    port = 18765
    env = {**os.environ, "YMIR_DB_CONN_MAX_AGE": "600", "DJANGO_SETTINGS_MODULE": settings_module}
    python_servers = {
        "gunicorn": "-m gunicorn ymir.wsgi:application --bind 127.0.0.1:{port} --workers 1 --threads 8 "
        "--log-level warning",
        "granian": "-m granian --interface wsgi ymir.wsgi:application --host 127.0.0.1 --port {port} --workers 1 "
        "--blocking-threads 8 --runtime-threads 1 --log-level warning --no-ws",
    }
    if server_kind == "uwsgi":  # its own binary; keep-alive needs the body buffered and Nagle off
        uwsgi = os.environ.get("UWSGI") or shutil.which("uwsgi") or str(Path(sys.executable).parent / "uwsgi")
        command = [
            uwsgi,
            *f"--http11-socket 127.0.0.1:{port} --http-keepalive --module ymir.wsgi:application --processes 1 "
            "--threads 8 --master --need-app --die-on-term --disable-logging --tcp-nodelay".split(),
            *f"--post-buffering {64 << 20} --virtualenv {Path(sys.prefix)}".split(),
        ]
    else:
        command = [sys.executable, *python_servers[server_kind].format(port=port).split()]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        for _ in range(100):
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                probe.request("GET", "/healthz")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)  # the server is starting
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


ROUNDS = 9


def single_client(
    port: int, url: str, data: bytes, headers: dict[str, str], raw_call: Callable[[], float], requests: int
) -> None:
    """Median latency of one client against raw calls, measured in turns: ``ROUNDS`` rounds of a block of
    raw calls, a block through Python's http.client (its own cost included) and 2 s of wrk on one connection
    (a C client: the service's latency), so that a shared machine's drift falls on all three alike (not
    interleaved call by call: onnxruntime's threads of one process would still spin while the other runs).
    The headline ratio is the median of the rounds' own ratios (each pairs measurements seconds apart); the
    ratio of the overall medians is printed beside it.
    The service's own account of each request (``timing_ms.total``: decode + onnxruntime) splits the
    difference between work done differently and what HTTP and the framework add."""
    import json

    def post(conn: http.client.HTTPConnection) -> float:
        conn.request("POST", url, body=data, headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status == 200, answer.status
        return float(json.loads(body)["timing_ms"]["total"]) / 1000

    block = max(1, requests // ROUNDS)
    rounds: list[tuple[float, float, float, float]] = []
    for round_number in range(ROUNDS):
        raw = [raw_call() for _ in range(block)]
        # a connection per round, opened by an untimed request (gunicorn closes one idle past its keep-alive)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(20 if round_number == 0 else 1):
            post(conn)
        served, inside = [], []
        for _ in range(block):
            started = time.perf_counter()
            inside.append(post(conn))
            served.append(time.perf_counter() - started)
        conn.close()
        figures = wrk(port, url, data, headers, seconds=2, connections=1)
        assert figures["non_2xx"] == 0, figures
        rounds.append(
            (
                1000 * statistics.median(raw),
                1000 * statistics.median(inside),
                1000 * statistics.median(served),
                figures["p50_ms"],
            )
        )
    raw_ms, inside_ms, http_ms, wrk_ms = (statistics.median(column) for column in zip(*rounds, strict=True))
    ratios = [r[3] / r[0] for r in rounds]
    per_round = " ".join(f"{ratio:.2f}" for ratio in ratios)
    http_ratio = statistics.median(r[2] / r[0] for r in rounds)
    print(
        f"  raw decode+onnxruntime {raw_ms:.2f} ms · the same work inside the service {inside_ms:.2f} ms "
        f"({inside_ms / raw_ms:.2f}x)\n"
        f"  one client, Python http.client: HTTP {http_ms:.2f} ms · ratio {http_ratio:.2f}x "
        f"(of the overall medians {http_ms / raw_ms:.2f}x)\n"
        f"  one client, wrk 1 connection: HTTP p50 {wrk_ms:.2f} ms · ratio {statistics.median(ratios):.2f}x "
        f"(target <= 1.10x; of the overall medians {wrk_ms / raw_ms:.2f}x; rounds: {per_round})\n"
        f"  what HTTP adds to the service's own work (wrk p50 - inside): {wrk_ms - inside_ms:.2f} ms"
    )


def wrk(port: int, url: str, data: bytes, headers: dict[str, str], seconds: int, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "image.jpg"
        body.write_bytes(data)
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
            + f'local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        )
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(2, connections)}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",  # 50 clients queue behind ~2 cores: latency is seconds by Little's law, not a failure
                "30s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}{url}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "none",
    }


def under_load(
    port: int, url: str, data: bytes, headers: dict[str, str], raw_rate: float, seconds: int, connections: int
) -> None:
    figures = wrk(port, url, data, headers, seconds, connections)
    print(
        f"  {connections} clients {seconds} s: raw onnxruntime {raw_rate:.1f} img/s · "
        f"HTTP {figures['rate']:.1f} req/s · ratio {figures['rate'] / raw_rate:.2f} (target >= 0.80) · "
        f"p50 {figures['p50_ms']:.0f} ms · p99 {figures['p99_ms']:.0f} ms · non-2xx {figures['non_2xx']} · "
        f"socket errors {figures['socket_errors']}"
    )


if __name__ == "__main__":
    main()
