"""A worker that polls the API."""

import json
import os
import signal
import time
import urllib.request

API = f"http://127.0.0.1:{os.environ.get('TASKMUX_PORT_API', '8077')}/"

signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as C-c does
try:
    while True:
        with urllib.request.urlopen(API) as response:
            print("worker got:", json.loads(response.read())["greeting"], flush=True)
        time.sleep(3)
except KeyboardInterrupt:
    print("worker: stopped", flush=True)
