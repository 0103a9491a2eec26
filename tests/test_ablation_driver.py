"""bench/ablation.py, the driver of the clothing-change benchmark: drivers started side by side (one
per seed, as docs/ablation.md runs them) train a missing perceiving encoder once, not once each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A stand-in for bench/pretrain_perception.py (minutes): counts its runs, takes a second, then
# saves what the driver looks for (config.json)
FAKE_PRETRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    with open(out.parent / "runs.txt", "a") as f:
        f.write("ran\\n")
    time.sleep(1.0)
    out.mkdir()
    (out / "config.json").write_text("{}")
""")

DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {bench!r})
    from pathlib import Path
    from ablation import pretrain_once
    encoder = Path({encoder!r})
    ok = pretrain_once(encoder, [sys.executable, {fake!r}, str(encoder)], "a fake encoder")
    sys.exit(0 if ok else 1)
""")


def test_drivers_started_together_train_a_missing_encoder_once(tmp_path: Path) -> None:
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    encoder = tmp_path / "encoders" / "vit"
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(fake))
    procs = [subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert (tmp_path / "encoders" / "runs.txt").read_text() == "ran\n"  # trained once
    assert sum("training a fake encoder into" in o for o in outputs) == 1, outputs
    assert (encoder / "config.json").is_file()


def test_a_failed_pretraining_is_reported_and_the_next_driver_retries(tmp_path: Path) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text("import sys; sys.exit(3)\n")
    encoder = tmp_path / "vit"
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(failing))
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 1
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(fake))
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 0
    assert (encoder / "config.json").is_file()
