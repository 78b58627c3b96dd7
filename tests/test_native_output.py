"""Native output into a log file (fd level) while Python's own output and warnings stay visible, once each."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def test_fd_level_output_goes_to_the_log_and_python_output_stays(tmp_path):
    proc = _run(f"""
        import logging, os, sys
        from rerender.training.native_output import native_output_to
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        with native_output_to({str(tmp_path / 'native.log')!r}, (1, 2)) as terminal:
            os.write(1, b"Saved: /dev/shm/x.exr\\n")          # what Blender's C code does
            os.write(2, b"EGL Error (0x3009): EGL_BAD_MATCH\\n")
            print("progress", file=terminal, flush=True)      # tqdm draws here
            print("python stderr", file=sys.stderr, flush=True)
            logging.getLogger("x").warning("a real warning")
        os.write(1, b"after\\n")
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "native.log").read_text()
    assert "Saved: /dev/shm/x.exr" in log and "EGL_BAD_MATCH" in log
    assert "Saved:" not in proc.stdout and "EGL" not in proc.stderr
    assert "progress" in proc.stderr and "python stderr" in proc.stderr and "a real warning" in proc.stderr
    assert proc.stdout.strip() == "after"  # fds are restored


def test_each_warning_text_is_shown_once(tmp_path):
    proc = _run("""
        import logging, warnings
        from rerender.training.native_output import warnings_once
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        with warnings_once():
            for _ in range(3):
                warnings.warn("no ImageNet weights", RuntimeWarning)
                logging.getLogger("t").warning("no ImageNet weights")
            logging.getLogger("t").warning("another one")
            logging.getLogger("t").info("info lines are never dropped")
            logging.getLogger("t").info("info lines are never dropped")
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no ImageNet weights") == 1, proc.stderr
    assert proc.stderr.count("another one") == 1 and proc.stderr.count("never dropped") == 2
