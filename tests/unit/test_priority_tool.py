"""loadtests/priority.py's arrangement, on real processes: what it lowers and what it leaves."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from loadtests.priority import lower_background

# A stand-in for `slmserve serve`: it starts one process titled like Serve's controller and one like
# vLLM's worker, and waits.
DRIVER = """
import json, subprocess, sys, time
wait = "import time; time.sleep(60)"
children = [subprocess.Popen([sys.executable, "-c", wait, title]) for title in ("ray::ServeController", "VLLM::Worker")]
print(json.dumps([child.pid for child in children]), flush=True)
time.sleep(60)
"""


def test_the_platform_goes_below_the_token_path_and_the_token_path_stays():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "services.cli serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        controller, worker = (psutil.Process(pid) for pid in json.loads(driver.stdout.readline()))
        before = worker.nice()
        assert lower_background(driver.pid, 19) == 2  # the serve process and the controller
        assert psutil.Process(driver.pid).nice() == controller.nice() == 19
        assert worker.nice() == before
        assert lower_background(driver.pid, 19) == 0
    finally:
        for process in psutil.Process(driver.pid).children(recursive=True):
            process.kill()
        driver.kill()
        driver.wait()
