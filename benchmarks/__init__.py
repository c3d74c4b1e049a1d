"""Speed and accuracy benchmarks, each against a peer in the same run; run them as modules from the
project root (``python -m benchmarks.lidc_cv ...``). Results and commands: RESULTS.md."""
