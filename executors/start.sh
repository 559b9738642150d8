#!/bin/sh
# The image's default command (the contract runs it with no arguments): do what /in/env.yaml asks.
cd /app && exec python3 -m ymir_detector
