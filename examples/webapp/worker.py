"""A worker that polls the API."""

import json
import time
import urllib.request

while True:
    with urllib.request.urlopen("http://127.0.0.1:8077/") as response:
        print("worker got:", json.loads(response.read())["greeting"], flush=True)
    time.sleep(3)
