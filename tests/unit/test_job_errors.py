"""A bad setting stops a job at start-up with one line saying what is wrong and what to do,
exit status 1 and no traceback, whatever the mistake: the file, its YAML, a section, a value."""

import signal
import subprocess
import sys

import pytest

from jobs import migrate
from tests.conftest import REPO_ROOT

# Never reached (the config fails first); if it were, the job would stop at this address
# instead of touching a real database.
NOWHERE = "store.database_url=postgresql://nobody@/kb?host=/nonexistent"


@pytest.fixture
def sigterm_restored():
    """start_job installs its SIGTERM handler in this process; give pytest its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "yaml_text, says",
    [
        (None, "cannot read config file"),
        ("crawl:\n  max_pages: [1\n", "invalid YAML at line 3, column 1"),
        ("crawl: 5\n", "section 'crawl' must be a mapping of settings"),
        ("[crawl]\n", "expected a mapping of sections"),
        ("crawl:\n  delay_seconds: .nan\n", "crawl.delay_seconds: expected a finite number, got nan"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, sigterm_restored, yaml_text, says):
    path = tmp_path / "kb.yaml"
    if yaml_text is not None:
        path.write_text(yaml_text)
    with pytest.raises(SystemExit) as stopped:
        migrate.main(["--config", str(path), "--set", NOWHERE])
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message  # printed as one line, exit status 1
    assert message.startswith("configuration error: ") and says in message


@pytest.mark.parametrize(
    "setting, says",
    [
        (
            "crawl.total_timeout_seconds=nan",
            "crawl.total_timeout_seconds: expected a finite number, got 'nan'",
        ),
        ("embed.api_timeout_seconds=-inf", "embed.api_timeout_seconds: expected a finite number, got '-inf'"),
        ("crawl.connect_timeout_seconds=-1", "crawl.connect_timeout_seconds must be > 0, got -1.0"),
        ("crawl.max_response_bytes=-1", "crawl.max_response_bytes must be > 0, got -1"),
        ("crawl.max_pages=abc", "crawl.max_pages: expected int, got 'abc'"),
        ("crawl.respect_robots=maybe", "crawl.respect_robots: expected true/false, got 'maybe'"),
        ("ray.num_cpus=-2", "ray.num_cpus must be >= 0, got -2"),
        ("chunk.keywords_per_chunk=-1", "chunk.keywords_per_chunk must be >= 0, got -1"),
    ],
)
def test_a_bad_set_value_is_one_line(sigterm_restored, setting, says):
    with pytest.raises(SystemExit) as stopped:
        migrate.main(["--set", setting, "--set", NOWHERE])
    assert stopped.value.code == f"configuration error: {says}"


def test_the_command_line_prints_one_line_and_no_traceback(tmp_path):
    """The whole way, as a user runs it: the interpreter, stderr, the exit status."""
    path = tmp_path / "kb.yaml"
    path.write_text("crawl:\n  max_pages: 10\n embed: {}\n")
    ran = subprocess.run(
        [sys.executable, "-m", "jobs.migrate", "--config", str(path), "--set", NOWHERE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert ran.stderr.splitlines() == [
        f"configuration error: {path}: invalid YAML at line 3, column 2: expected <block end>, "
        "but found '<block mapping start>' (while parsing a block mapping at line 1, column 1)"
    ]
