"""The benchmarks that CI does not run in full still run: a tiny input through each."""

import pytest

from bench import embed_gpu

pytestmark = pytest.mark.integration


def test_the_gpu_benchmark_runs_on_a_cpu(capsys):
    embed_gpu.main(["--texts", "8", "--batch-sizes", "2,4", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("best: batch ")
    assert [line.split()[0] for line in lines[1:3]] == ["2", "4"]
