"""Entry point (the image's start.sh, or the local runner's command): do what /in/env.yaml asks."""

from __future__ import annotations

import sys
import traceback

from ymir_detector.contract import ExecutorError, Monitor, load_env


def main() -> int:
    try:
        env = load_env()
    except ExecutorError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    monitor = Monitor(env)
    monitor.progress(0.01, force=True)
    try:
        if env.run_training:
            from ymir_detector import train

            train.run(env, monitor)
        elif env.run_mining:
            from ymir_detector import mine

            mine.run(env, monitor)
        elif env.run_infer:
            from ymir_detector import infer

            infer.run(env, monitor)
        else:
            raise ExecutorError("300001", "env.yaml asks for nothing (run_training, run_mining, run_infer all false)")
    except ExecutorError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        monitor.error(exc.code, exc.message)
        return 1
    except MemoryError:
        monitor.error("300102", "out of memory")
        return 1
    except Exception as exc:
        traceback.print_exc()
        code = "300102" if "out of memory" in str(exc).lower() else "300001"
        monitor.error(code, f"{type(exc).__name__}: {exc}")
        return 1
    monitor.done()
    print("ymir-detector: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
