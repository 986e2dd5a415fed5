"""The command line as an operator meets it: log formats and configuration errors."""

import json
import subprocess

from conftest import SNAPGATE, output_file, wait_for_output


def first_stderr_line(*args):
    log = output_file("cli")
    proc = subprocess.Popen([str(SNAPGATE), *args], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        return wait_for_output(proc, log, r"[^\n]*\n").group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_json_logs_are_one_object_per_line():
    line = first_stderr_line("--log-format", "json", "emulator", "--listen", "127.0.0.1:0", "--no-seed")
    event = json.loads(line)
    assert event["level"] == "INFO"
    assert event["fields"]["message"] == "RDS emulator listening"


def test_human_logs_have_no_colour_codes_when_piped():
    line = first_stderr_line("emulator", "--listen", "127.0.0.1:0", "--no-seed")
    assert "RDS emulator listening" in line
    assert "\x1b[" not in line


def test_a_bad_setting_stops_serve_with_its_name(tmp_path):
    config = tmp_path / "snapgate.toml"
    config.write_text('[aws]\nregion = "moon"\n')
    out = subprocess.run([str(SNAPGATE), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "aws.region" in out.stderr
