"""The README opens with the two commands CI and users rely on; .ci/run runs the second one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = readme_commands()
    assert "pip install" in demo and "examples/resnet18.py" in demo
    assert "pip install" in tests and "pytest" in tests
    first_lines = (ROOT / "README.md").read_text().splitlines()[:4]
    assert "```bash" in first_lines


def test_ci_runs_the_readme_test_command():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in [line.strip() for line in ci]
