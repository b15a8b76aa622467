"""`make bench`: the comms stack as separate processes under a fixed load of valid creates.

See bench/run.py for what is measured and how; README.md section "Benchmark" for how to run it."""
