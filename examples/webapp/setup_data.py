"""One-shot setup step: write the data the API serves."""

import json
import pathlib
import time

print("preparing data...", flush=True)
time.sleep(0.5)
pathlib.Path("data.json").write_text(json.dumps({"greeting": "hello from taskmux"}))
print("data ready", flush=True)
