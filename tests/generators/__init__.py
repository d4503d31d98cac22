"""What makes the shipped files and the main job's output from a real server and the tiny models: the
workflows (build_workflows), their thumbnails (thumbnails, demo_thumbnails) and the demo (demo, `bash .ci/demo`).
Run from tests/: `python -m generators.NAME`. The tests' fixtures are in harness/."""
